"""The offline numeric-mutation proposer: each draft scales or nudges one knob.

Knobs are the numeric literals proposer/knobs.py finds: module constants
(`LEARNING_RATE = 3e-4  # peak LR`), config classes and dicts, keyword arguments of calls
(`RandomForestClassifier(max_depth=5)`) and parameter defaults. A line carrying the
comment `# farm: frozen` is left alone.

The plan is recomputed from the incumbent's files on every call and the proposer keeps
no memory of its own: `ctx.seen_hashes` says what was tried, so a restarted campaign
carries on where it left off, and after a kept change the mutations start from the new
values.
"""

from __future__ import annotations

import functools
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from farm.records import DecisionKind, Draft, Edit, edit_hash
from proposer.base import LedgerEntry, ProposalContext, Proposer
from proposer.knobs import Knob, find_knobs, format_float, knob_edits

SMALL_INT = 8  # ints below this are also tried ±1


@dataclass(frozen=True)
class _Mutation:
    knob: Knob
    literal: str  # the new value's source text
    description: str  # e.g. "Scale LR by 2.0"


class MutateProposer(Proposer):
    name = "mutate"

    def __init__(self, seed: int) -> None:
        self.seed = seed
        # The plan of the files last asked about, each mutation's edits and their hash once
        # made: the incumbent changes at a keep, not at every call, and late in a campaign
        # most of the plan has been tried (each call walked it all again, parsing the file).
        self._planned_for: tuple[object, ...] = ()
        self._planned: list[_Mutation] = []
        self._made: dict[int, tuple[list[Edit], str]] = {}
        # Each knob's place and mutations in the plan, by the knob (its value and place in
        # the file): a keep changes a few knobs, and remaking every knob's list per keep
        # was most of a call on a file of 1,024 knobs. Only the last plan's are kept.
        self._ordered: dict[Knob, tuple[bool, float, list[list[_Mutation]]]] = {}

    def propose(self, ctx: ProposalContext, n: int) -> list[Draft]:
        skip = set(ctx.seen_hashes) | _reverts_of_kept(ctx.history)
        batch_id = f"mutate-{uuid.uuid4().hex[:8]}"
        drafts: list[Draft] = []
        for i, m in enumerate(self._plan_of(ctx.files, ctx.editable, ctx.frozen)):
            if len(drafts) >= n:
                break
            k = m.knob
            if i not in self._made:
                made = knob_edits(ctx.files[k.path], [(k, m.literal)])
                self._made[i] = (made, edit_hash(made))
            edits, digest = self._made[i]
            if digest in skip:
                continue
            skip.add(digest)
            drafts.append(
                Draft(
                    title=f"{k.name} {k.literal} → {m.literal}",
                    hypothesis=m.description,
                    edits=list(edits),
                    proposer=self.name,
                    strategy="one-constant",
                    batch_id=batch_id,
                )
            )
        return drafts

    def nothing_to_try(self, ctx: ProposalContext) -> str:
        if next(self._plan(ctx.files, ctx.editable, ctx.frozen), None) is not None:
            return ""
        files = ", ".join(p for p in ctx.editable if p.endswith(".py")) or "no Python file"
        return (
            f"the mutate proposer found no number it can change in the editable files ({files}): "
            "it tunes module constants, config classes and dicts, keyword arguments of calls "
            "(max_depth=5) and parameter defaults, skipping seeds, budgets, 0, booleans and "
            "`# farm: frozen` lines; make the hyperparameters such numbers, list the file that "
            "holds them in `editable`, or use another proposer"
        )

    def _plan_of(
        self, files: dict[str, str], editable: list[str], frozen: list[str]
    ) -> list[_Mutation]:
        """`_plan`, made once per content of the files."""
        key = (tuple(sorted(files.items())), tuple(editable), tuple(frozen))
        if key != self._planned_for:
            self._planned_for, self._planned = key, list(self._plan(files, editable, frozen))
            self._made = {}
        return self._planned

    def _plan(
        self, files: dict[str, str], editable: list[str], frozen: list[str]
    ) -> Iterator[_Mutation]:
        """Every mutation: the declared knobs' (constants, config blocks: the author's list)
        before the inline ones' (call keywords, defaults); within each, mildest tier first,
        round-robin over the knobs.

        So the first 2x(number of constants) mutations try every constant x2 and x0.5
        before any x4, x0.25 or ±1, and keyword arguments come after the constants. The
        order of knobs is a seeded shuffle that depends only on each knob's own name, so
        it stays put when values change.
        """
        knobs = [
            k
            for path in editable
            if path.endswith(".py") and path in files
            for k in find_knobs(path, files[path], frozen=frozen)
        ]
        self._ordered = {k: self._ordered.get(k) or self._order(k) for k in knobs}
        keyed = sorted(self._ordered.values(), key=lambda entry: entry[:2])
        for inline in (False, True):
            group = [tiers for is_inline, _, tiers in keyed if is_inline == inline]
            for tier in range(2):
                for round_ in range(2):
                    for tiers in group:
                        if round_ < len(tiers[tier]):
                            yield tiers[tier][round_]

    def _order(self, k: Knob) -> tuple[bool, float, list[list[_Mutation]]]:
        """A knob's sort key in the plan (declared first, then a seeded shuffle that depends
        only on its name) and its tiers of mutations, each in a seeded order."""
        rng = random.Random(f"{self.seed}/{k.path}/{k.name}")
        tiers = _mutations(k)
        for mutations in tiers:
            rng.shuffle(mutations)  # about half the knobs go up first, half down
        return not k.kind.is_declared(), rng.random(), tiers


def _mutations(c: Knob) -> list[list[_Mutation]]:
    """Two tiers of mutations of `c`, milder first; each new value differs from the old."""
    tiers: list[list[_Mutation]] = [[], []]

    def add(tier: int, literal: str, description: str) -> None:
        if literal != c.literal and all(m.literal != literal for t in tiers for m in t):
            tiers[tier].append(_Mutation(c, literal, description))

    if isinstance(c.value, float) and 0.5 < c.value < 1.0:
        # A decay, momentum or beta: what matters is its distance to 1 (0.9 x2 is not 1.8).
        for tier, factors in enumerate(((2.0, 0.5), (4.0, 0.25))):
            for factor in factors:
                literal = format_float(1 - (1 - c.value) * factor, scientific=False)
                if 0.0 < float(literal) < 1.0:
                    add(tier, literal, f"Scale 1 - {c.name} by {factor}")
    elif isinstance(c.value, float):
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


def _reverts_of_kept(history: list[LedgerEntry]) -> set[str]:
    """Hashes of edits that would undo a kept change: x2 then x0.5 only re-measures the past."""
    return {
        _undo_hash(tuple(entry.edits))
        for entry in history
        if entry.status == DecisionKind.KEPT.value
    }


@functools.lru_cache(maxsize=1 << 14)
def _undo_hash(edits: tuple[Edit, ...]) -> str:
    """The hash of the edits that undo `edits`: once per keep, not once per keep and call."""
    return edit_hash([Edit(e.path, e.replace, e.search) for e in edits])
