"""One trial on a worker node: materialise, check protected files, run sandboxed, measure.

A failure of the candidate is an outcome (crashed, timeout, no_metric, invalid_metric,
tampered), never a score and never an exception. Exceptions are left for what is not the
candidate's fault: a bad spec (SpecError), git (GitError) or the node (SandboxError).

A pre-flight (`spec.preflight`) runs the command for a few seconds only, to catch a candidate
that crashes, goes NaN or prints no metric before it takes a full budget: a run still going
at its budget has passed, and a pre-flight never reports a metric nor runs `evaluate`.

With `evaluate` set, the training command's output is only a log: the metric is read from
the protected evaluation command, run afterwards in a fresh sandbox on a fresh checkout of
the commit, read-only, holding nothing of what training wrote but the declared artifacts
(`spec.artifacts`), each checked not to be code (workers/artifacts.py).
"""

from __future__ import annotations

import filecmp
import math
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from farm.records import Outcome, TrialResult, TrialSpec
from workers import metric, sandbox
from workers.artifacts import CODE_SUFFIXES, declared, serialised_code
from workers.isolation import Policy, View, resolve, runtime_paths
from workers.materialize import (
    cache_repo_path,
    checkout,
    hash_files,
    protected_digest,
)

NVIDIA_SMI_TIMEOUT_S = 30.0
EVALUATE_RULE = "\n--- evaluate ---\n"


def run_trial(spec: TrialSpec, bundle: bytes, *, cache_dir: Path | None = None) -> TrialResult:
    """Run `spec` on `bundle`'s base commit and report how it went."""
    started_at = time.time()
    hardware = detect_hardware()
    policy = resolve(spec.isolation, spec.network)
    protected = sorted(spec.protected_hashes)
    with checkout(spec.base_sha, bundle, spec.files, spec.repo_key, cache_dir) as tree:
        # Checked after the candidate's files are written: a candidate may not edit them either.
        before = hash_files(tree, protected)
        if before != spec.protected_hashes:
            note = _tamper_note("differ from the spec before the run", before, spec)
            result = TrialResult(trial_id=spec.trial_id, outcome=Outcome.TAMPERED, output_tail=note)
        else:
            trial = _Trial(spec, tree, policy, cache_dir)
            result = trial.run(protected, before)
    result.hardware = hardware
    result.isolation = policy.isolation.value
    result.node = socket.gethostname()
    result.protected_hash = protected_digest(before)
    result.started_at = started_at
    result.finished_at = time.time()
    return result


