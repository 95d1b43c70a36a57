"""One trial on a worker node: materialise, check protected files, run sandboxed, classify.

A failure of the candidate is an outcome (crashed, timeout, no_metric, invalid_metric,
tampered), never a score and never an exception. Exceptions are left for what is not the
candidate's fault: a bad spec (SpecError), git (GitError) or the node (SandboxError).
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from farm.records import Outcome, TrialResult, TrialSpec
from workers import metric, sandbox
from workers.materialize import checkout, hash_files, protected_digest

NVIDIA_SMI_TIMEOUT_S = 30.0


def run_trial(spec: TrialSpec, bundle: bytes, *, cache_dir: Path | None = None) -> TrialResult:
    """Run `spec` on `bundle`'s base commit and report how it went."""
    started_at = time.time()
    hardware = detect_hardware()
    protected = sorted(spec.protected_hashes)
    with checkout(spec.base_sha, bundle, spec.files, spec.repo_key, cache_dir) as worktree:
        # Checked after the candidate's files are written: a candidate may not edit them either.
        before = hash_files(worktree, protected)
        if before != spec.protected_hashes:
            note = _tamper_note("differ from the spec before the run", before, spec)
            result = TrialResult(trial_id=spec.trial_id, outcome=Outcome.TAMPERED, output_tail=note)
        else:
            run = sandbox.run(
                spec.command,
                cwd=worktree,
                env=sandbox.build_env(spec),
                budget_s=spec.budget_s,
                grace_s=spec.grace_s,
                output_cap_bytes=spec.output_cap_bytes,
                network=spec.network,
                memory_mb=spec.memory_mb,
            )
            result = _classify(spec, run)
            after = hash_files(worktree, protected)
            if after != before:
                result.outcome, result.metric = Outcome.TAMPERED, None
                result.output_tail += _tamper_note("changed during the run", after, spec)
    result.hardware = hardware
    result.node = socket.gethostname()
    result.protected_hash = protected_digest(before)
    result.started_at = started_at
    result.finished_at = time.time()
    return result


def _classify(spec: TrialSpec, run: sandbox.RunResult) -> TrialResult:
    result = TrialResult(
        trial_id=spec.trial_id,
        outcome=Outcome.OK,
        exit_code=run.exit_code,
        duration_s=run.duration_s,
        output_tail=run.output_tail,
        process_started_at=run.started_at,
        process_ended_at=run.ended_at,
    )
    if run.timed_out:
        # A killed run reports no numbers, even if it printed its metric before the budget.
        result.outcome = Outcome.TIMEOUT
        return result
    result.summary = metric.parse_summary(run.output_tail)
    value = metric.parse_metric(run.output_tail, name=spec.metric, regex=spec.metric_regex)
    if run.exit_code != 0:
        result.outcome = Outcome.CRASHED
    elif value is None:
        result.outcome = Outcome.NO_METRIC
    elif not math.isfinite(value):
        result.outcome = Outcome.INVALID_METRIC
    else:
        result.metric = value
    return result


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
