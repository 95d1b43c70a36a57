"""`farm init`: look at a repo, run its command once, and write a farm.toml that says what it
guessed and how.

farm/survey.py reads what the repo says about itself (docs, docstrings, imports): the
editable and protected files and the commands it shows. The candidates run in the sandbox
(a copy of the repo, the trial environment, a time limit), likeliest first, until one
prints a summary line, read by the trials' own parser: the command and its metric. The
metric's name and the docs ("lower is better") give the direction; the docs, a time budget
constant or the run's duration the budget. Whatever could not be checked
is a warning, in the terminal and as a CHECK comment in the file; a path that does not
exist is never written.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from farm.config import CONFIG_NAME, DEFAULT_ENV_ALLOW, init_template
from farm.errors import FarmError
from farm.records import Direction
from farm.survey import (
    MAX_PROBES,
    Candidate,
    Found,
    Inspection,
    blocks,
    clauses,
    documented_budget,
    environment,
    find_commands,
    find_seed_env,
    quote,
    reached_by,
    roles,
    seed_variables,
    split_files,
    survey,
    wall_clock_stop,
    wire_seed,
)
from workers import sandbox
from workers.isolation import resolve
from workers.metric import near_misses, parse_metric, summary_names
from workers.sandbox import RunResult

PROBE_BUDGET_S = 300.0
PROBE_OUTPUT_CAP = 256 * 1024
ARTIFACTS_SHOWN = 8  # files the probe left, proposed as `artifacts` (a commented line)
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
# A statement that names the objective.
_KEY_METRIC = re.compile(
    r"(?i)\b(?:(?:key|primary|main|target|headline|only|north[- ]star)\s+metric|the metric\b|"
    r"metric (?:is|to)\b|objective|goal)"
)
_LOWER_BETTER = re.compile(
    r"(?i)\b(lower|lowest|smaller|smallest|shorter|shortest|minimi[sz]\w*|decrease|reduce)\b"
)
_HIGHER_BETTER = re.compile(
    r"(?i)\b(higher|highest|larger|largest|greater|maximi[sz]\w*|increase|raise)\b"
)


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
    ins = survey(target)
    roles(ins)
    find_commands(ins, override=command)
    run = choose_command(ins, probe=probe, budget_s=probe_budget_s, out=out)
    split_files(ins)
    find_seed_env(ins)
    choose_metric(ins, run, override=metric, ask=ask)
    choose_direction(ins, override=direction, ask=ask)
    choose_budget(ins, run)
    warn_wall_clock(ins)
    choose_frozen(ins)
    path.write_text(render(ins))
    print(f"wrote {path}:", file=out)
    for key in ("editable", "protected", "command", "metric", "direction", "budget_s", "frozen"):
        if key not in ins.found:
            continue
        f = ins.found[key]
        print(f"  {key:<10} {_toml(f.value):<28} {f.how}", file=out)
    for w in ins.warnings:
        print(f"  warning: {w}", file=out)
    print(
        f"note: {ins.found['metric'].value} comes from code a candidate can edit; set "
        "`evaluate` to measure it with a protected command (docs/security.md)",
        file=out,
    )
    print("check it (above all the warnings), then commit it", file=out)
    return path


# -- the probe ---------------------------------------------------------------------------


def choose_command(
    ins: Inspection, *, probe: bool, budget_s: float, out: TextIO
) -> RunResult | None:
    """Run the candidates, likeliest first, and take the first that prints a summary line
    (without a probe: the likeliest). At most MAX_PROBES run, all within `budget_s`."""
    for c in ins.candidates:
        if c.dropped:
            print(f"  left out `{c.written}` ({c.source}): {c.dropped}", file=out, flush=True)
    live = [c for c in ins.candidates if not c.dropped]
    if not probe:
        _take(ins, live[0])
        return None
    failed: list[tuple[Candidate, str]] = []
    left = budget_s
    for c in live[:MAX_PROBES]:
        command, _ = wire_seed(ins, c.command)
        print(
            f"  running `{command}` once to read its output (budget {left:.0f} s)…",
            file=out,
            flush=True,
        )
        run = probe_command(ins, command, budget_s=left)
        print(f"  it exited {run.exit_code} after {run.duration_s:.1f} s", file=out, flush=True)
        left -= run.duration_s
        c.dropped, why = _no_trial(ins, c, command, run, left + run.duration_s)
        if not c.dropped:
            _take(ins, c)
            return run
        failed.append((c, why))
        print(f"  not the command: {c.dropped}", file=out, flush=True)
        if run.timed_out or left < 1:
            break
    untried = [c for c in live if c not in [f for f, _ in failed]]
    if len(failed) == 1 and not untried:
        raise FarmError(failed[0][1])
    raise FarmError(
        "no command the repo shows printed a metric:\n"
        + "\n".join(f"  `{c.written}` ({c.source}): {why}" for c, why in failed)
        + "".join(f"\n  `{c.written}` ({c.source}): not run" for c in untried)
        + "\nrerun with --command 'python <script that trains and prints the metric>'"
    )


def _take(ins: Inspection, c: Candidate) -> None:
    """`c` is the command: with its seed wired, and a word on what was left out."""
    command, seeded = wire_seed(ins, c.command)
    if seeded:
        ins.found["seed_env"] = Found("FARM_SEED", seeded)
    how = "a guess" if not c.checked else f"from {c.source}"
    if c.written and c.written != command:
        how += f" (`{c.written}` there)"
    others = [o for o in ins.candidates if o.dropped and o is not c]
    if others:
        how += "; left out: " + "; ".join(f"`{o.written}`: {o.dropped}" for o in others)
    ins.found["command"] = Found(command, how, checked=c.checked)
    if not c.checked:
        ins.warnings.append(
            f"no `python <script>` line in {', '.join(ins.docs) or 'any doc'}: command "
            f'"{command}" is a guess; pass --command if it is wrong'
        )
    if c.manager:
        ins.warnings.append(
            f"{c.source} runs it through {c.manager} (`{c.written}`); farm runs `{command}` with "
            "the python on PATH, so activate the project's environment before `farm run`: "
            + environment(ins, c.written)
        )


def _no_trial(
    ins: Inspection, c: Candidate, command: str, run: RunResult, budget_s: float
) -> tuple[str, str]:
    """Why this probe run shows `command` is no trial, in a few words and in full with
    what to do: ("", "") when it printed a summary line."""
    if run.timed_out:
        return f"did not finish within {budget_s:.0f} s", (
            f"`{command}` did not finish within {budget_s:.0f} s: rerun with a larger "
            "--probe-budget, or with --no-probe and check the metric by hand"
        )
    if run.exit_code != 0:
        missing = re.search(r"No module named '([\w.]+)'", run.output_tail)
        if missing:
            module = missing.group(1).split(".")[0]
            env = environment(ins, c.written)
            return f"exited {run.exit_code}: no module named {module!r}", (
                f"`{command}` exited {run.exit_code}: no module named {module!r} in the "
                f"python on PATH ({shutil.which('python') or 'none'}).\n"
                + (
                    f"Activate the project's environment, {env}, and rerun farm init"
                    if env
                    else "Activate the environment the project runs in (or install its "
                    "packages), and rerun farm init"
                )
            )
        return f"exited {run.exit_code}", (
            f"`{command}` exited {run.exit_code} in a copy of the repo:\n"
            f"{_tail(run.output_tail, 15)}\n"
            "fix the target (or pass --command) so it runs, then rerun farm init"
        )
    if not summary_names(run.output_tail):
        return "printed no summary line", (
            "the probe printed no summary line (`name: value`, `name=value`, "
            f"`[tag] name=value`); its last lines:\n{_tail(run.output_tail, 5)}"
            "\nprint the metric as such a line, or rerun with --no-probe --metric NAME and "
            "set metric_regex (one capture group around the value) in farm.toml"
        )
    return "", ""


def probe_command(ins: Inspection, command: str, *, budget_s: float) -> RunResult:
    """Run `command` once in the sandbox, in a copy of the repo, as a trial would run."""
    words = shlex.split(command)
    exe = next((w for w in words if "=" not in w), "")
    if exe and "/" not in exe and shutil.which(exe) is None:
        declared = environment(ins)
        raise FarmError(
            f"`{exe}` (from the command {command!r}) is not on PATH here: install it, "
            + (f"activate the project's environment ({declared}), " if declared else "")
            + "or rerun with --command (e.g. --command 'python train.py')"
        )
    env = {k: os.environ[k] for k in DEFAULT_ENV_ALLOW if k in os.environ}
    env.update(dict.fromkeys(["FARM_SEED", *seed_variables(ins)], "0"))
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
            policy=resolve("auto", "auto"),
        )
        left = sorted(
            str(p.relative_to(work))
            for p in work.rglob("*")
            if p.is_file()
            and str(p.relative_to(work)) not in ins.files
            and "__pycache__" not in p.parts
        )
    if left:  # what an `evaluate` step would read: only what `artifacts` declares reaches it
        ins.found["artifacts"] = Found(left[:ARTIFACTS_SHOWN], "what the probe run left")
    else:
        ins.found.pop("artifacts", None)
    return run


def _tail(output: str, n: int) -> str:
    """The last `n` non-empty lines, quoted (escape sequences shown, never sent to the
    terminal) and cut to 160 characters, one per indented line."""
    lines = [ln.strip() for ln in output.replace("\r", "\n").splitlines() if ln.strip()]
    return "\n".join(f"    {ln[:160]!r}" for ln in lines[-n:])


# -- the metric, its direction and the budget ---------------------------------------------


def _parts(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return [p for p in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if p]


def choose_metric(
    ins: Inspection, run: RunResult | None, *, override: str | None, ask: Ask | None
) -> None:
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
    names = summary_names(run.output_tail)
    if override:
        if override not in names:
            close = near_misses(run.output_tail, name=override)
            raise FarmError(
                f"--metric {override}: the probe printed no `{override}: <value>` line"
                + (f" (closest: {'; '.join(map(repr, close))})" if close else "")
                + "; print one, or write farm.toml by hand with a metric_regex"
            )
        ins.found["metric"] = Found(override, "from --metric, printed by the probe")
        return
    if not names:
        raise FarmError(
            "the probe printed no summary line (`name: value`, `name=value`, "
            f"`[tag] name=value`); its last lines:\n{_tail(run.output_tail, 5)}"
            "\nprint the metric as such a line, or rerun with --no-probe --metric NAME and "
            "set metric_regex (one capture group around the value) in farm.toml"
        )

    key = _key_metrics(ins, names)

    def score(name: str) -> float:
        parts = _parts(name)
        s = 0.0
        if name in key:
            s += 8
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
    value = parse_metric(run.output_tail, name=best)
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
    ins.found["metric"] = Found(best, how if best not in key else f"{how}; {key[best]}")


def _key_metrics(ins: Inspection, names: list[str]) -> dict[str, str]:
    """The printed names a doc calls the metric ("The key metric is `win_rate`", "get the
    lowest `val_loss`"), each with the statement saying so."""
    key: dict[str, str] = {}
    for doc, text in ins.docs.items():
        for block, _ in blocks(text):
            for clause in clauses(block):
                if _KEY_METRIC.search(clause):
                    for name in names:
                        if _names(name, clause) and name not in key:
                            key[name] = f"{doc}: {quote(clause)}"
    return key


def _names(name: str, text: str) -> bool:
    """`text` mentions `name` as a word (`val_loss`, "lowest val_loss.", not `val_loss_ema`
    nor `val_loss.py`)."""
    return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w|\.\w)", text) is not None


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
    by_docs, said = None, ""
    units = [
        c
        for text in ins.docs.values()
        for b, _ in blocks(text)
        for c in clauses(b, ".!?")
        if _names(name, c)
    ]
    for unit in units:
        lower, higher = _LOWER_BETTER.search(unit), _HIGHER_BETTER.search(unit)
        if bool(lower) != bool(higher):  # a statement that says one thing
            by_docs = Direction.MINIMIZE if lower else Direction.MAXIMIZE
            said = quote(unit)
            break
    if by_docs and by_name and by_docs is not by_name:
        ins.warnings.append(
            f"the docs say {by_docs.value} ({said}) but the name {name!r} suggests "
            f"{by_name.value}: wrote {by_docs.value}; check it"
        )
    if by_docs:
        ins.found["direction"] = Found(by_docs.value, f"the docs: {said}")
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


