"""Checks every draft passes before any GPU time is spent, whichever proposer wrote it.

A rejection's `reason` is shown to the LLM in a repair request and stored in the ledger,
so it says what is wrong and what to do instead.
"""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import json
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from farm.records import Draft, edit_hash
from farm.text import clean_line, clean_text

NEAR_DUPLICATE_JACCARD = 0.8  # token overlap above which two hypotheses read as the same idea
TITLE_CHARS = 200
HYPOTHESIS_CHARS = 4000


@dataclass(frozen=True)
class ScoreGuard:
    """Without a protected `evaluate` command the metric is whatever the editable code
    prints, so drafts that print the metric line themselves or patch a protected module
    are refused. Heuristics that catch the plain forms only: `evaluate` is the guarantee.
    """

    metric: str
    protected: Sequence[str]

    def problem(self, path: str, added: list[str]) -> str:
        """Why the lines a draft adds to `path` look like forging the score ("" if not)."""
        prints = re.compile(rf"""[\"']\s*{re.escape(self.metric)}\s*[:=]""")
        modules = [m for p in self.protected if p.endswith(".py") for m in _module_names(p)]
        patches = [rf"\b{re.escape(m)}\s*\.\s*\w+\s*=(?!=)" for m in modules]
        patches += [rf"setattr\(\s*{re.escape(m)}\b" for m in modules]
        patches += [r"\bsys\s*\.\s*modules\b", r"__builtins__", r"\bbuiltins\s*\.\s*\w+\s*=(?!=)"]
        for line in added:
            if self.metric and prints.search(line):
                return (
                    f"{path}: an added line prints the metric `{self.metric}` itself "
                    f"({line.strip()[:80]!r}); the metric must come from the evaluation: "
                    "change what is trained, not what is reported"
                )
            if any(re.search(p, line) for p in patches):
                return (
                    f"{path}: an added line patches a protected module or the interpreter "
                    f"({line.strip()[:80]!r}); protected code must run as committed"
                )
        return ""


def _module_names(path: str) -> list[str]:
    """How code can name the module at `path`: `pkg.mod` and `mod`."""
    dotted = path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    return sorted({dotted, dotted.rsplit(".", 1)[-1]})


@dataclass(frozen=True)
class Validated:
    files: dict[str, str]  # full new text of every file the edits change
    edit_hash: str
    warnings: list[str] = field(default_factory=list)  # flags, not reasons to reject


@dataclass(frozen=True)
class Rejected:
    reason: str
    edit_hash: str  # kept so the ledger can record the rejected candidate


def validate_draft(
    draft: Draft,
    *,
    files: dict[str, str],
    editable: list[str],
    seen_hashes: set[str],
    max_edit_bytes: int,
    earlier_hypotheses: Sequence[str] = (),
    guard: ScoreGuard | None = None,
    frozen: Sequence[str] = (),
) -> Validated | Rejected:
    """Apply `draft` to `files` (the base's editable files) and check the result.

    `seen_hashes` are the edit hashes of every earlier candidate; `earlier_hypotheses`
    only raise near-duplicate warnings; a draft that changes a `frozen` name (farm.toml) is
    rejected. The draft's title and hypothesis are cleaned in
    place first: they are printed, committed and quoted to the LLM later.
    """
    draft.title = clean_line(draft.title, limit=TITLE_CHARS)
    draft.hypothesis = clean_text(draft.hypothesis)[:HYPOTHESIS_CHARS]
    digest = edit_hash(draft.edits)
    if draft.problem:
        return Rejected(draft.problem, digest)
    # First, so a repeat of a tried (perhaps since kept) change is called what it is.
    if digest in seen_hashes:
        return Rejected(
            f"duplicate of an earlier candidate (edit hash {digest}): propose a different change",
            digest,
        )
    outcome = _apply(draft, files=files, editable=editable, max_edit_bytes=max_edit_bytes)
    if isinstance(outcome, str):
        return Rejected(outcome, digest)
    for path, text in sorted(outcome.items()):
        if path.endswith(".py"):
            problem = _syntax_problem(path, text) or frozen_problem(
                path, files.get(path, ""), text, frozen
            )
            if problem:
                return Rejected(problem, digest)
    if guard is not None:
        for e in draft.edits:
            old = set(e.search.splitlines())
            problem = guard.problem(e.path, [ln for ln in e.replace.splitlines() if ln not in old])
            if problem:
                return Rejected(problem, digest)
    similar = near_duplicates(draft.hypothesis or draft.title, list(earlier_hypotheses))
    warnings = [f"hypothesis resembles an earlier one: {s!r}" for s in similar]
    return Validated(outcome, digest, warnings)


