"""`farm init`: look at a repo, run its command once, and write a farm.toml that says what it
guessed and how.

What it reads, strongest evidence first:
- program*.md, the README and the files' own docstrings: which file to edit ("the only file
  you edit"), which to leave alone ("do not modify", "read-only", "fixed"), the command
  (`python train.py` in a code span or block), the metric's name and whether lower or
  higher is better;
- what imports what: every local module the command's script reaches, other than the
  editable files, is protected (an evaluator `run.py` that imports `train.py` is);
- one probe run of the command in the sandbox (a copy of the repo, the trial environment,
  a time limit): the summary lines it prints, read by the trials' own parser, give the
  metric; its duration gives the budget.
Whatever it could not check is a warning, in the terminal and as a CHECK comment in the
file; a path that does not exist is never written.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from farm.config import CONFIG_NAME, DEFAULT_ENV_ALLOW
from farm.errors import FarmError
from farm.records import Direction

PROBE_BUDGET_S = 300.0
PROBE_OUTPUT_CAP = 256 * 1024
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
# A metric's name says its direction: words of each kind, matched on the name's parts.
_MAXIMIZE = {
    "acc", "accuracy", "auc", "auroc", "f1", "score", "r2", "precision", "recall", "map",
    "ndcg", "bleu", "rouge", "reward", "return", "iou", "dice", "fitness", "top1", "top5",
    "mrr", "hits", "psnr", "ssim", "correlation", "spearman", "pearson", "profit", "winrate",
}  # fmt: skip
_MINIMIZE = {
    "loss", "error", "err", "rmse", "mse", "mae", "mape", "bpb", "bpc", "perplexity", "ppl",
    "rank", "cost", "nll", "wer", "cer", "regret", "length", "distance", "latency", "fid",
    "kl", "brier", "logloss", "gap",
}  # fmt: skip
# Parts of a name that say it is bookkeeping, not the objective.
_BOOKKEEPING = {
    "seconds", "second", "sec", "time", "elapsed", "duration", "vram", "memory", "mem", "mb",
    "gb", "mfu", "tokens", "steps", "step", "epoch", "epochs", "iter", "iters", "params",
    "num", "count", "instances", "lr", "batch", "depth", "size", "items", "seed", "total",
}  # fmt: skip
_LOWER_BETTER = re.compile(
    r"(?i)\b(lower|lowest|smaller|smallest|shorter|shortest|minimi[sz]\w*|decrease|reduce)\b"
)
_HIGHER_BETTER = re.compile(
    r"(?i)\b(higher|highest|larger|largest|greater|maximi[sz]\w*|increase|raise)\b"
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


@dataclass
class Probe:
    exit_code: int
    timed_out: bool
    duration_s: float
    output: str


Ask = Callable[[str], str]


def init_target(
    target: Path,
    *,
    probe: bool = True,
    probe_budget_s: float = PROBE_BUDGET_S,
    command: str | None = None,
    metric: str | None = None,
    direction: Direction | None = None,
    ask: Ask | None = None,
    out: TextIO | None = None,
) -> Path:
    """Inspect `target`, probe its command, write `<target>/farm.toml`; returns its path.

    `ask` (a prompt function) is used when a guess is unsure and a person is there to
    answer; without it the guess is written with a warning.
    """
    out = out or sys.stdout  # looked up now: tests and callers replace sys.stdout
    path = target / CONFIG_NAME
    if path.exists():
        raise FarmError(f"{path} exists already; edit it, or remove it to start over")
    if not target.is_dir():
        raise FarmError(f"{target} is not a directory")
    print(f"farm init: looking at {target}", file=out, flush=True)
    ins = inspect(target)
    roles(ins)
    find_command(ins, override=command)
    split_files(ins)
    find_seed_env(ins)
    run = None
    if probe:
        cmd = str(ins.found["command"].value)
        print(
            f"  running `{cmd}` once to read its output (budget {probe_budget_s:g} s)…",
            file=out,
            flush=True,
        )
        run = probe_command(ins, cmd, budget_s=probe_budget_s)
        print(f"  it exited {run.exit_code} after {run.duration_s:.1f} s", file=out, flush=True)
    choose_metric(ins, run, override=metric, ask=ask)
    choose_direction(ins, override=direction, ask=ask)
    choose_budget(ins, run)
    path.write_text(render(ins))
    print(f"wrote {path}:", file=out)
    for key in ("editable", "protected", "command", "metric", "direction", "budget_s"):
        f = ins.found[key]
        print(f"  {key:<10} {_toml(f.value):<28} {f.how}", file=out)
    for w in ins.warnings:
        print(f"  warning: {w}", file=out)
    print("check it (above all the warnings), then commit it", file=out)
    return path


# -- reading the repo --------------------------------------------------------------------


def inspect(root: Path) -> Inspection:
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


def _blocks(text: str) -> list[tuple[str, bool]]:
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


def _clauses(block: str, ends: str = ".;!?") -> list[str]:
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
            ins.votes.setdefault(path, []).append((signed, f"{source}: {_quote(text)}"))

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
        for block, item in _blocks(text):
            paths = named(block, doc)
            if item and len(paths) == 1:
                vote(paths[0], block, weight, doc)
                continue
            before: list[str] = []
            for clause in _clauses(block):
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


def _quote(unit: str) -> str:
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
    reached: set[str] = set()
    todo = [entry] if entry in graph else []
    todo += [e for e in editable if e in graph]
    while todo:
        f = todo.pop()
        if f not in reached:
            reached.add(f)
            todo += graph.get(f, set())
    fixed = {p for p, s in score.items() if s < 0}
    named = {p for p in ins.python() if p.rsplit("/", 1)[-1] in _SETUP_NAMES}
    protected = sorted((fixed | reached | named) - set(editable))
    how = []
    for why, paths in (
        ("the docs say fixed", fixed),
        ("run by the command", reached - fixed),
        ("named like data prep or evaluation", named - reached - fixed),
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


# -- the probe ---------------------------------------------------------------------------


def probe_command(ins: Inspection, command: str, *, budget_s: float) -> Probe:
    """Run `command` once in the sandbox, in a copy of the repo, as a trial would run."""
    from workers import sandbox

    words = shlex.split(command)
    exe = next((w for w in words if "=" not in w), "")
    if exe and "/" not in exe and shutil.which(exe) is None:
        raise FarmError(
            f"`{exe}` (from the command {command!r}) is not on PATH here: install it, or "
            "rerun with --command (e.g. --command 'python train.py')"
        )
    env = {k: os.environ[k] for k in DEFAULT_ENV_ALLOW if k in os.environ}
    env[str(ins.found["seed_env"].value)] = "0"
    with tempfile.TemporaryDirectory(prefix="farm-init-") as tmp:
        work = Path(tmp)
        for f in ins.files:
            (work / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ins.root / f, work / f)
        run = sandbox.run(
            command,
            cwd=work,
            env=env,
            budget_s=budget_s,
            grace_s=5.0,
            output_cap_bytes=PROBE_OUTPUT_CAP,
            network="auto",
        )
    result = Probe(run.exit_code, run.timed_out, run.duration_s, run.output_tail)
    if result.timed_out:
        raise FarmError(
            f"`{command}` did not finish within {budget_s:g} s: rerun with a larger "
            "--probe-budget, or with --no-probe and check the metric by hand"
        )
    if result.exit_code != 0:
        tail = "\n".join("    " + ln for ln in result.output.strip().splitlines()[-15:])
        raise FarmError(
            f"`{command}` exited {result.exit_code} in a copy of the repo:\n{tail}\n"
            "fix the target (or pass --command) so it runs, then rerun farm init"
        )
    return result


# -- the metric, its direction and the budget ---------------------------------------------


def _parts(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return [p for p in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if p]


def choose_metric(
    ins: Inspection, run: Probe | None, *, override: str | None, ask: Ask | None
) -> None:
    from workers.metric import near_misses, parse_metric, summary_names

    docs = "\n".join(ins.docs.values())
    if run is None:
        name = override or _metric_from_docs(docs)
        if not name:
            raise FarmError(
                "without a probe run, pass --metric NAME (the name of the summary line the "
                "command prints)"
            )
        ins.found["metric"] = Found(name, "from --metric" if override else "named in the docs",
                                    checked=False)  # fmt: skip
        ins.warnings.append(f"metric {name!r} was not checked: no probe run (--no-probe)")
        return
    names = summary_names(run.output)
    if override:
        if override not in names:
            close = near_misses(run.output, name=override)
            raise FarmError(
                f"--metric {override}: the probe printed no `{override}: <value>` line"
                + (f" (closest: {'; '.join(map(repr, close))})" if close else "")
                + "; print one, or write farm.toml by hand with a metric_regex"
            )
        ins.found["metric"] = Found(override, "from --metric, printed by the probe")
        return
    if not names:
        lines = [ln.strip() for ln in run.output.strip().splitlines() if ln.strip()][-5:]
        raise FarmError(
            "the probe printed no summary line (`name: value`, `name=value`, "
            "`[tag] name=value`); its last lines:\n"
            + "\n".join(f"    {ln[:160]!r}" for ln in lines)
            + "\nprint the metric as such a line, or rerun with --no-probe --metric NAME and "
            "set metric_regex (one capture group around the value) in farm.toml"
        )

    def score(name: str) -> float:
        parts = _parts(name)
        s = 0.0
        if _names(name, docs):
            s += 4
        if set(parts) & (_MAXIMIZE | _MINIMIZE):
            s += 2
        if set(parts) & _BOOKKEEPING:
            s -= 3
        if parts and parts[0] in ("val", "valid", "validation", "test", "eval"):
            s += 1
        return s

    ranked = sorted(names, key=lambda n: (-score(n), names.index(n)))
    best = ranked[0]
    value = parse_metric(run.output, name=best)
    how = f"printed by the probe: {value:.6g}" if value is not None else "printed by the probe"
    if len(ranked) > 1 and score(ranked[1]) == score(best):
        others = ", ".join(ranked[1:4])
        question = f"the probe printed {', '.join(ranked)}: which is the metric? [{best}] "
        answer = ask(question).strip() if ask else ""
        if answer in names:
            ins.found["metric"] = Found(answer, "your answer")
            return
        ins.found["metric"] = Found(best, how, checked=False)
        ins.warnings.append(
            f"metric {best!r} is a guess among equally likely lines ({others}); pass --metric"
        )
        return
    ins.found["metric"] = Found(best, how)


def _names(name: str, text: str) -> bool:
    """`text` mentions `name` as a word (`val_loss`, not `val_loss_ema`)."""
    return re.search(rf"(?<![\w.]){re.escape(name)}(?![\w.])", text) is not None


def _metric_from_docs(docs: str) -> str:
    for m in re.finditer(r"`([A-Za-z_][\w./-]*)\s*[:=]\s*<?value>?`", docs):
        return m.group(1)
    return ""


def choose_direction(ins: Inspection, *, override: Direction | None, ask: Ask | None) -> None:
    name = str(ins.found["metric"].value)
    if override is not None:
        ins.found["direction"] = Found(override.value, "from --direction")
        return
    parts = set(_parts(name))
    by_name = None
    if parts & _MAXIMIZE and not parts & _MINIMIZE:
        by_name = Direction.MAXIMIZE
    elif parts & _MINIMIZE and not parts & _MAXIMIZE:
        by_name = Direction.MINIMIZE
    by_docs, quote = None, ""
    units = [
        c
        for text in ins.docs.values()
        for b, _ in _blocks(text)
        for c in _clauses(b, ".!?")
        if _names(name, c)
    ]
    for unit in units:
        lower, higher = _LOWER_BETTER.search(unit), _HIGHER_BETTER.search(unit)
        if bool(lower) != bool(higher):  # a statement that says one thing
            by_docs = Direction.MINIMIZE if lower else Direction.MAXIMIZE
            quote = _quote(unit)
            break
    if by_docs and by_name and by_docs is not by_name:
        ins.warnings.append(
            f"the docs say {by_docs.value} ({quote}) but the name {name!r} suggests "
            f"{by_name.value}: wrote {by_docs.value}; check it"
        )
    if by_docs:
        ins.found["direction"] = Found(by_docs.value, f"the docs: {quote}")
        return
    if by_name:
        ins.found["direction"] = Found(by_name.value, f"the name {name!r}")
        return
    answer = ask(f"is a higher {name} better? [y/N] ").strip().lower() if ask else ""
    if answer:
        chosen = Direction.MAXIMIZE if answer.startswith("y") else Direction.MINIMIZE
        ins.found["direction"] = Found(chosen.value, "your answer")
        return
    ins.found["direction"] = Found(Direction.MINIMIZE.value, "a guess", checked=False)
    ins.warnings.append(
        f"nothing says whether a lower or higher {name} is better: wrote minimize; "
        "pass --direction maximize if higher is better"
    )


def choose_budget(ins: Inspection, run: Probe | None) -> None:
    if run is None:
        ins.found["budget_s"] = Found(300, "the default", checked=False)
        ins.warnings.append("budget_s = 300 is the default: no probe run timed the command")
        return
    # Twice the probe plus slack, in tens of seconds: trials on a busy node run slower.
    budget = max(60, math.ceil((2 * run.duration_s + 30) / 10) * 10)
    ins.found["budget_s"] = Found(budget, f"the probe ran {run.duration_s:.1f} s")


# -- writing -------------------------------------------------------------------------------


def _toml(value: object) -> str:
    if isinstance(value, str | list):
        return json.dumps(value, ensure_ascii=False)  # a JSON string or array is valid TOML
    return str(value)


def render(ins: Inspection) -> str:
    f = ins.found

    def line(key: str, comment: str) -> str:
        text = f"{key} = {_toml(f[key].value)}"
        mark = "" if f[key].checked else "CHECK: "
        return (
            f"{text:<40} # {mark}{comment} ({f[key].how})"
            if f[key].how
            else f"{text:<40} # {comment}"
        )

    head = ["# farm target spec, written by `farm init`. Only editable, command and metric are"]
    head.append('# required; see README, "Using it on your own repo".')
    head += [f"# CHECK: {w}" for w in ins.warnings]
    body = [
        line("editable", "files proposals may change"),
        line("protected", "byte-identical at run time"),
        line("command", "runs one trial in a fresh checkout"),
        line("metric", "the summary line trials read"),
        line("direction", "minimize or maximize"),
        line("budget_s", "hard wall-clock limit per trial"),
    ]
    if ins.program:
        body.append(f"{'program = ' + _toml(ins.program):<40} # instructions for the proposer")
    seed = f["seed_env"]
    body.append(
        f"{'seed_env = ' + _toml(seed.value):<40} # the trial's seed reaches the command here"
        + ("" if seed.how else " (CHECK: nothing reads it yet)")
    )
    return "\n".join([*head, *body]) + "\n" + _SECTIONS


_SECTIONS = """
# metric_regex = 'loss (\\S+) at end'  # instead of a summary line: one capture group

[merge]
repeats = 12     # baseline runs that estimate seed noise σ
confirm = 3      # re-runs a candidate needs before it is kept
min_delta = 0.0  # smallest improvement worth keeping, in metric units
z = 1.5          # keep only improvements beyond z standard errors
screen_z = 0.0   # a screening run earns its confirmations beyond screen_z·σ

[resources]
cpus_per_trial = 1
gpus_per_trial = 0  # 1 on a GPU cluster
# accelerator_type = "A100"            # Ray accelerator type
# labels = { gpu-model = "rtx4090" }  # Ray node labels (ray start --labels)

[proposer]
kind = "mutate"  # mutate | replay | optuna | anthropic
batch_size = 4
backlog = 4        # `farm simulate` tells which batch_size and backlog keep N slots busy
schedule = "backlog"  # or "rounds": wait for each batch to be decided (to compare against)
"""
