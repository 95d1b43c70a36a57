"""The offline numeric-mutation proposer: each draft scales or nudges one hyperparameter.

Hyperparameters are module-level assignments of UPPER_CASE names to a number literal,
autoresearch/nanoGPT style (`LEARNING_RATE = 3e-4  # peak LR`). A line carrying the
comment `# farm: frozen` is left alone.

The plan is recomputed from the incumbent's files on every call and the proposer keeps
no memory of its own: `ctx.seen_hashes` says what was tried, so a restarted campaign
carries on where it left off, and after a kept change the mutations start from the new
values.
"""

from __future__ import annotations

import ast
import random
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from farm.records import DecisionKind, Draft, Edit, edit_hash
from proposer.base import LedgerEntry, ProposalContext, Proposer
from proposer.validate import occurrences

FROZEN_MARK = "farm: frozen"
SMALL_INT = 8  # ints below this are also tried ±1
_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


@dataclass(frozen=True)
class Constant:
    path: str
    name: str
    value: int | float
    literal: str  # the value's source text
    line: int  # 0-based index into the file's lines
    start: int  # the literal's span within the line
    end: int


@dataclass(frozen=True)
class _Mutation:
    constant: Constant
    literal: str  # the new value's source text
    description: str  # e.g. "Scale LR by 2.0"


class MutateProposer(Proposer):
    name = "mutate"

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def propose(self, ctx: ProposalContext, n: int) -> list[Draft]:
        skip = set(ctx.seen_hashes) | _reverts_of_kept(ctx.history)
        batch_id = f"mutate-{uuid.uuid4().hex[:8]}"
        drafts: list[Draft] = []
        for m in self._plan(ctx.files, ctx.editable):
            if len(drafts) >= n:
                break
            c = m.constant
            edit = constant_edit(ctx.files[c.path], c, m.literal)
            digest = edit_hash([edit])
            if digest in skip:
                continue
            skip.add(digest)
            drafts.append(
                Draft(
                    title=f"{c.name} {c.literal} → {m.literal}",
                    hypothesis=m.description,
                    edits=[edit],
                    proposer=self.name,
                    strategy="one-constant",
                    batch_id=batch_id,
                )
            )
        return drafts

    def _plan(self, files: dict[str, str], editable: list[str]) -> Iterator[_Mutation]:
        """Every mutation, mildest tier first; within a tier, round-robin over constants.

        So the first 2x(number of constants) mutations try every constant x2 and x0.5
        before any x4, x0.25 or ±1. The order of constants is a seeded shuffle that
        depends only on each constant's own name, so it stays put when values change.
        """
        constants = [
            c
            for path in editable
            if path.endswith(".py") and path in files
            for c in find_constants(path, files[path])
        ]
        keyed = []
        for c in constants:
            rng = random.Random(f"{self.seed}/{c.path}/{c.name}")
            tiers = _mutations(c)
            for mutations in tiers:
                rng.shuffle(mutations)  # about half the constants go up first, half down
            keyed.append((rng.random(), tiers))
        keyed.sort(key=lambda pair: pair[0])
        for tier in range(2):
            for round_ in range(2):
                for _, tiers in keyed:
                    if round_ < len(tiers[tier]):
                        yield tiers[tier][round_]


def find_constants(path: str, text: str) -> list[Constant]:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []  # the validator reports a broken file; there is nothing to mutate here
    lines = text.split("\n")
    found = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if not (
            isinstance(target, ast.Name)
            and _NAME.fullmatch(target.id)
            and isinstance(value, ast.Constant)
            and isinstance(value.value, (int, float))
            and not isinstance(value.value, bool)  # a subclass of int
            and value.lineno == value.end_lineno
            and value.end_col_offset is not None
        ):
            continue
        line = lines[value.lineno - 1]
        if FROZEN_MARK in line:
            continue
        # ast columns count UTF-8 bytes, str indices count characters.
        raw = line.encode()
        start = len(raw[: value.col_offset].decode())
        end = len(raw[: value.end_col_offset].decode())
        found.append(
            Constant(path, target.id, value.value, line[start:end], value.lineno - 1, start, end)
        )
    return found


def _mutations(c: Constant) -> list[list[_Mutation]]:
    """Two tiers of mutations of `c`, milder first; each new value differs from the old."""
    tiers: list[list[_Mutation]] = [[], []]

    def add(tier: int, literal: str, description: str) -> None:
        if literal != c.literal and all(m.literal != literal for t in tiers for m in t):
            tiers[tier].append(_Mutation(c, literal, description))

    if isinstance(c.value, float):
        if c.value != 0.0:
            scientific = "e" in c.literal.lower()
            for tier, factors in enumerate(((2.0, 0.5), (4.0, 0.25))):
                for factor in factors:
                    literal = format_float(c.value * factor, scientific=scientific)
                    add(tier, literal, f"Scale {c.name} by {factor}")
    elif c.value >= 1:  # 0 and negative ints are usually switches or sentinels
        fmt = "{:_}" if "_" in c.literal else "{}"
        add(0, fmt.format(c.value * 2), f"Scale {c.name} by 2.0")
        add(0, fmt.format(max(1, round(c.value / 2))), f"Scale {c.name} by 0.5")
        if c.value < SMALL_INT:
            add(1, fmt.format(c.value + 1), f"Increase {c.name} by 1")
            if c.value > 1:
                add(1, fmt.format(c.value - 1), f"Decrease {c.name} by 1")
    return tiers


def format_float(x: float, *, scientific: bool) -> str:
    """Six significant digits without float noise, in the literal's style: 6e-4, 0.001, 1.0."""
    text = f"{x:.6g}"
    if scientific or "e" in text:
        mantissa, exponent = f"{x:.5e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return text if "." in text else text + ".0"


def constant_edit(text: str, c: Constant, literal: str) -> Edit:
    """Replace the whole assignment line, widened with neighbours until it occurs once."""
    lines = text.split("\n")
    lo, hi = c.line, c.line + 1
    while occurrences(text, "\n".join(lines[lo:hi])) > 1:
        lo, hi = max(0, lo - 1), min(len(lines), hi + 1)
    new = lines[lo:hi]
    new[c.line - lo] = lines[c.line][: c.start] + literal + lines[c.line][c.end :]
    return Edit(c.path, "\n".join(lines[lo:hi]), "\n".join(new))


def _reverts_of_kept(history: list[LedgerEntry]) -> set[str]:
    """Hashes of edits that would undo a kept change: x2 then x0.5 only re-measures the past."""
    return {
        edit_hash([Edit(e.path, e.replace, e.search) for e in entry.edits])
        for entry in history
        if entry.status == DecisionKind.KEPT.value
    }
