"""Knobs: the numeric literals of a Python file that a proposer may tune, found through the AST.

Real targets keep their hyperparameters in several shapes, and each gets a name a person
can read:

    LEARNING_RATE = 3e-4                              LEARNING_RATE       (module constant)
    class Config: n_layer: int = 12                   Config.n_layer      (class field)
    CONFIG = {"lr": 0.1, "hidden": [64, 32]}          CONFIG.lr, CONFIG.hidden[1]
    RandomForestClassifier(n_estimators=100)          RandomForestClassifier.n_estimators
    AdamW(params, betas=(0.9, 0.98))                  AdamW.betas[0]
    def train(lr=0.01): ...                           train.lr            (a default)

Module constants, class fields and config blocks are *declared* knobs (the author's list
of hyperparameters); call keywords and defaults are *inline* ones. Positional arguments and
locals are not knobs: they have no readable name. Neither are booleans, names that only
pick random numbers or say how to run (`seed`, `random_state`, `n_jobs`, `verbose`...), a
time budget (more time is not a better idea), a held-out split (`test_size`: it changes
what is measured), a name farm.toml's `frozen` covers, nor a line marked `# farm: frozen`. A name
met twice gets `#2`, `#3` in source order, so it stays put when values change.
"""

from __future__ import annotations

import ast
import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

from farm.records import Edit
from proposer.validate import is_frozen, occurrences

FROZEN_MARK = "farm: frozen"
# Settings that are not hyperparameters: randomness, logging, parallelism, array plumbing,
# time budgets (a candidate that only runs longer is not a better idea) and held-out splits
# (they change what is measured, not the model).
_NOT_KNOBS = re.compile(
    r"(?i)(.*seed.*|random_state|rng|verbose|verbosity|n_jobs|num_workers|workers|port|"
    r"axis|dim|ndim|indent|stacklevel|ndigits|decimals|.*budget.*|.*timeout.*|.*seconds.*|"
    r"time_limit|(test|val|valid|validation|holdout)_(size|split|fraction))"
)
# Calls whose keywords are plumbing, not hyperparameters.
_NOT_TUNED_CALLS = {"print", "round", "open", "format", "range", "sleep", "exit", "getenv", "get"}
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][-+]?\d+)?")


class KnobKind(enum.StrEnum):
    CONSTANT = "constant"  # module-level NAME = 1
    FIELD = "field"  # class-level name = 1 (a config class)
    ENTRY = "entry"  # inside a dict / list / tuple of a config block
    KEYWORD = "keyword"  # a call's keyword argument
    DEFAULT = "default"  # a function parameter's default

    def is_declared(self) -> bool:
        """The author listed it as a setting (rather than writing it inline in code)."""
        return self in (KnobKind.CONSTANT, KnobKind.FIELD, KnobKind.ENTRY)


@dataclass(frozen=True)
class Knob:
    path: str
    name: str  # e.g. "LEARNING_RATE", "RandomForestClassifier.max_depth"
    kind: KnobKind
    value: int | float
    literal: str  # the value's source text
    line: int  # 0-based index into the file's lines
    start: int  # the literal's span within the line
    end: int