def validate_batch(
    drafts: Sequence[Draft],
    *,
    files: dict[str, str],
    editable: list[str],
    seen_hashes: set[str],
    max_edit_bytes: int,
    earlier_hypotheses: Sequence[str] = (),
    guard: ScoreGuard | None = None,
    frozen: Sequence[str] = (),
) -> list[Validated | Rejected]:
    """Validate drafts in order; a draft repeating an earlier one of the batch is a duplicate.

    Repeating means the same edit hash, or resulting files byte-identical to an earlier
    draft's (two spellings of one change). `seen_hashes` itself is not modified.
    """
    seen = set(seen_hashes)
    hypotheses = list(earlier_hypotheses)
    results: dict[str, int] = {}  # fingerprint of resulting files -> 1-based draft number
    out: list[Validated | Rejected] = []
    for number, draft in enumerate(drafts, start=1):
        verdict = validate_draft(
            draft,
            files=files,
            editable=editable,
            seen_hashes=seen,
            max_edit_bytes=max_edit_bytes,
            earlier_hypotheses=hypotheses,
            guard=guard,
            frozen=frozen,
        )
        if isinstance(verdict, Validated):
            fingerprint = _fingerprint(verdict.files)
            if fingerprint in results:
                verdict = Rejected(
                    f"gives the same files as draft {results[fingerprint]} of this batch: "
                    "propose a different change",
                    verdict.edit_hash,
                )
            else:
                results[fingerprint] = number
                seen.add(verdict.edit_hash)
                hypotheses.append(draft.hypothesis or draft.title)
        out.append(verdict)
    return out


def is_frozen(name: str, frozen: Sequence[str]) -> bool:
    """Whether `name` (`EVAL_DAYS`, `Config.n_folds`, `KFold.n_splits`) is covered by a
    `frozen` entry: a name, a dotted path or an fnmatch pattern, each covering what is
    under it (`ValidationConfig` freezes `ValidationConfig.purge` too)."""
    plain = re.sub(r"\[\d+\]", "", name)  # CONFIG.betas[0] is CONFIG.betas's
    return any(
        fnmatch.fnmatchcase(plain, pattern) or fnmatch.fnmatchcase(plain, f"{pattern}.*")
        for pattern in frozen
    )


def frozen_problem(path: str, old: str, new: str, frozen: Sequence[str]) -> str:
    """Why changing Python file `path` from `old` to `new` touches a frozen name ("" if not)."""
    if not frozen:
        return ""
    before, after = definitions(old), definitions(new)
    touched = sorted(
        name
        for name in before.keys() | after.keys()
        if before.get(name) != after.get(name) and is_frozen(name, frozen)
    )
    if not touched:
        return ""
    return (
        f"{path}: the edits change {', '.join(touched[:5])}, frozen in farm.toml (`frozen`): "
        "it is part of the evaluation protocol (how the metric is measured), so a change to "
        "it is not an improvement; leave it as it is and change the model or the training"
    )


def definitions(text: str) -> dict[str, list[str]]:
    """What each name of a Python file is bound to, in source order (as AST dumps): module
    and class assignments (`N`, `Cls.field`, `CONFIG.key` for a dict's entries), classes
    and functions (`Cls`, `fn`, and `fn.param` for defaults), attribute assignments
    (`Cls.field = 2` anywhere) and call keywords (`KFold.n_splits`). {} if it does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return {}
    found: dict[str, list[str]] = {}

    def bind(name: str, node: ast.AST) -> None:
        found.setdefault(name, []).append(ast.dump(node))
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    bind(f"{name}.{key.value}", value)

    def target(node: ast.AST, owner: str) -> str:
        if isinstance(node, ast.Name):
            return f"{owner}{node.id}"
        if isinstance(node, ast.Attribute):
            base = target(node.value, "")
            return f"{base}.{node.attr}" if base else ""
        return ""

    def visit(node: ast.AST, owner: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                bind(f"{owner}{child.name}", child)
                visit(child, f"{owner}{child.name}.")
                continue
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                bind(f"{owner}{child.name}", child)
                args = child.args
                positional = [*args.posonlyargs, *args.args]
                with_default = positional[len(positional) - len(args.defaults) :]
                pairs: list[tuple[ast.arg, ast.expr | None]]
                pairs = [*zip(with_default, args.defaults, strict=True)]
                pairs += zip(args.kwonlyargs, args.kw_defaults, strict=True)
                for arg, default in pairs:
                    if default is not None:
                        bind(f"{owner}{child.name}.{arg.arg}", default)
                visit(child, "")  # locals and attribute writes inside, by their own names
                continue
            if isinstance(child, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = child.targets if isinstance(child, ast.Assign) else [child.target]
                for t in targets:
                    name = target(t, owner)
                    if name and child.value is not None:
                        bind(name, child)
            elif isinstance(child, ast.Call):
                callee = target(child.func, "").rsplit(".", 1)[-1]
                for kw in child.keywords:
                    if kw.arg is not None and callee:
                        bind(f"{callee}.{kw.arg}", kw.value)
            visit(child, owner)

    visit(tree, "")
    return found


def near_duplicates(title_or_hypothesis: str, earlier: list[str]) -> list[str]:
    """The entries of `earlier` whose word sets overlap this one's by Jaccard ≥ 0.8."""
    mine = _tokens(title_or_hypothesis)
    if not mine:
        return []
    similar = []
    for text in earlier:
        theirs = _tokens(text)
        if theirs and len(mine & theirs) / len(mine | theirs) >= NEAR_DUPLICATE_JACCARD:
            similar.append(text)
    return similar