def choose_budget(ins: Inspection, run: RunResult | None) -> None:
    """A limit the docs state (unless the probe ran longer); else the training time the
    repo documents (its docs or a TIME_BUDGET-style constant) with room for start-up and
    evaluation; else the probe's time, doubled with slack (trials on a busy node run
    slower); else the default."""
    command = str(ins.found["command"].value)
    said = documented_budget(ins, reached_by(ins, command))
    probed = 0
    if run is not None:
        probed = _tens(max(60.0, 2 * run.duration_s + 30))
    if said and said.limit and run is not None and run.duration_s > said.seconds:
        # The docs' limit would time out the very run the probe made: trust the machine.
        budget, how = probed, f"the probe ran {run.duration_s:.1f} s"
        ins.warnings.append(
            f"the docs limit a run to {said.seconds:g} s ({said.how}), but the probe ran "
            f"{run.duration_s:.0f} s: wrote budget_s = {budget}; lower it once runs are "
            "that fast here"
        )
    elif said and said.limit:
        budget, how = math.ceil(said.seconds), f"the limit in {said.how}"
    elif said:
        # A quarter more and 30 s: start-up, the evaluation after training, a busy node.
        budget = max(_tens(said.seconds * 1.25 + 30), probed)
        how = f"{said.seconds:g} s of training ({said.how}), a quarter and 30 s more"
        if budget == probed and run is not None:
            how = f"the probe ran {run.duration_s:.1f} s; {said.how}"
    elif run is not None:
        budget, how = probed, f"the probe ran {run.duration_s:.1f} s"
    else:
        ins.found["budget_s"] = Found(300, "the default", checked=False)
        ins.warnings.append("budget_s = 300 is the default: no probe run timed the command")
        return
    ins.found["budget_s"] = Found(budget, how)


