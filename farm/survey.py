"""What a repo says about itself, for `farm init`: its files, what its docs and docstrings
say to edit and to leave alone, the command they show, and what imports what.

Statements are read as votes: "`train.py` is the only file you edit" is one for editing
train.py, "`prepare.py` loads the data. Do not modify it." one against touching
prepare.py; program*.md counts double. Every local module the command's script, an
evaluator or a fixed file reaches, other than the editable files, is protected (an
evaluator `run.py` that imports `train.py` is), and so is every repo file they name in a
string (the data file an evaluator reads).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from farm.config import CONFIG_NAME
from farm.errors import FarmError

GIT_TIMEOUT_S = 30.0
# Protected even when nothing imports them: autoresearch's data prep, evaluation scripts.
_SETUP_NAMES = {"prepare.py", "evaluate.py", "eval.py", "evaluation.py"}
_SKIP_DIRS = {".git", ".farm", ".venv", "venv", "__pycache__", "node_modules", ".mypy_cache"}

# Words that say a file must stay as it is, or that it is the one to change. "fixed" and
# "frozen" count as a verdict ("are fixed.", "Fixed:"), not before a noun ("a fixed
# number of steps", "the fixed training set").
_FIXED = re.compile(
    r"(?i)\b(do not|don't|does not|doesn't|never|must not|may not|cannot|can't|should not|"
    r"read[- ]only|untouched|unchanged|not to be|evaluator|(?:fixed|frozen)(?!\s+[a-z]))\b"
)
_CHANGE = re.compile(
    r"(?i)\b(edit\w*|modif\w*|chang\w*|improve\w*|tune\w*|optimi[sz]\w*|"
    r"(?:raise|lower)(?!\s+is\b)|"
    r"fair game|you may|you can|the file you|editable)\b"
)
_EXCEPT = r"(?i)\b(except|other than|apart from|besides|but)\s+[`'\"]?"
_MENTION = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.py)\b")
# `python train.py`, `uv run train.py --fast`, `python -m pkg.train`: flags may follow.
_COMMAND = re.compile(
    r"(?:^|(?<=[`\s$>]))((?:uv run|python3?(?:[ \t]+-u)?)[ \t]+(?:-m[ \t]+[\w.]+|[\w./-]+\.py)"
    r"(?:[ \t]+--?[\w-]+(?:[= ][\w./:-]+)?)*)",
    re.MULTILINE,
)


@dataclass
class Found:
    """One value of the spec, with where it came from (shown in the terminal and the file)."""

    value: object
    how: str
    checked: bool = True  # False: a guess nothing confirmed (a warning goes with it)


@dataclass
class Inspection:
    """What `farm init` learned about a repo."""

    root: Path
    files: list[str]  # tracked and untracked-but-not-ignored files, relative
    docs: dict[str, str]  # program*.md and README files: text
    program: str  # the program*.md file proposers get ("" when there is none)
    found: dict[str, Found] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # path -> (+weight for "edit it" / -weight for "leave it alone", the statement saying so)
    votes: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    def python(self) -> list[str]:
        return [f for f in self.files if f.endswith(".py") and not _is_test(f)]

    def read(self, path: str) -> str:
        try:
            return (self.root / path).read_text(errors="replace")
        except OSError:
            return ""


def survey(root: Path) -> Inspection:
    files = _list_files(root)
    top = [f for f in files if "/" not in f]
    programs = sorted(f for f in top if re.fullmatch(r"(?i)program[\w.-]*\.md", f))
    readmes = sorted(f for f in top if re.fullmatch(r"(?i)readme(\.\w+)?", f))
    ins = Inspection(root=root, files=files, docs={}, program="")
    if programs:
        ins.program = "program.md" if "program.md" in programs else programs[0]
        if len(programs) > 1:
            ins.warnings.append(
                f"several instruction files ({', '.join(programs)}): program = "
                f"{ins.program!r}; set `program` to the one proposers should read"
            )
    else:
        ins.warnings.append(
            "no program*.md: proposers get no instructions; write one (what to improve, "
            "what not to touch) and set `program`"
        )
    for doc in [*programs, *readmes]:
        ins.docs[doc] = ins.read(doc)
    return ins


def _list_files(root: Path) -> list[str]:
    """What a commit of the repo would hold: tracked and untracked, not ignored, files."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-co", "--exclude-standard", "-z"],
            capture_output=True,
            timeout=GIT_TIMEOUT_S,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
    except (OSError, subprocess.TimeoutExpired):
        proc = None
    if proc is not None and proc.returncode == 0:
        names = [n for n in proc.stdout.decode(errors="replace").split("\0") if n]
        return sorted(n for n in names if (root / n).is_file() and n != CONFIG_NAME)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".")]
        rel = Path(dirpath).relative_to(root)
        found += [(rel / f).as_posix() for f in filenames if f != CONFIG_NAME]
    return sorted(found)


