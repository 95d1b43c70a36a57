"""A campaign from start to finish: check the target, create or resume, run all roles.

`prepare` refuses a target that cannot work before any trial runs; `run` composes the
proposer (background thread), the dispatcher and the merge controller in one process, for
local mode and for `ray job submit`. All state lives in the store, so `run` resumes.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import ray

from farm.config import CONFIG_NAME, TargetConfig
from farm.controller import Controller
from farm.dispatch import Dispatcher, check_feasible
from farm.errors import ConfigError, TargetError
from farm.gitops import Repo
from farm.metrics import serve
from farm.progress import decision_line, snapshot, status_line
from farm.propose import STOP_GRACE_S, Feeder
from farm.records import Campaign, CandidateState, Incumbent
from farm.store import Store
from proposer.base import Proposer

log = logging.getLogger(__name__)

# Settings that define what a campaign measures: resuming with others would mix results.
_FIXED_KEYS = ("editable", "protected", "command", "metric", "metric_regex", "direction")


def prepare(target: Path, cfg: TargetConfig, store: Store, *, check_command: bool) -> Campaign:
    """Check the target and create the campaign, or return the existing one to resume."""
    repo = Repo(target)
    head = repo.head()
    for kind, paths in (("editable", cfg.editable), ("protected", cfg.protected)):
        for p in paths:
            if not repo.read_files(head, [p]):
                raise TargetError(f"{kind} file {p!r} is not committed in {repo.path}")
            if repo.is_symlink(head, p):
                raise TargetError(f"{kind} file {p!r} is a symlink: farm needs real files")
    watched = [*cfg.editable, *cfg.protected, CONFIG_NAME]
    dirty = repo.dirty(watched)
    if dirty:
        raise TargetError(
            f"uncommitted changes in {', '.join(dirty)} in {repo.path}: farm runs the "
            "committed HEAD, so commit (or stash) them first"
        )
    if check_command:
        _check_command(cfg.command, repo.path)
    repo.exclude(".farm/")  # the default store lives there; keep it out of `git status`
    existing = store.get_campaign(cfg.campaign)
    if existing is not None:
        changed = [k for k in _FIXED_KEYS if existing.config.get(k) != cfg.to_dict()[k]]
        if changed:
            raise ConfigError(
                f"{target / CONFIG_NAME}: {changed[0]} differs from what campaign "
                f'{cfg.campaign!r} started with; set `campaign = "new-name"` (or --campaign) '
                "to start a new campaign"
            )
        return existing
    program = repo.read_files(head, [cfg.program]).get(cfg.program, "")
    if not program:
        log.warning("no %s in the target: proposers get no instructions", cfg.program)
    camp = Campaign(
        id=cfg.campaign,
        target=str(repo.path),
        start_sha=head,
        config=cfg.to_dict(),
        program=program,
        protected_files=repo.read_files(head, cfg.protected),
    )
    inc = Incumbent(sha=head, files=repo.read_files(head, cfg.editable))
    return store.create_campaign(camp, inc)


def _check_command(command: str, cwd: Path) -> None:
    try:
        words = shlex.split(command)
    except ValueError as e:
        raise ConfigError(f"command {command!r} in farm.toml does not parse: {e}") from None
    exe = next((w for w in words if "=" not in w), "")  # skip leading VAR=value
    if not exe:
        raise ConfigError(f"command {command!r} in farm.toml runs nothing")
    found = (cwd / exe).exists() if "/" in exe else shutil.which(exe) is not None
    if not found:
        raise TargetError(
            f"the run command {command!r} cannot start here: {exe!r} is not "
            + ("a file in the target" if "/" in exe else "on PATH")
            + "; fix `command` in farm.toml"
        )


@dataclass
class RunOptions:
    slots: int = 0  # 0: from farm.toml, else what the cluster holds
    max_candidates: int | None = None
    time_limit_s: float | None = None
    progress_every_s: float = 15.0
    ray_address: str | None = None  # None: $RAY_ADDRESS, else a local Ray instance


def init_ray(cfg: TargetConfig, opts: RunOptions) -> bool:
    """Connect to Ray (or start a local instance). False if this process already had it."""
    if ray.is_initialized():
        return False
    address = opts.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return True
    # Local mode: a Ray instance sized to the slots asked for, and no more.
    slots = opts.slots or cfg.resources.slots or (os.cpu_count() or 1)
    ray.init(
        address="local",
        num_cpus=max(1, int(slots * max(cfg.resources.cpus_per_trial, 1))),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    return True


def run(
    *,
    store: Store,
    repo: Repo,
    cfg: TargetConfig,
    proposer: Proposer,
    opts: RunOptions,
    out: TextIO = sys.stdout,
) -> int:
    """Run the campaign until the proposer is done and every candidate decided.

    Returns a process exit code. Ctrl-C stops cleanly; the next `run` resumes.
    """
    capacity = check_feasible(cfg)
    slots = opts.slots or cfg.resources.slots or capacity
    if slots > capacity:
        print(
            f"note: {slots} slots asked for, the cluster holds {capacity} trials at once", file=out
        )
    controller = Controller(store=store, repo=repo, cfg=cfg, campaign=cfg.campaign)
    controller.sync_best_branch()
    dispatcher = Dispatcher(store=store, repo=repo, cfg=cfg, campaign=cfg.campaign, slots=slots)
    orphans = dispatcher.reclaim_orphans()
    if orphans:
        print(f"resuming: {len(orphans)} trials of a stopped run go back in the queue", file=out)
    metrics = serve(
        cfg.metrics,
        store=store,
        campaign=cfg.campaign,
        slots=slots,
        busy=lambda: dispatcher.busy,
        proposer=proposer.name,
        out=out,
    )
    feeder = Feeder(
        store=store,
        cfg=cfg,
        campaign=cfg.campaign,
        proposer=proposer,
        max_candidates=opts.max_candidates,
        on_call=metrics.driver.observe_proposal if metrics else None,
    )
    started = time.time()
    last_print = 0.0
    last_line = ""
    print(
        f"farm: campaign {cfg.campaign} on {repo.path} | {slots} slots | proposer "
        f"{proposer.name} | store {store.url}",
        file=out,
        flush=True,
    )
    feeder.start()
    try:
        while True:
            stopping = opts.time_limit_s is not None and time.time() - started > opts.time_limit_s
            for d in controller.step(slots=slots, promote=not stopping):
                cand = store.get_candidate(cfg.campaign, d.candidate_id)
                print(decision_line(d, cand, cfg.metric), file=out, flush=True)
            dispatcher.step(wait_s=0.5)
            if time.time() - last_print >= opts.progress_every_s:
                last_print = time.time()
                snap = snapshot(store, cfg.campaign)
                last_line = status_line(
                    snap, slots=slots, busy=dispatcher.busy, elapsed_s=time.time() - started
                )
                print(last_line, file=out, flush=True)
            if _finished(store, cfg.campaign, feeder_done=feeder.done, stopping=stopping):
                break
    except KeyboardInterrupt:
        print(
            "\ninterrupted: stopping trials; run the same command to resume", file=out, flush=True
        )
        lost = feeder.stop(grace_s=STOP_GRACE_S)
        if lost:
            print(f"{lost} proposer calls in flight stay counted at their worst case", file=out)
        dispatcher.shutdown()
        if metrics:
            metrics.close()
        return 130
    except BaseException:
        feeder.stop()
        dispatcher.shutdown()
        if metrics:
            metrics.close()
        raise
    feeder.stop()
    if metrics:
        metrics.close()
    snap = snapshot(store, cfg.campaign)
    final = status_line(snap, slots=slots, busy=0, elapsed_s=time.time() - started)
    if final.partition("] ")[2] != last_line.partition("] ")[2]:  # not twice in a row
        print(final, file=out)
    if feeder.error is not None:
        print(f"farm: proposing stopped: {feeder.error}", file=out)
        return 1
    if opts.time_limit_s is not None and time.time() - started > opts.time_limit_s:
        why = "time limit reached"
    elif feeder.stopped:
        why = feeder.stopped
    elif feeder.exhausted:
        why = f"proposer {proposer.name} has nothing new to try"
    else:
        counts = store.count_candidates(cfg.campaign)
        why = f"all {sum(counts.values()) - counts[CandidateState.REJECTED]} candidates decided"
    print(f"farm: campaign {cfg.campaign} finished ({why})", file=out, flush=True)
    return 0


def _finished(store: Store, campaign: str, *, feeder_done: bool, stopping: bool) -> bool:
    """Done when nothing runs or waits; when stopping early, queued candidates may wait."""
    waiting = (
        {CandidateState.RUNNING} if stopping else {CandidateState.RUNNING, CandidateState.QUEUED}
    )
    return (feeder_done or stopping) and store.is_quiet(campaign, waiting=waiting)