def _tens(seconds: float) -> int:
    return math.ceil(seconds / 10) * 10


def warn_wall_clock(ins: Inspection) -> None:
    """A target that trains until a wall-clock time is up does less work on a busy node:
    its metric moves with the machine's load, not only with the code."""
    where = wall_clock_stop(ins, reached_by(ins, str(ins.found["command"].value)))
    if where:
        ins.warnings.append(
            f"it stops on wall-clock time ({where}): its metric depends on the machine's load "
            "(a busy node runs fewer steps in the same time); compare candidates on equally "
            "loaded nodes (fewer `slots`), or count steps instead of seconds"
        )


def choose_frozen(ins: Inspection) -> None:
    """Propose freezing what looks like the evaluation protocol in the editable files:
    settings named for validation, splits, folds, test size, purge or embargo (a change to
    them changes what is measured, not the model), and the calls that split the data."""
    names: list[str] = []
    for path in [p for p in _value_list(ins, "editable") if p.endswith(".py")]:
        names += [n for n in protocol_names(ins.read(path)) if n not in names]
    if names:
        ins.found["frozen"] = Found(
            names,
            "they look like the evaluation protocol (validation, split, folds, test size, "
            "purge, embargo): a draft that changes one is rejected",
        )


def _value_list(ins: Inspection, key: str) -> list[str]:
    value = ins.found[key].value if key in ins.found else []
    return [str(v) for v in value] if isinstance(value, list) else []