class _Trial:
    """The commands of one trial in its checkout `tree`."""

    def __init__(self, spec: TrialSpec, tree: Path, policy: Policy, cache_dir: Path | None) -> None:
        self.spec, self.tree, self.policy, self.cache_dir = spec, tree, policy, cache_dir
        self.env = sandbox.build_env(spec)
        self.deny = [
            *spec.deny_paths,
            str(tree.parent),
            str(cache_repo_path(spec.repo_key, cache_dir)),
        ]
        self.committed = _listing(tree)

    def run(self, protected: list[str], before: dict[str, str]) -> TrialResult:
        spec = self.spec
        run = self._sandboxed(spec.command, self.tree, budget_s=spec.budget_s, writable=True)
        if spec.preflight:
            result = _preflight(spec, run)
        else:
            result = _classify(spec, run, measures=not spec.evaluate)
        after = hash_files(self.tree, protected)
        if after != before:
            result.outcome, result.metric = Outcome.TAMPERED, None
            result.output_tail += _tamper_note("changed during the run", after, spec)
        elif spec.evaluate and result.outcome is Outcome.OK and not spec.preflight:
            result = self._evaluate(result)
        return result

    def _evaluate(self, trained: TrialResult) -> TrialResult:
        """The metric, measured by the protected `evaluate` command on a fresh checkout of the
        commit plus the declared artifacts training left."""
        spec = self.spec
        left = sorted(_listing(self.tree) - self.committed)
        planted = [p for p in left if p.endswith(CODE_SUFFIXES) and "__pycache__" not in p]
        if planted:
            return _tampered(
                trained, f"the run left code beside the evaluator: {', '.join(planted[:10])}"
            )
        with checkout(spec.base_sha, b"", spec.files, spec.repo_key, self.cache_dir) as fresh:
            carried, problem = self._carry_artifacts(fresh)
            if problem:
                return _tampered(trained, problem)
            dropped = [p for p in left if p not in carried and "__pycache__" not in p]
            if dropped:
                names = ", ".join(dropped[:10])
                trained.output_tail += (
                    f"\nfarm: not handed to evaluate (not in `artifacts`): {names}\n"
                )
            budget = spec.evaluate_budget_s or spec.budget_s
            run = self._sandboxed(spec.evaluate, fresh, budget_s=budget, writable=False)
        measured = _classify(spec, run, measures=True)
        half = spec.output_cap_bytes // 2
        measured.output_tail = trained.output_tail[-half:] + EVALUATE_RULE + measured.output_tail
        measured.summary = {
            **{k: v for k, v in trained.summary.items() if k != spec.metric},
            **measured.summary,
        }
        measured.duration_s += trained.duration_s
        measured.peak_memory_mb = max(measured.peak_memory_mb, trained.peak_memory_mb)
        measured.process_started_at = trained.process_started_at
        return measured

    def _carry_artifacts(self, fresh: Path) -> tuple[list[str], str]:
        """Move the declared artifacts training left into `fresh`: (their paths, "") or
        ([], why the trial is tampered). Protected and editable files are never artifacts:
        they stay as committed."""
        spec = self.spec
        fixed = set(spec.protected_hashes) | set(spec.files)
        found = [
            p
            for p in sorted(_listing(self.tree))
            if declared(p, spec.artifacts)
            and p not in fixed
            and "__pycache__" not in p
            and not _same_file(self.tree / p, fresh / p)  # as committed: nothing to hand over
        ]
        for path in found:
            source = self.tree / path
            if source.is_symlink() or not source.is_file():
                return [], f"artifact {path} is not a regular file"
            why = "" if spec.artifacts_safe_load else serialised_code(source)
            if why:
                return [], (
                    f"artifact {path} is serialised code: {why} (save weights with "
                    "safetensors or a plain state dict, or set artifacts_safe_load = true if "
                    "the evaluator loads it safely: docs/security.md)"
                )
        root = fresh.resolve()
        for path in found:
            target = fresh / path
            target.parent.mkdir(parents=True, exist_ok=True)
            # A committed symlinked directory must not carry an artifact out of the checkout.
            if not target.parent.resolve().is_relative_to(root) or target.is_symlink():
                return [], f"artifact {path} would land outside the checkout (through a symlink)"
            os.replace(self.tree / path, target)
        return found, ""

    def _sandboxed(
        self, command: str, tree: Path, *, budget_s: float, writable: bool
    ) -> sandbox.RunResult:
        runtime = runtime_paths(self.env, command, extra=self.spec.read_only_paths, deny=self.deny)
        view = View(
            workdir=tree,
            runtime=runtime,
            writable=writable,
            protect=tuple(self.spec.protected_hashes) if writable else (),
            tmp_size_mb=self.spec.memory_mb,
            # No CUDA_VISIBLE_DEVICES at all: nothing assigns GPUs here, so all are usable.
            gpus=self.env.get("CUDA_VISIBLE_DEVICES", "unset").strip() != "",
        )
        return sandbox.run(
            command,
            cwd=tree,
            env=self.env,
            budget_s=budget_s,
            grace_s=self.spec.grace_s,
            output_cap_bytes=self.spec.output_cap_bytes,
            policy=self.policy,
            view=view,
            memory_mb=self.spec.memory_mb,
            cpus=self.spec.cpus,
        )


def _tampered(result: TrialResult, problem: str) -> TrialResult:
    result.outcome, result.metric = Outcome.TAMPERED, None
    result.output_tail += f"\nfarm: {problem}\n"
    return result


def _ran(spec: TrialSpec, run: sandbox.RunResult) -> TrialResult:
    """An ok result carrying what the run itself says (exit, timings, output, memory)."""
    return TrialResult(
        trial_id=spec.trial_id,
        outcome=Outcome.OK,
        exit_code=run.exit_code,
        duration_s=run.duration_s,
        output_tail=run.output_tail,
        process_started_at=run.started_at,
        process_ended_at=run.ended_at,
        peak_memory_mb=run.peak_memory_mb,
    )