def occurrences(text: str, search: str) -> int:
    """How often `search` occurs in `text`, overlapping matches included."""
    count, start = 0, text.find(search)
    while start != -1:
        count += 1
        start = text.find(search, start + 1)
    return count


def _apply(
    draft: Draft, *, files: dict[str, str], editable: list[str], max_edit_bytes: int
) -> dict[str, str] | str:
    """The changed files' new text, or the reason the draft cannot be applied."""
    if not draft.title.strip():
        return "the draft has no title: give a short one-line summary of the change"
    if not draft.edits:
        return "the draft has no edits: give at least one search/replace block"
    size = sum(len(e.search.encode()) + len(e.replace.encode()) for e in draft.edits)
    if size > max_edit_bytes:
        return (
            f"the edits total {size} bytes, over the limit of {max_edit_bytes}: "
            "make a smaller, focused change with less search context"
        )
    # Editable paths as spelled in the config, keyed by their normal form.
    allowed = {posixpath.normpath(p): p for p in editable}
    current: dict[str, str] = dict(files)
    for number, e in enumerate(draft.edits, start=1):
        where = f"edit {number} ({e.path!r})"
        path = _editable_path(e.path, allowed)
        if path is None:
            return f"{where}: {_path_problem(e.path)}; editable files: {', '.join(editable)}"
        if e.search == e.replace:
            return f"{where}: search and replace are identical, so it changes nothing"
        if not e.search:
            if path in current:
                return (
                    f"{where}: an empty search creates a new file, but {path} already exists: "
                    "quote the exact text to replace in search"
                )
            current[path] = e.replace
            continue
        if path not in current:
            return f"{where}: {path} does not exist yet; to create it, leave search empty"
        text = current[path]
        count = occurrences(text, e.search)
        if count == 0:
            return (
                f"{where}: search text not found in {path}: copy it exactly from the "
                "current file (whitespace and comments included), after earlier edits"
            )
        if count > 1:
            return f"{where}: search text matches {count} times in {path}; include more context"
        start = text.index(e.search)
        current[path] = text[:start] + e.replace + text[start + len(e.search) :]
    changed = {p: t for p, t in current.items() if files.get(p) != t}
    if not changed:
        return "the edits leave every file as it was: propose a change that differs from the base"
    return changed


def _editable_path(path: str, allowed: dict[str, str]) -> str | None:
    if not path or "\\" in path or path.startswith("/") or ".." in path.split("/"):
        return None
    return allowed.get(posixpath.normpath(path))


def _path_problem(path: str) -> str:
    if "\\" in path:
        return "use forward slashes in paths"
    if path.startswith("/"):
        return "absolute paths are not allowed; use a path relative to the repo"
    if ".." in path.split("/"):
        return "paths may not leave the repo with '..'"
    return f"{path or 'an empty path'} is not an editable file"


def _syntax_problem(path: str, text: str) -> str:
    try:
        ast.parse(text, filename=path)
    except SyntaxError as e:
        line = f": {e.text.strip()!r}" if e.text and e.text.strip() else ""
        return f"{path} does not parse after the edits: line {e.lineno}: {e.msg}{line}"
    except ValueError as e:  # e.g. a null byte in the source
        return f"{path} does not parse after the edits: {e}"
    return ""


def _fingerprint(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()


def _tokens(text: str) -> set[str]:
    return {t.strip(".") for t in re.findall(r"[\w.]+", text.lower())} - {""}