def protocol_names(text: str) -> list[str]:
    """The names in Python source `text` that look like evaluation protocol, in source
    order: a class named so (all of it), a literal constant, class field or config entry
    named so, and a call that splits data (its every argument: the split's seed too)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    found: list[str] = []

    def add(name: str) -> None:
        if name not in found and not any(name.startswith(f + ".") for f in found):
            found.append(name)

    def literal(node: ast.AST | None) -> bool:
        try:
            ast.literal_eval(node) if node is not None else None
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return False
        return node is not None

    def settings(body: list[ast.stmt], owner: str) -> None:
        for stmt in body:
            if isinstance(stmt, ast.ClassDef):
                if _protocol_word(stmt.name):
                    add(f"{owner}{stmt.name}")
                else:
                    settings(stmt.body, f"{owner}{stmt.name}.")
            elif isinstance(stmt, ast.Assign | ast.AnnAssign):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                for t in targets:
                    if not isinstance(t, ast.Name):
                        continue
                    if isinstance(stmt.value, ast.Dict):
                        keys = [k.value for k in stmt.value.keys if isinstance(k, ast.Constant)]
                        for key in keys:
                            if isinstance(key, str) and _protocol_word(key):
                                add(f"{owner}{t.id}.{key}")
                    if _protocol_word(t.id) and literal(stmt.value):
                        add(f"{owner}{t.id}")

    settings(tree.body, "")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            callee = (
                f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            )
            if re.search(r"(?i)split|fold|holdout", callee) and (node.args or node.keywords):
                add(callee)
    return found


_PROTOCOL = re.compile(
    r"val|valid|validation|split|splits|fold|folds|kfold|cv|holdout|test|purge|embargo|eval"
    r"|evaluation"
)


def _protocol_word(name: str) -> bool:
    """Whether a part of `name` (snake_case or CamelCase) is an evaluation-protocol word."""
    parts = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name)
    return any(_PROTOCOL.fullmatch(part.lower()) for part in parts)


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
    if "frozen" in f:
        body.append(line("frozen", "evaluation protocol in the editable files"))
    if "artifacts" in f:
        body.append(
            "# " + line("artifacts", "with `evaluate` set, declare what it reads: nothing else")
        )
    if ins.program:
        body.append(f"{'program = ' + _toml(ins.program):<40} # instructions for the proposer")
    seed = f["seed_env"]
    body.append(
        f"{'seed_env = ' + _toml(seed.value):<40} # the trial's seed reaches the command here"
        + ("" if seed.how else " (CHECK: nothing reads it yet)")
    )
    return "\n".join([*head, *body]) + "\n\n" + init_template()