def _classify(spec: TrialSpec, run: sandbox.RunResult, *, measures: bool) -> TrialResult:
    """The outcome of one command; with `measures`, its metric too."""
    result = _ran(spec, run)
    if run.memory_exceeded or run.limits_hit:
        result.outcome = Outcome.CRASHED  # the reason is in the output tail
        return result
    if run.timed_out:
        # A killed run reports no numbers, even if it printed its metric before the budget.
        result.outcome = Outcome.TIMEOUT
        return result
    result.summary = metric.parse_summary(run.output_tail)
    if run.exit_code != 0:
        result.outcome = Outcome.CRASHED
        return result
    if not measures:
        return result
    value = metric.parse_metric(run.output_tail, name=spec.metric, regex=spec.metric_regex)
    if value is None:
        result.outcome = Outcome.NO_METRIC
    elif not math.isfinite(value):
        result.outcome = Outcome.INVALID_METRIC
    elif spec.bounds and not spec.bounds[0] <= value <= spec.bounds[1]:
        result.outcome = Outcome.INVALID_METRIC
        result.output_tail += (
            f"\nfarm: {spec.metric} = {value:g} is outside bounds "
            f"[{spec.bounds[0]:g}, {spec.bounds[1]:g}] (farm.toml)\n"
        )
    else:
        result.metric = value
    return result


def _preflight(spec: TrialSpec, run: sandbox.RunResult) -> TrialResult:
    """A pre-flight's outcome. Still running at its budget: passed (stopped, not a timeout).
    Ended within it: the outcome a full trial would get (crashed, no_metric, ...). Either
    way a NaN in any `name: value` line, or a non-finite metric, fails it. Never a metric:
    a short run is biased, so nothing judges it."""
    if run.timed_out:
        result = _ran(spec, run)
        result.summary = metric.parse_summary(run.output_tail)
        so_far = metric.parse_metric(run.output_tail, name=spec.metric, regex=spec.metric_regex)
        if so_far is not None and not math.isfinite(so_far):
            result.outcome = Outcome.INVALID_METRIC
    else:
        result = _classify(spec, run, measures=not spec.evaluate)
    nans = metric.nan_lines(run.output_tail)
    if result.outcome is Outcome.OK and nans:
        result.outcome = Outcome.INVALID_METRIC
        result.output_tail += f"\nfarm: the pre-flight printed a NaN: {nans[0][:200]}\n"
    elif result.outcome is Outcome.OK and run.timed_out:
        result.output_tail += (
            f"\nfarm: pre-flight passed: still running at {spec.budget_s:g} s, stopped\n"
        )
    result.metric = None
    return result


def _listing(tree: Path) -> set[str]:
    """Every file and symlink under `tree`, relative, without following symlinks."""
    found = set()
    for root, dirs, files in os.walk(tree):
        rel = Path(root).relative_to(tree)
        found |= {str(rel / name) for name in files}
        found |= {str(rel / name) for name in dirs if (Path(root) / name).is_symlink()}
    return {p.removeprefix("./") for p in found}


def _same_file(a: Path, b: Path) -> bool:
    plain = not a.is_symlink() and not b.is_symlink() and a.is_file() and b.is_file()
    return plain and filecmp.cmp(a, b, shallow=False)


def _tamper_note(what: str, seen: dict[str, str], spec: TrialSpec) -> str:
    paths = ", ".join(p for p in sorted(seen) if seen[p] != spec.protected_hashes[p])
    return f"\nfarm: protected files {what}: {paths}\n"


def detect_hardware() -> str:
    """The GPU model(s) of this task's CUDA_VISIBLE_DEVICES, or "cpu" when it has none.

    Trials on different hardware are never compared, so a GPU that cannot be named is
    "unknown-gpu", never "cpu".
    """
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    smi = shutil.which("nvidia-smi")
    if not devices or smi is None:
        return "cpu"
    try:
        proc = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader", "-i", devices],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown-gpu"
    names = sorted({line.strip() for line in proc.stdout.splitlines() if line.strip()})
    if proc.returncode != 0 or not names:
        return "unknown-gpu"
    return "+".join(names)