def find_knobs(path: str, text: str, *, frozen: Sequence[str] = ()) -> list[Knob]:
    """Every knob of a Python file, in source order, but those `frozen` covers (farm.toml:
    the evaluation protocol); [] for a file that does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []  # the validator reports a broken file; there is nothing to tune here
    finder = _Finder()
    finder.visit(tree)
    lines = text.split("\n")
    knobs: list[Knob] = []
    seen: dict[str, int] = {}
    for name, kind, node in sorted(finder.found, key=lambda f: (f[2].lineno, f[2].col_offset)):
        line = lines[node.lineno - 1]
        if FROZEN_MARK in line or _NOT_KNOBS.fullmatch(_leaf(name)) or is_frozen(name, frozen):
            continue
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}#{seen[name]}"
        # ast columns count UTF-8 bytes, str indices count characters.
        assert node.end_col_offset is not None
        raw = line.encode()
        start = len(raw[: node.col_offset].decode())
        end = len(raw[: node.end_col_offset].decode())
        value = node.value
        assert isinstance(value, int | float)
        knobs.append(Knob(path, name, kind, value, line[start:end], node.lineno - 1, start, end))
    return knobs


def _leaf(name: str) -> str:
    """The last part of a knob name, without list indices: `CONFIG.opt.beta[0]` -> `beta`."""
    return re.sub(r"\[\d+\]", "", name).rsplit(".", 1)[-1]


def _number(node: ast.AST) -> ast.Constant | None:
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)  # a subclass of int
        and node.lineno == node.end_lineno
    ):
        return node
    return None


def _callee(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


class _Finder(ast.NodeVisitor):
    """Collects (name, kind, literal node); names are made unique by the caller."""

    def __init__(self) -> None:
        self.found: list[tuple[str, KnobKind, ast.Constant]] = []
        self._scopes: list[ast.AST] = []  # enclosing classes and functions
        self._claimed: set[int] = set()  # dict(...) calls read as config blocks

    def _block(self, node: ast.AST, name: str, kind: KnobKind) -> None:
        """A literal, or a config block of literals (dict, list, tuple, dict(...)), as `name`."""
        num = _number(node)
        if num is not None:
            self.found.append((name, kind, num))
            return
        entry = KnobKind.ENTRY if kind.is_declared() else kind
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    self._block(value, f"{name}.{key.value}", entry)
        elif isinstance(node, ast.List | ast.Tuple):
            for i, item in enumerate(node.elts):
                self._block(item, f"{name}[{i}]", entry)
        elif isinstance(node, ast.Call) and _callee(node) == "dict" and not node.args:
            self._claimed.add(id(node))
            for kw in node.keywords:
                if kw.arg is not None:
                    self._block(kw.value, f"{name}.{kw.arg}", entry)

    def _assignment(self, target: ast.AST, value: ast.AST | None) -> None:
        scope = self._scopes[-1] if self._scopes else None
        if value is None or not isinstance(target, ast.Name):
            return
        if scope is None:
            self._block(value, target.id, KnobKind.CONSTANT)
        elif isinstance(scope, ast.ClassDef):
            self._block(value, f"{scope.name}.{target.id}", KnobKind.FIELD)
        # Locals of functions are not knobs: they have no name outside the function.

    def visit_Assign(self, node: ast.Assign) -> None:
        if len(node.targets) == 1:
            self._assignment(node.targets[0], node.value)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._assignment(node.target, node.value)
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._scopes.append(node)
        self.generic_visit(node)
        self._scopes.pop()

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        owner = self._scopes[-1] if self._scopes else None
        name = node.name
        if name == "__init__" and isinstance(owner, ast.ClassDef):
            name = owner.name  # Model(hidden=64) reads better than __init__.hidden
        a = node.args
        positional = [*a.posonlyargs, *a.args]
        pairs = [*zip(positional[len(positional) - len(a.defaults) :], a.defaults, strict=True)]
        pairs += [(arg, d) for arg, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d]
        for arg, default in pairs:
            self._block(default, f"{name}.{arg.arg}", KnobKind.DEFAULT)
        self._scopes.append(node)
        self.generic_visit(node)
        self._scopes.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    # Leaves hold no knob of their own (a literal is found from what holds it): not walked,
    # as most nodes of a file of constants are these.
    def visit_Constant(self, node: ast.Constant) -> None:
        pass

    def visit_Name(self, node: ast.Name) -> None:
        pass

    def visit_Call(self, node: ast.Call) -> None:
        callee = _callee(node)
        if id(node) not in self._claimed and callee not in _NOT_TUNED_CALLS:
            for kw in node.keywords:
                if kw.arg is not None:
                    prefix = f"{callee}.{kw.arg}" if callee else kw.arg
                    self._block(kw.value, prefix, KnobKind.KEYWORD)
        self.generic_visit(node)


def knob_edits(text: str, changes: list[tuple[Knob, str]]) -> list[Edit]:
    """Edits that give each knob its new literal: one edit per group of changed lines.

    Each changed line is widened with its neighbours until its text occurs once in the file
    (so the edit applies exactly once); windows that touch are merged into one edit.
    """
    if not changes:
        return []
    lines = text.split("\n")
    new = list(lines)
    by_line: dict[int, list[tuple[Knob, str]]] = {}
    for knob, literal in changes:
        by_line.setdefault(knob.line, []).append((knob, literal))
    for i, on_line in by_line.items():
        for knob, literal in sorted(on_line, key=lambda c: -c[0].start):  # right to left
            new[i] = new[i][: knob.start] + literal + new[i][knob.end :]
    windows: list[list[int]] = []
    for i in sorted(by_line):
        lo, hi = i, i + 1
        while occurrences(text, "\n".join(lines[lo:hi])) > 1:
            lo, hi = max(0, lo - 1), min(len(lines), hi + 1)
        if windows and lo <= windows[-1][1]:
            windows[-1][1] = max(windows[-1][1], hi)
        else:
            windows.append([lo, hi])
    path = changes[0][0].path
    return [Edit(path, "\n".join(lines[lo:hi]), "\n".join(new[lo:hi])) for lo, hi in windows]


def value_changes(path: str, old: str, new: str) -> dict[str, str] | None:
    """The knobs `new` sets to other values than `old` (name -> new literal), when that is
    all that differs between them (a tuning draft: optuna, hybrid tuning, mutate); None
    when anything else differs, or nothing does."""
    before, after = find_knobs(path, old), find_knobs(path, new)
    if [(k.name, k.kind) for k in before] != [(k.name, k.kind) for k in after]:
        return None
    if _masked(old, before) != _masked(new, after):
        return None
    changed = {b.name: b.literal for a, b in zip(before, after, strict=True) if a.value != b.value}
    return changed or None


def _masked(text: str, knobs: list[Knob]) -> list[str]:
    """The file's lines with each knob's literal blanked out: what a tuning draft keeps."""
    lines = text.split("\n")
    for k in sorted(knobs, key=lambda k: (k.line, -k.start)):  # right to left on a line
        lines[k.line] = lines[k.line][: k.start] + "\0" + lines[k.line][k.end :]
    return lines


def set_values(path: str, text: str, values: dict[str, str]) -> list[Edit] | None:
    """Edits that give the knobs of `text` these literals (by name), or None when one of
    them is not a knob of `text` any more. Values it has already make no edit."""
    knobs = {k.name: k for k in find_knobs(path, text)}
    if any(name not in knobs for name in values):
        return None
    changes = [(knobs[n], lit) for n, lit in values.items() if knobs[n].literal != lit]
    return knob_edits(text, changes)


def value_in(knob: Knob, text: str, replacement: str) -> int | float | None:
    """The value `replacement` (an edit's new text) gives `knob` of `text`, or None.

    Read from the shape of the knob's line in `text`: the same code around a number, with
    any other numbers on the line free to differ and any trailing comment ignored. None
    when no line of `replacement` has that shape, or lines disagree.
    """
    line = text.split("\n")[knob.line]
    after = line[knob.end :]
    comment = after.find("#")
    if comment >= 0 and not re.search("[\"']", after[:comment]):
        after = after[:comment]  # a comment may say anything: only the code must match
    pattern = re.compile(
        rf"{_shape(line[: knob.start])}({_NUMBER.pattern}){_shape(after.rstrip())}[ \t]*(?:#.*)?"
    )
    values = set()
    for candidate in replacement.split("\n"):
        m = pattern.fullmatch(candidate.rstrip())
        if m:
            try:
                values.add(ast.literal_eval(m.group(1)))
            except (ValueError, SyntaxError):
                continue
    if len(values) != 1:
        return None
    value = values.pop()
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _shape(code: str) -> str:
    """`code` as a regex: numbers may be any number, runs of blanks any blanks."""
    parts = []
    pos = 0
    for m in _NUMBER.finditer(code):
        parts.append(re.escape(code[pos : m.start()]))
        parts.append(_NUMBER.pattern)
        pos = m.end()
    parts.append(re.escape(code[pos:]))
    return re.sub(r"(?:\\ |\\\t)+", r"[ \\t]*", "".join(parts))


def format_float(x: float, *, scientific: bool) -> str:
    """Six significant digits without float noise, in the literal's style: 6e-4, 0.001, 1.0."""
    text = f"{x:.6g}"
    if scientific or "e" in text:
        mantissa, exponent = f"{x:.5e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return text if "." in text else text + ".0"