def _is_test(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    parts = path.split("/")[:-1]
    return (
        name.startswith("test_")
        or name in ("conftest.py", "setup.py")
        or any(p in ("tests", "test") for p in parts)
    )


def blocks(text: str) -> list[tuple[str, bool]]:
    """A document as (text, is a list item): each list item, paragraph and heading whole."""
    blocks: list[tuple[str, bool]] = []
    block: list[str] = []
    item = False
    for line in [*text.splitlines(), ""]:
        stripped = line.strip()
        bullet = re.match(r"([-*+]|\d+[.)])\s+", stripped)
        if block and stripped and not bullet and not stripped.startswith("#"):
            block.append(stripped)  # a paragraph's next line, or a list item's continuation
            continue
        if block:
            blocks.append((" ".join(block), item))
        block = [stripped[bullet.end() :]] if bullet else [stripped] if stripped else []
        item = bool(bullet)
        if stripped.startswith("#"):
            blocks.append((stripped, False))
            block = []
    return blocks


def clauses(block: str, ends: str = ".;!?") -> list[str]:
    # A clause ends at one of `ends` and a space ("train.py" has no space after its dot).
    return [c for c in re.split(rf"(?<=[{ends}])\s+", block) if c]


def _docstring_units(text: str) -> list[str]:
    try:
        doc = ast.get_docstring(ast.parse(text)) or ""
    except (SyntaxError, ValueError):
        return []
    return [u.strip() for u in re.split(r"[.;]\s+|\n\n", doc) if u.strip()]


def roles(ins: Inspection) -> None:
    """Votes for editable (+) and protected (-) from the docs and the files' docstrings.

    A list item that names one file speaks of it whole ("- `prepare.py` loads the data. Do
    not modify it."); paragraphs and other items speak clause by clause, a clause that names
    no file speaking of the one before when that said nothing ("`data.py` holds the data.
    Never modify it.").
    """
    existing = set(ins.files)

    def vote(path: str, text: str, weight: int, source: str) -> None:
        fixed, change = _FIXED.search(text), _CHANGE.search(text)
        if re.search(_EXCEPT + re.escape(path), text):
            fixed, change = None, change or fixed  # "do not modify anything but train.py"
        if fixed or change:
            signed = -weight if fixed else weight
            ins.votes.setdefault(path, []).append((signed, f"{source}: {quote(text)}"))

    def named(text: str, doc: str) -> list[str]:
        paths = []
        for path in dict.fromkeys(_MENTION.findall(text)):
            if path not in existing:
                same = [f for f in existing if f.rsplit("/", 1)[-1] == path.rsplit("/", 1)[-1]]
                if len(same) != 1:
                    warning = f"{doc} names {path}, which is not in the repo: left out"
                    if warning not in ins.warnings:
                        ins.warnings.append(warning)
                    continue
                path = same[0]
            paths.append(path)
        return paths

    for doc, text in ins.docs.items():
        weight = 2 if doc == ins.program or doc.lower().startswith("program") else 1
        for block, item in blocks(text):
            paths = named(block, doc)
            if item and len(paths) == 1:
                vote(paths[0], block, weight, doc)
                continue
            before: list[str] = []
            for clause in clauses(block):
                here = named(clause, doc)
                for path in here or before:
                    vote(path, clause, weight, doc)
                before = (
                    here if here and not (_FIXED.search(clause) or _CHANGE.search(clause)) else []
                )
    for py in ins.python():
        for unit in _docstring_units(ins.read(py)):
            if not _MENTION.search(unit):  # a docstring speaks for its own file only
                vote(py, unit, 1, f"{py} docstring")


def quote(unit: str) -> str:
    return json.dumps(unit if len(unit) <= 70 else unit[:67] + "...", ensure_ascii=False)


def find_command(ins: Inspection, *, override: str | None) -> None:
    if override:
        ins.found["command"] = Found(override, "from --command")
        return
    existing = set(ins.files)
    for doc, text in ins.docs.items():
        for m in _COMMAND.finditer(text):
            cmd = " ".join(m.group(1).split())
            script = _script(cmd)
            if script is not None and script in existing:
                ins.found["command"] = Found(cmd, f"from {doc}")
                return
    editable = [p for p, v in ins.votes.items() if sum(w for w, _ in v) > 0]
    for guess in [*editable, "train.py"]:
        if guess in existing:
            ins.found["command"] = Found(f"python {guess}", "a guess", checked=False)
            ins.warnings.append(
                f"no `python <script>` line in {', '.join(ins.docs) or 'any doc'}: command "
                f'"python {guess}" is a guess; pass --command if it is wrong'
            )
            return
    raise FarmError(
        f"no command found: {', '.join(ins.docs) or 'no README or program.md'} shows no "
        "`python <script>.py` line and there is no train.py; rerun with --command "
        '"python <your script>.py"'
    )


def _script(command: str) -> str | None:
    """The local file a command runs: `python x.py ...` -> x.py, `python -m a.b` -> a/b.py."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    for i, w in enumerate(words):
        if w.endswith(".py"):
            return w.removeprefix("./")
        if w == "-m" and i + 1 < len(words):
            return words[i + 1].replace(".", "/") + ".py"
    return None


def imports(ins: Inspection) -> dict[str, set[str]]:
    """Each local Python file -> the local files it imports (by the script's sys.path)."""
    pys = set(ins.python())
    graph: dict[str, set[str]] = {}
    for py in pys:
        try:
            tree = ast.parse(ins.read(py))
        except (SyntaxError, ValueError):
            graph[py] = set()
            continue
        here = py.rsplit("/", 1)[0] + "/" if "/" in py else ""
        names = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
                names += [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom):  # from . import x
                names += [a.name for a in node.names]
        found = set()
        for name in names:
            rel = name.replace(".", "/")
            for base in dict.fromkeys([here, ""]):
                for cand in (f"{base}{rel}.py", f"{base}{rel}/__init__.py"):
                    if cand in pys and cand != py:
                        found.add(cand)
        graph[py] = found
    return graph


def files_read(ins: Inspection, modules: set[str]) -> set[str]:
    """The repo's files these Python modules name in a string (a data file, a label list
    the evaluator reads): protected with them, or training could rewrite what scores it."""
    files = set(ins.files)
    found = set()
    for py in modules & set(ins.python()):
        try:
            tree = ast.parse(ins.read(py))
        except (SyntaxError, ValueError):
            continue
        here = py.rsplit("/", 1)[0] + "/" if "/" in py else ""
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                name = node.value.strip().removeprefix("./")
                found |= {p for p in (name, here + name) if p in files and p != py}
    return found


def split_files(ins: Inspection) -> None:
    """Editable from the votes (else the command's script); protected: fixed by the docs,
    or reached by the command's script through imports."""
    votes = ins.votes
    score = {p: sum(w for w, _ in v) for p, v in votes.items()}
    entry = _script(str(ins.found["command"].value))
    editable = sorted(p for p, s in score.items() if s > 0)
    for p, v in votes.items():
        if any(w > 0 for w, _ in v) and any(w < 0 for w, _ in v):
            kind = "editable" if score[p] > 0 else "protected"
            ins.warnings.append(f"the docs say both ways about {p}: it is {kind}; check it")
    if editable:
        reasons = [votes[p][0][1] for p in editable if any(w > 0 for w, _ in votes[p])]
        ins.found["editable"] = Found(editable, reasons[0])
    elif entry and entry in ins.files:
        editable = [entry]
        ins.found["editable"] = Found(editable, "the command's script (a guess)", checked=False)
        ins.warnings.append(
            f"nothing says which file to edit: editable = [{entry!r}] is a guess; name it in "
            'program.md ("the only file you edit") or fix `editable`'
        )
    else:
        raise FarmError(
            "cannot tell which file proposals may edit: say it in program.md (e.g. "
            '"`train.py` is the only file you edit") or rerun with --command'
        )
    graph = imports(ins)
    fixed = {p for p, s in score.items() if s < 0}
    named = {p for p in ins.python() if p.rsplit("/", 1)[-1] in _SETUP_NAMES}
    # What the command runs, and what an evaluator or a fixed module imports: a helper the
    # evaluator trusts is as protected as the evaluator.
    reached: set[str] = set()
    todo = [f for f in [entry, *editable, *sorted(named | fixed)] if f in graph]
    while todo:
        f = todo.pop()
        if f not in reached:
            reached.add(f)
            todo += graph.get(f, set())
    code = (fixed | reached | named) - set(editable)
    read = files_read(ins, code) - set(editable) - code
    protected = sorted(code | read)
    how = []
    for why, paths in (
        ("the docs say fixed", fixed),
        ("run by the command", reached - fixed),
        ("named like data prep or evaluation", named - reached - fixed),
        ("read by those", read),
    ):
        if paths - set(editable):
            how.append(f"{why}: " + ", ".join(sorted(paths - set(editable))))
    ins.found["protected"] = Found(protected, "; ".join(how) or "nothing found")


def find_seed_env(ins: Inspection) -> None:
    read = set()
    for py in ins.python():
        read |= set(
            re.findall(r"(?:environ\.get|getenv|environ)\s*[\(\[]\s*[\"'](\w*SEED\w*)[\"']",
                       ins.read(py))
        )  # fmt: skip
    if "FARM_SEED" in read or not read:
        ins.found["seed_env"] = Found("FARM_SEED", "read by the target" if read else "")
    else:
        name = sorted(read)[0]
        ins.found["seed_env"] = Found(name, "the seed variable the target reads")
    if not read:
        ins.warnings.append(
            "no file reads $FARM_SEED (or any *SEED* variable): every trial runs with the same "
            "randomness. If the metric depends on a seed, read it: "
            'random_state=int(os.environ.get("FARM_SEED", 0)); if it is deterministic, '
            "see README, Using it on your own repo"
        )
