"""What a repo says about itself, for `farm init`: its files, what its docs and docstrings
say to edit and to leave alone, the commands they show (a trial's, or a setup step's), the
seed, time budget and environment they name, and what imports what.

Statements are read as votes: "`train.py` is the only file you edit" is one for editing
train.py, "`prepare.py` loads the data. Do not modify it." one against touching
prepare.py. One vote against wins over any for: a file a doc forbids changing is
protected, and the conflict is a CHECK line. Every local module the command's script, an
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
    r"(?i)\b(read[- ]only|untouched|unchanged|evaluator|(?:fixed|frozen)(?!\s+[a-z]))\b"
)
# A negation forbids only when a verb of changing follows it: "do not modify", "must not
# be changed", "never touch"; not "do NOT use tee".
_NEGATION = re.compile(
    r"(?i)\b(do not|don't|does not|doesn't|never|must not|may not|cannot|can't|should not|"
    r"not to be|not(?=\s+(?:be\s+)?(?:modif|edit|chang|touch|alter)))\b"
)
_ELLIPSIS = re.compile(r"(?i)\b(never|but not|and not)\b")
_ALTER = re.compile(
    r"(?i)\b(edit\w*|modif\w*|chang\w*|touch\w*|alter\w*|rewrite|overwrite|tamper\w*|"
    r"tune\w*|optimi[sz]\w*|improve\w*)\b"
)
_CHANGE = re.compile(
    r"(?i)\b(edit\w*|modif\w*|chang\w*|improve\w*|tune\w*|optimi[sz]\w*|"
    r"(?:raise|lower)(?!\s+is\b)|"
    r"fair game|you may|you can|the file you|editable)\b"
)
# A heading or lead-in that forbids what its list names ("What you CANNOT do:").
_FORBIDS = re.compile(
    r"(?i)\b(cannot|can't|must not|may not|do not|don't|never|not allowed|forbidden|"
    r"off[- ]limits|read[- ]only)\b"
)
# A clause that asks to read files, not to change them.
_READING = re.compile(
    r"(?i)\b(read(?![- ]only)|reading|look at|study|skim|familiari[sz]e|context)\b"
)
_EXCEPT = r"(?i)\b(except|other than|apart from|besides|but)\s+[`'\"]?"
_MENTION = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.py)\b")
# Environment managers a doc may run the command through: farm runs the command itself in
# the environment it was started in, so the prefix becomes advice to activate that one (the
# probe never runs uv or poetry: they resolve and download packages).
_ENV_PREFIX = (
    r"(?:uv run|poetry run|pipenv run|conda run(?:[ \t]+(?:-n|--name|-p|--prefix)[ \t]+[\w./-]+)?)"
)
_PYTHON = r"python3?(?:[ \t]+-u)?"
# `python train.py`, `uv run train.py --fast`, `python -m pkg.train`, `poetry run python x.py
# --seed 1 lr=0.1`: flags and key=value arguments may follow.
_COMMAND = re.compile(
    rf"(?:^|(?<=[`\s$>]))((?:{_ENV_PREFIX}[ \t]+(?:{_PYTHON}[ \t]+)?|{_PYTHON}[ \t]+)"
    r"(?:-m[ \t]+[\w.]+|[\w./-]+\.py)"
    r"(?:[ \t]+--?[\w-]+(?:[= ][\w./:$-]+)?|[ \t]+[A-Za-z_][\w.]*=[\w./:$-]+)*)",
    re.MULTILINE,
)
# A step that readies or shows the data, not a trial: by the script's name or a flag.
_SETUP_SCRIPT = re.compile(
    r"(?i)^(prepare|setup|install|download|fetch|get_data|make_data|build_data|preprocess)"
    r"(_\w+)?$"
)
_SETUP_FLAG = re.compile(
    r"(?i)^--?(list|ls|help|h|version|download|check|dry-run|dry_run|setup|prepare|info|show)$"
)
# A script that drives a coding agent rather than running one trial.
_AGENT = re.compile(
    r"(?m)^\s*(?:import|from)\s+(anthropic|openai|claude_agent_sdk|claude_code_sdk|litellm|"
    r"langchain\w*|aider)\b|[\"'](claude|codex|aider)[\"']"
)
MAX_PROBES = 3  # candidates run at most: each costs a run of the target


@dataclass
class Found:
    """One value of the spec, with where it came from (shown in the terminal and the file)."""

    value: object
    how: str
    checked: bool = True  # False: a guess nothing confirmed (a warning goes with it)


@dataclass
class Candidate:
    """A command the repo shows, as farm would run it."""

    command: str  # the environment manager's prefix taken off
    source: str  # where it was found: "README.md", "Makefile", "train.py docstring"
    written: str  # as the source writes it
    manager: str = ""  # the environment manager the source runs it through: "uv", "poetry"
    dropped: str = ""  # why it is no trial ("": it may be one)
    checked: bool = True  # False: a guess from the file names, no source shows it


@dataclass
class Inspection:
    """What `farm init` learned about a repo."""

    root: Path
    files: list[str]  # tracked and untracked-but-not-ignored files, relative
    docs: dict[str, str]  # program*.md and README files: text
    program: str  # the program*.md file proposers get ("" when there is none)
    found: dict[str, Found] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # path -> (+1 for "edit it" / -1 for "leave it alone", the statement saying so)
    votes: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)  # commands, likeliest first

    def python(self) -> list[str]:
        return [f for f in self.files if f.endswith(".py") and not _is_test(f)]

    def read(self, path: str) -> str:
        try:
            return (self.root / path).read_text(errors="replace")
        except OSError:
            return ""


def _fixed_spans(text: str) -> list[tuple[int, int]]:
    """Where `text` says to leave a file alone: a word for a fixed state, or a negation
    with its verb ("do not modify", the span running to the verb's end)."""
    spans = [m.span() for m in _FIXED.finditer(text)]
    for m in _NEGATION.finditer(text):
        verb = _ALTER.search(text, m.end(), m.end() + 40)
        if verb:
            spans.append((m.start(), verb.end()))
    for m in _ELLIPSIS.finditer(text):  # "edit `a.py`, never `b.py`": the verb went before
        if _ALTER.search(text, 0, m.start()) and not any(a <= m.start() < b for a, b in spans):
            spans.append(m.span())
    return sorted(spans)


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


def blocks(text: str, *, gaps: bool = False) -> list[tuple[str, bool]]:
    """A document as (text, is a list item): each list item, paragraph and heading whole,
    each line of a fenced code block alone; with `gaps`, ("", False) for each blank line."""
    blocks: list[tuple[str, bool]] = []
    block: list[str] = []
    item = False
    fenced = False
    for line in [*text.splitlines(), ""]:
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")) or fenced:
            if block:  # a fence ends the block before it; in a fence, a line is a block
                blocks.append((" ".join(block), item))
            block = []
            if stripped.startswith(("```", "~~~")):
                fenced = not fenced
            elif stripped:
                blocks.append((stripped, False))
            continue
        bullet = re.match(r"([-*+]|\d+[.)])\s+", stripped)
        if block and stripped and not bullet and not stripped.startswith("#"):
            block.append(stripped)  # a paragraph's next line, or a list item's continuation
            continue
        if block:
            blocks.append((" ".join(block), item))
        block = [stripped[bullet.end() :]] if bullet else [stripped] if stripped else []
        item = bool(bullet)
        if gaps and not stripped:
            blocks.append(("", False))
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
    Never modify it."). Items under a heading that forbids ("What you CANNOT do:") vote
    against each file they name, whatever their own verb ("- Modify `prepare.py`."); a
    clause naming several files votes for each by the nearest word ("edit `a.py`, never
    `b.py`"); a reading list ("Read `README.md`, `prepare.py` and `train.py`") makes no
    file editable.
    """
    existing = set(ins.files)

    def vote(path: str, text: str, source: str, *, several: bool = False) -> None:
        sign = _polarity(path, text, several=several)
        if sign > 0 and several and _READING.search(text):
            return  # a mention in a reading list: read, not edited
        if sign:
            ins.votes.setdefault(path, []).append((sign, f"{source}: {quote(text)}"))

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
        forbidding = ""  # the heading that forbids what its list items name
        listed = False  # an item of its list was seen: a blank line ends the list
        for block, item in blocks(text, gaps=True):
            if not block:
                forbidding = "" if listed else forbidding
                continue
            if not item:
                listed = False
                heading = block.startswith("#") or block.rstrip("*_ ").endswith(":")
                forbidding = block if heading and _FORBIDS.search(block) else ""
            paths = named(block, doc)
            if item and forbidding:
                listed = True
                for path in paths:
                    ins.votes.setdefault(path, []).append(
                        (-1, f"{doc}: {quote(forbidding + ' ' + block)}")
                    )
                continue
            if item and len(paths) == 1:
                vote(paths[0], block, doc)
                continue
            before: list[str] = []
            for clause in clauses(block):
                here = named(clause, doc)
                for path in here or before:
                    vote(path, clause, doc, several=len(here) > 1)
                before = (
                    here if here and not (_fixed_spans(clause) or _CHANGE.search(clause)) else []
                )
    for py in ins.python():
        for unit in _docstring_units(ins.read(py)):
            if not _MENTION.search(unit):  # a docstring speaks for its own file only
                vote(py, unit, f"{py} docstring")


def _polarity(path: str, text: str, *, several: bool) -> int:
    """+1: `text` says to change `path`; -1: to leave it alone; 0: neither."""
    fixed = _fixed_spans(text)
    # "do not modify": the verb belongs to the negation.
    change = [
        m.span()
        for m in _CHANGE.finditer(text)
        if not any(start <= m.start() < end for start, end in fixed)
    ]
    if re.search(_EXCEPT + re.escape(path), text):
        return 1 if fixed or change else 0  # "do not modify anything but train.py"
    if not fixed or not change:
        return -1 if fixed else 1 if change else 0
    if not several:
        return -1
    at = re.search(re.escape(path), text)
    start, end = at.span() if at else (0, 0)

    def distance(span: tuple[int, int]) -> tuple[int, int]:
        before = start - span[1]
        return (before, 0) if before >= 0 else (max(0, span[0] - end), 1)

    near_fixed, near_change = min(map(distance, fixed)), min(map(distance, change))
    return -1 if near_fixed <= near_change else 1


def quote(unit: str) -> str:
    return json.dumps(unit if len(unit) <= 70 else unit[:67] + "...", ensure_ascii=False)


def find_commands(ins: Inspection, *, override: str | None) -> None:
    """Every command the repo shows (program*.md, README, shell scripts, Makefile,
    docstrings), environment-manager prefixes taken off, likeliest first; each one that is
    no trial (a setup, data or listing step, an agent wrapper, a test) says why it is not."""
    if override:
        ins.candidates = [Candidate(override, "--command", override)]
        return
    existing = set(ins.files)
    sources = [*ins.docs.items()]
    for f in ins.files:
        if (f.endswith(".sh") and f.count("/") <= 1) or f.lower() in ("makefile", "justfile"):
            sources.append((f, ins.read(f)))
    for py in ins.python():
        try:
            doc = ast.get_docstring(ast.parse(ins.read(py))) or ""
        except (SyntaxError, ValueError):
            doc = ""
        if doc:
            sources.append((f"{py} docstring", doc))
    editable = {p for p, v in ins.votes.items() if any(w > 0 for w, _ in v)}
    graph = imports(ins)
    seen: set[str] = set()
    found: list[Candidate] = []
    for source, text in sources:
        for m in _COMMAND.finditer(text):
            written = " ".join(m.group(1).split())
            cand = _candidate(ins, written, source, existing)
            if cand.command not in seen:
                seen.add(cand.command)
                found.append(cand)

    def likelihood(c: Candidate) -> int:
        script = _script(c.command) or ""
        runs = _reach(graph, [script])
        program = c.source == ins.program or c.source.lower().startswith("program")
        return 2 * bool(runs & editable) + program

    # The ones that may be trials, likeliest first; the others as the sources list them.
    ranked = sorted((c for c in found if not c.dropped), key=lambda c: -likelihood(c))
    ranked += [c for c in found if c.dropped]
    if not any(not c.dropped for c in ranked):
        for guess in [*sorted(editable), "train.py"]:
            if guess in existing and f"python {guess}" not in seen:
                ranked.append(Candidate(f"python {guess}", "a guess", f"python {guess}",
                                        checked=False))  # fmt: skip
                break
    if not any(not c.dropped for c in ranked):
        dropped = "".join(f"\n  `{c.written}` ({c.source}): {c.dropped}" for c in ranked)
        raise FarmError(
            f"no command found: {', '.join(ins.docs) or 'no README or program.md'} shows no "
            "`python <script>.py` line that runs a trial and there is no train.py"
            + (f"; left out:{dropped}\n" if dropped else "; ")
            + 'rerun with --command "python <your script>.py"'
        )
    ins.candidates = ranked


def _candidate(ins: Inspection, written: str, source: str, existing: set[str]) -> Candidate:
    prefix = re.match(rf"({_ENV_PREFIX})[ \t]+", written)
    rest = written[prefix.end() :] if prefix else written
    if not re.match(rf"{_PYTHON}[ \t]", rest):
        rest = "python " + rest  # `uv run train.py`
    cand = Candidate(rest, source, written, manager=prefix.group(1).split()[0] if prefix else "")
    script = _script(rest)
    flags = [w.split("=")[0] for w in rest.split()[2:] if w.startswith("-")]
    if script is None or script not in existing:
        cand.dropped = f"runs {script or 'no script'}, which is not in the repo"
    elif _is_test(script):
        cand.dropped = "a test, not a trial"
    elif _SETUP_SCRIPT.match(script.rsplit("/", 1)[-1].removesuffix(".py")):
        cand.dropped = f"a setup or data step ({script})"
    elif any(_SETUP_FLAG.match(f) for f in flags):
        flag = next(f for f in flags if _SETUP_FLAG.match(f))
        cand.dropped = f"a listing or checking step ({flag})"
    elif agent := _AGENT.search(ins.read(script)):
        cand.dropped = f"drives a coding agent ({(agent.group(1) or agent.group(2))})"
    return cand


def _reach(graph: dict[str, set[str]], start: list[str]) -> set[str]:
    """The files `start` imports, directly or through others, with `start` itself."""
    reached: set[str] = set()
    todo = [f for f in start if f in graph]
    while todo:
        f = todo.pop()
        if f not in reached:
            reached.add(f)
            todo += graph.get(f, set())
    return reached


def environment(ins: Inspection, written: str = "") -> str:
    """How to activate the environment the repo declares, else the one the command as
    `written` runs through (`uv run`, `conda run -n env`); "" when there is neither."""
    files = set(ins.files)
    if "uv.lock" in files:
        return "uv (uv.lock): `uv sync`, then `source .venv/bin/activate`"
    if "poetry.lock" in files:
        return "poetry (poetry.lock): `poetry install`, then `eval $(poetry env activate)`"
    for name in ("environment.yml", "environment.yaml"):
        if name in files:
            env = re.search(r"(?m)^name:\s*(\S+)", ins.read(name))
            return (
                f"conda ({name}): `conda env create -f {name}`, then "
                f"`conda activate {env.group(1) if env else '<its name>'}`"
            )
    if "Pipfile.lock" in files or "Pipfile" in files:
        return "pipenv (Pipfile): `pipenv install`, then `pipenv shell`"
    if (ins.root / ".venv").is_dir():
        return "a virtualenv (.venv): `source .venv/bin/activate`"
    if "requirements.txt" in files:
        return (
            "pip (requirements.txt): `python -m venv .venv && source .venv/bin/activate && "
            "pip install -r requirements.txt`"
        )
    manager = written.split(" ", 1)[0]
    conda = re.search(r"(?:-n|--name|-p|--prefix)\s+(\S+)", written)
    return {
        "uv": "uv: `uv sync`, then `source .venv/bin/activate`",
        "poetry": "poetry: `poetry install`, then `eval $(poetry env activate)`",
        "pipenv": "pipenv: `pipenv install`, then `pipenv shell`",
        "conda": f"conda: `conda activate {conda.group(1) if conda else '<its environment>'}`",
    }.get(manager, "")


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
    """Editable: what the docs say to change and nothing forbids (else the command's script);
    protected: what any doc forbids changing, whatever else mentions it, and what the
    command's script reaches through imports."""
    votes = ins.votes
    entry = _script(str(ins.found["command"].value))
    fixed = {p for p, v in votes.items() if any(w < 0 for w, _ in v)}
    editable = sorted(p for p, v in votes.items() if p not in fixed)
    for p in sorted(fixed):
        against = next(why for w, why in votes[p] if w < 0)
        for_ = next((why for w, why in votes[p] if w > 0), "")
        if for_:
            ins.warnings.append(
                f"{p} is protected ({against}), though {for_}: a prohibition wins; move it "
                "to `editable` if it may change"
            )
    if editable:
        ins.found["editable"] = Found(editable, votes[editable[0]][0][1])
    elif entry and entry in ins.files and entry not in fixed:
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
    named = {p for p in ins.python() if p.rsplit("/", 1)[-1] in _SETUP_NAMES}
    # What the command runs, and what an evaluator or a fixed module imports: a helper the
    # evaluator trusts is as protected as the evaluator.
    reached = _reach(graph, [entry or "", *editable, *sorted(named | fixed)])
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


# A seed the command passes: `--seed 3`, `--random-state=3`, `seed=3` (a Hydra override).
_SEED_FLAG = re.compile(r"(?i)(?<!\S)(--(?:seed|rng[-_]seed|random[-_]state))([ =])(\S+)")
_SEED_KEY = re.compile(r"(?i)(?<!\S)((?:seed|random_state)=)(\S+)")
# A seed option the script declares (argparse, click).
_SEED_OPTION = re.compile(
    r"(?i)(?:add_argument|option)\(\s*(?:[\"']-\w[\"']\s*,\s*)?"
    r"[\"'](--(?:seed|rng[-_]seed|random[-_]state))[\"']"
)


def wire_seed(ins: Inspection, command: str, env: str = "FARM_SEED") -> tuple[str, str]:
    """`command` with the seed it passes taken from `$env`, and how ("": it passes none)."""
    if m := _SEED_FLAG.search(command):
        wired = command[: m.start(3)] + f"${env}" + command[m.end(3) :]
        return wired, f"the command's {m.group(1)} reads ${env}"
    if m := _SEED_KEY.search(command):
        wired = command[: m.start(2)] + f"${env}" + command[m.end(2) :]
        return wired, f"the command's {m.group(1)} reads ${env}"
    script = _script(command)
    if script and (m := _SEED_OPTION.search(ins.read(script))):
        return f"{command} {m.group(1)} ${env}", f"{script} takes {m.group(1)}: given ${env}"
    return command, ""


def seed_variables(ins: Inspection) -> set[str]:
    """The environment variables the repo's code reads a seed from (`SEED`, `RANDOM_STATE`)."""
    read = set()
    for py in ins.python():
        read |= set(
            re.findall(r"(?:environ\.get|getenv|environ)\s*[\(\[]\s*[\"'](\w*(?:SEED|RANDOM_STATE)\w*)[\"']",
                       ins.read(py))
        )  # fmt: skip
    return read


def find_seed_env(ins: Inspection) -> None:
    """The variable the trial's seed reaches the target through: one it reads, or FARM_SEED
    when the command passes it as an argument (wire_seed) or nothing reads one."""
    read = seed_variables(ins)
    passed = ins.found["seed_env"].how if "seed_env" in ins.found else ""
    if "FARM_SEED" in read or not read:
        ins.found["seed_env"] = Found("FARM_SEED", "read by the target" if read else passed)
    else:
        name = sorted(read)[0]
        ins.found["seed_env"] = Found(name, "the seed variable the target reads")
    if not read and not passed:
        ins.warnings.append(
            "no file reads $FARM_SEED (or any *SEED* variable): every trial runs with the same "
            "randomness. If the metric depends on a seed, read it: "
            'random_state=int(os.environ.get("FARM_SEED", 0)); if it is deterministic, '
            "see README, Using it on your own repo"
        )


# A run's time in the docs: "a fixed time budget of 5 minutes", "if a run exceeds 10 minutes".
_DURATION = re.compile(
    r"(?i)\b(\d+(?:\.\d+)?|one|two|three|four|five|six|seven|eight|nine|ten|fifteen|twenty|"
    r"thirty|sixty)[\s-]*(hours?|hrs?|minutes?|mins?|seconds?|secs?|s)\b"
)
_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
          "eight": 8, "nine": 9, "ten": 10, "fifteen": 15, "twenty": 20, "thirty": 30,
          "sixty": 60}  # fmt: skip
# What the time is: a limit a trial must stay under, or the target's own training time.
_LIMIT = re.compile(
    r"(?i)\b(exceed\w*|longer than|more than|kill\w*|time[- ]?outs?|timed out|time limit|"
    r"must finish|finish(?:es)? within|at most|no more than|hard limit)\b"
)
_TRAINS_FOR = re.compile(
    r"(?i)\b(budget|runs? for|trains? for|training for|searches for|search for|fixed time|"
    r"wall[- ]clock)\b"
)
_BUDGET_NAME = re.compile(
    r"(?i)^(\w*TIME_BUDGET\w*|\w*BUDGET_(?:S|SEC|SECS|SECONDS|MIN|MINUTES)|\w*TIME_LIMIT\w*|"
    r"MAX_(?:TRAIN(?:ING)?_)?(?:TIME|SECONDS|SECS|MINUTES)\w*|TRAIN(?:ING)?_(?:TIME|SECONDS)\w*)$"
)
_CLOCK = re.compile(r"\b(?:time\.time|perf_counter|monotonic)\(")
_TIME_NAME = re.compile(r"(?i)budget|deadline|time_limit|elapsed|training_time|train_time")


@dataclass
class Budget:
    """A time the repo documents for one run."""

    seconds: float
    limit: bool  # True: a trial must end within it; False: the target trains for it
    how: str


def documented_budget(ins: Inspection, files: list[str]) -> Budget | None:
    """The run time the docs state (a limit first, then a training time), else a time
    budget constant in `files` (the command's script and what it imports)."""
    found: dict[bool, Budget] = {}
    for doc, text in ins.docs.items():
        for block, _ in blocks(text):
            for clause in clauses(block):
                for m in _DURATION.finditer(clause):
                    number, unit = m.group(1).lower(), m.group(2).lower()
                    value = float(_WORDS.get(number, 0) or number) * (
                        3600 if unit.startswith("h") else 60 if unit.startswith("m") else 1
                    )
                    # The words just before the time say what it is ("exceeds 10 minutes",
                    # "a fixed time budget of 5 minutes"), not a heading further back.
                    for limit, words, reach in ((True, _LIMIT, 30), (False, _TRAINS_FOR, 40)):
                        near = clause[max(0, m.start() - reach) : m.start()]
                        if words.search(near) and limit not in found:
                            found[limit] = Budget(value, limit, f"{doc}: {quote(clause)}")
    if found:
        return found.get(True) or found[False]
    for py in files:
        try:
            tree = ast.parse(ins.read(py))
        except (SyntaxError, ValueError):
            continue
        for stmt in tree.body:
            if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1):
                continue
            target = stmt.targets[0]
            number = _number(stmt.value)
            if isinstance(target, ast.Name) and _BUDGET_NAME.match(target.id) and number:
                scale = (
                    3600 if "HOUR" in target.id.upper() else 60 if "MIN" in target.id.upper() else 1
                )
                return Budget(number * scale, False, f"{target.id} = {number:g} in {py}")
    return None


def _number(node: ast.expr) -> float | None:
    """A literal number or a product/sum of them (`5 * 60`)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult | ast.Add):
        left, right = _number(node.left), _number(node.right)
        if left is not None and right is not None:
            return left * right if isinstance(node.op, ast.Mult) else left + right
    return None


def wall_clock_stop(ins: Inspection, files: list[str]) -> str:
    """Where a loop in `files` stops on elapsed wall-clock time ("" when none does):
    `while time.time() - t0 < BUDGET`, `if elapsed >= TIME_BUDGET: break`."""
    for py in files:
        text = ins.read(py)
        if not _CLOCK.search(text):
            continue
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        tests = []
        for loop in ast.walk(tree):
            if isinstance(loop, ast.While):
                tests.append(loop.test)
            if isinstance(loop, ast.While | ast.For):
                tests += [
                    node.test
                    for node in ast.walk(loop)
                    if isinstance(node, ast.If)
                    and any(isinstance(n, ast.Break) for b in node.body for n in ast.walk(b))
                ]
        for test in tests:
            source = ast.get_source_segment(text, test) or ""
            if isinstance(test, ast.Compare | ast.BoolOp) and (
                _CLOCK.search(source) or _TIME_NAME.search(source)
            ):
                return f"{py}: `{' '.join(source.split())}`"
    return ""


def reached_by(ins: Inspection, command: str) -> list[str]:
    """The command's script, the editable files and what they import: the code a run runs."""
    editable = ins.found["editable"].value if "editable" in ins.found else []
    start = [_script(command) or "", *(editable if isinstance(editable, list) else [])]
    return sorted(_reach(imports(ins), [str(f) for f in start]))
