"""A campaign from start to finish: check the target, create or resume, run all roles.

`prepare` refuses a target that cannot work before any trial runs; `run` composes the
proposer (background thread), the dispatcher and the merge controller in one process, for
local mode and for `ray job submit`. All state lives in the store, so `run` resumes.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import shlex
import shutil
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import ray

from farm.config import CONFIG_NAME, TargetConfig, stored_config
from farm.controller import Controller
from farm.dispatch import Dispatcher, announce_sandbox, check_feasible
from farm.errors import ConfigError, FarmError, ProposerError, TargetError
from farm.gitops import Repo, best_branch, candidate_branch
from farm.metrics import LedgerCollector, RoleMetrics, serve
from farm.progress import WIDTH, failure_label, fit, note_text, plural, snapshot
from farm.propose import STOP_GRACE_S, Feeder, build_context
from farm.recorder import commits_past
from farm.records import Campaign, CandidateState, Incumbent
from farm.store import Store
from farm.terminal import open_view
from proposer.base import ProposalContext, Proposer
from workers.materialize import CACHE_ENV

log = logging.getLogger(__name__)

# Settings that define what a campaign measures: resuming with others would mix results.
_FIXED_KEYS = (
    "editable",
    "protected",
    "command",
    "metric",
    "metric_regex",
    "direction",
    "evaluate",
    "bounds",
    "artifacts",
    "artifacts_safe_load",
    "frozen",
)
# What this process keeps in its environment when it starts Ray (a local Ray's raylet and
# workers inherit it, and so does every trial task), beside the trial's allow-list and
# [sandbox] env_allow: an allow-list, so a secret under any name (MY_PAT, DB_PASS) is left
# out. Exact names, or fnmatch patterns ("LC_*").
RAY_ENV_ALLOW = (
    "SHELL",
    "LOGNAME",
    "LANGUAGE",
    "TZ",
    "HOSTNAME",
    "PWD",
    "LC_*",
    "RAY_*",  # Ray's own settings, its local token authentication included
    "PYTHON*",
    "CONDA_*",
    "CUDA_*",
    "NVIDIA_*",
    "NCCL_*",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    # BLAS settings some processors need (an older OpenBLAS computes wrong results or
    # crashes on them without OPENBLAS_CORETYPE).
    "OPENBLAS_*",
    CACHE_ENV,
)
_SECRET_VALUE = re.compile(r"://[^/\s:@]*:[^/\s@]+@")  # a URL with a password in it


@dataclass(frozen=True)
class Start:
    """What `check` found: the campaign to resume, or a new one not in the store yet."""

    campaign: Campaign
    incumbent: Incumbent | None  # the new campaign's first incumbent; None: resuming

    def create(self, store: Store) -> Campaign:
        """The campaign in the store: created now if new."""
        if self.incumbent is None:
            return self.campaign
        return store.create_campaign(self.campaign, self.incumbent)


def prepare(
    target: Path,
    cfg: TargetConfig,
    store: Store,
    *,
    check_command: bool,
    out: TextIO | None = None,
) -> Campaign:
    """Check the target and create the campaign, or return the existing one to resume."""
    return check(target, cfg, store, check_command=check_command, out=out).create(store)


def check(
    target: Path,
    cfg: TargetConfig,
    store: Store,
    *,
    check_command: bool,
    out: TextIO | None = None,
    proposer: Proposer | None = None,
) -> Start:
    """Refuse a target that cannot work, before anything is stored: a refused run leaves
    no campaign behind. Resuming, says on `out` when the repo's HEAD has moved on since the
    campaign started. With `proposer`, a new campaign is refused when it has nothing to try
    (a resumed one: in `run`, which knows what was tried)."""
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
        now = cfg.to_dict()
        # A key the campaign's snapshot lacks (an older farm) had its default then.
        then = stored_config(existing.config).to_dict()
        changed = [k for k in _FIXED_KEYS if then[k] != now[k]]
        if changed:
            raise ConfigError(
                f"{target / CONFIG_NAME}: {changed[0]} differs from what campaign "
                f'{cfg.campaign!r} started with; set `campaign = "new-name"` (or --campaign) '
                "to start a new campaign"
            )
        moved = _head_moved(repo, existing, head)
        if moved and out is not None:
            print(moved, file=out, flush=True)
        return Start(existing, None)
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
    if proposer is not None:
        ctx = ProposalContext(
            campaign=camp.id,
            program=program,
            files=dict(inc.files),
            editable=list(cfg.editable),
            metric=cfg.metric,
            direction=cfg.direction,
            incumbent_sha=head,
            protected=dict(camp.protected_files),
            frozen=list(cfg.frozen),
            budget_s=cfg.budget_s,
        )
        refuse_nothing_to_try(proposer, ctx)
    return Start(camp, inc)


def refuse_nothing_to_try(proposer: Proposer, ctx: ProposalContext) -> None:
    """Before the baseline: its trials would be spent on nothing."""
    nothing = proposer.nothing_to_try(ctx)
    if nothing:
        raise ProposerError(f"{nothing}; stopping before any trial runs")


def restart_name(target: Path, campaign: str) -> str:
    """The campaign `--restart` starts at HEAD: the old one's name and HEAD's short sha, so
    the old ledger stays whole under its own name."""
    return f"{campaign}-{Repo(target).head()[:7]}"


def _head_moved(repo: Repo, camp: Campaign, head: str) -> str:
    """What to say when HEAD is neither the campaign's start nor one of its farm commits (the
    user committed since): the campaign goes on from its own start, not from HEAD."""
    best = repo.ref_sha(f"refs/heads/{best_branch(camp.id)}") or camp.start_sha
    if repo.is_ancestor(head, best):
        return ""

    def commit(sha: str) -> str:
        return f"{sha[:10]} {repo.git('log', '-1', '--format=%s', sha).strip()}"

    said = note_text(
        f"HEAD has moved on since campaign {camp.id!r} started; this run resumes the campaign "
        "from its start commit and its incumbent, without what was committed since:"
    )
    new = restart_name(repo.path, camp.id)
    return "\n".join(
        [
            said,
            "  " + fit(f"started at {commit(camp.start_sha)}", WIDTH - 2),
            "  " + fit(f"HEAD is    {commit(head)}", WIDTH - 2),
            textwrap.fill(
                f"To optimise HEAD instead, start a new campaign there: --restart (campaign "
                f"{new!r}; {camp.id!r} and its ledger stay as they are), or --campaign NAME "
                '(or campaign = "NAME" in farm.toml).',
                WIDTH,
                initial_indent="  ",
                subsequent_indent="  ",
            ),
        ]
    )


def repair_refs(
    store: Store,
    repo: Repo,
    campaign: str,
    *,
    discard: bool = False,
    ask: Callable[[str], str] | None = None,
) -> list[str]:
    """Point the campaign's farm branches back where the store says; returns what moved.

    Moving the best branch back discards the commits it holds past the store's incumbent:
    they are named, and nothing moves unless `discard` (--discard-kept) or `ask` (a prompt
    on a terminal) says so (FarmError)."""
    wanted = {best_branch(campaign): store.get_incumbent(campaign).sha}
    for cand in store.list_candidates(campaign):
        if cand.commit_sha:
            wanted[candidate_branch(campaign, cand.id)] = cand.commit_sha
    _confirm_discard(store, repo, campaign, wanted[best_branch(campaign)], discard, ask)
    moved = []
    for branch, sha in wanted.items():
        tip = repo.ref_sha(f"refs/heads/{branch}")
        if tip != sha:
            repo.set_branch(branch, sha)
            moved.append(f"{branch}: {tip[:12] if tip else 'missing'} -> {sha[:12]}")
    return moved


def _confirm_discard(
    store: Store,
    repo: Repo,
    campaign: str,
    sha: str,
    discard: bool,
    ask: Callable[[str], str] | None,
) -> None:
    """Refuse to move the best branch back to `sha` over keeps farm made there (its own
    candidates' commits: the campaign's kept work), unless told to."""
    branch = best_branch(campaign)
    tip = repo.ref_sha(f"refs/heads/{branch}")
    kept = [p for p in commits_past(store, repo, campaign, sha, tip) if p.name]
    if not kept or discard:
        return
    unknown = [p for p in kept if p.lost]
    said = (
        f"moving {branch} back to {sha[:10]} discards {plural(len(kept), 'kept commit')}: "
        + "; ".join(f"{p.commit.sha[:10]} {p.commit.message.partition(chr(10))[0]!r}" for p in kept)
        + (
            f". The store knows no decision for {len(unknown)} of them: it has most likely "
            "lost writes, and `farm run` without --repair-refs records such keeps again "
            "from git where it can"
            if unknown
            else ""
        )
    )
    if ask is not None and ask(f"{said}\ndiscard them? [y/N] ").strip().lower() in ("y", "yes"):
        return
    raise FarmError(
        f"{said}; nothing moved. To discard them, answer yes at the prompt on a terminal, or "
        "add --discard-kept"
    )


def allow_listed_environment(*, keep: list[str]) -> list[str]:
    """Drop from this process's environment every variable that neither `keep` (the
    trial's allow-list, env_allow, [sandbox] env) nor RAY_ENV_ALLOW names, and any URL with
    a password that only a pattern let through; returns the names dropped. Call it once
    the proposer holds its key, before Ray starts."""

    def allowed(name: str, value: str) -> bool:
        if name in keep:
            return True
        if any(fnmatch.fnmatchcase(name, p) for p in RAY_ENV_ALLOW):
            return not _SECRET_VALUE.search(value)
        return False

    gone = [name for name, value in os.environ.items() if not allowed(name, value)]
    for name in gone:
        del os.environ[name]
    return sorted(gone)


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


def init_ray(cfg: TargetConfig, opts: RunOptions, *, out: TextIO | None = None) -> bool:
    """Connect to Ray (or start a local instance). False if this process already had it.

    Only allow-listed variables stay in this process's environment: a local Ray's workers
    inherit it.
    """
    if ray.is_initialized():
        return False
    gone = allow_listed_environment(keep=[*cfg.env_allow, *cfg.sandbox.env])
    if gone and out is not None:
        said = (
            f"kept from Ray and every trial: {len(gone)} variables not on the allow-list "
            f"([sandbox] env_allow adds a name): {', '.join(gone)}"
        )
        print(note_text(said), file=out, flush=True)
    address = opts.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as e:
            token = "" if os.environ.get("RAY_AUTH_TOKEN") else " (RAY_AUTH_TOKEN is not set)"
            raise FarmError(
                f"cannot connect to the Ray cluster at {address}: {e}; check the address, and "
                "on a cluster with token authentication set RAY_AUTH_MODE=token and "
                f"RAY_AUTH_TOKEN{token} (docs/gpu-cluster.md, Token authentication)"
            ) from None
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
    refuse_nothing_to_try(proposer, build_context(store, cfg, cfg.campaign))
    capacity = check_feasible(cfg)
    slots = opts.slots or cfg.resources.slots or capacity
    if slots > capacity:
        print(
            f"note: {plural(slots, 'slot')} asked for, the cluster holds {capacity} trials at once",
            file=out,
        )
    role = RoleMetrics(campaign=cfg.campaign, role="run")
    role.registry.register(LedgerCollector(store, [cfg.campaign]))
    metrics = (
        serve(cfg.metrics.address, role.registry, out=out, what="campaign")
        if cfg.metrics.enabled
        else None
    )
    store, proposer = role.instrument(store), role.measure(proposer)
    controller = Controller(store=store, repo=repo, cfg=cfg, campaign=cfg.campaign)
    controller.sync_best_branch()
    dispatcher = Dispatcher(store=store, repo=repo, cfg=cfg, campaign=cfg.campaign, slots=slots)
    orphans = dispatcher.reclaim_orphans()
    if orphans:
        print(f"resuming: {len(orphans)} trials of a stopped run go back in the queue", file=out)
    role.watch_slots(busy=lambda: dispatcher.busy, cluster=lambda: dispatcher.view)
    feeder = Feeder(
        store=store,
        cfg=cfg,
        campaign=cfg.campaign,
        proposer=proposer,
        max_candidates=opts.max_candidates,
        slots=slots,
    )
    started = time.time()
    said = [f"proposing {feeder.sizes().describe()}"]
    if cfg.merge.screen_budget_s > 0:
        said.append(f"short screens of {cfg.merge.screen_budget_s:g} s ([merge] screen_budget_s)")
    print(
        fit(
            f"farm: campaign {cfg.campaign} · {plural(slots, 'slot')} · proposer {proposer.name}",
            WIDTH,
        ),
        *("  " + fit(line, WIDTH - 2) for line in said),
        "  " + fit(f"target {repo.path}", WIDTH - 2),
        "  " + fit(f"store {store.url}", WIDTH - 2),
        sep="\n",
        file=out,
        flush=True,
    )
    announce_sandbox(cfg, out=out)
    view = open_view(
        out, slots=slots, max_candidates=opts.max_candidates, every_s=opts.progress_every_s
    )
    feeder.start()
    try:
        while True:
            stopping = opts.time_limit_s is not None and time.time() - started > opts.time_limit_s
            for d in controller.step(slots=slots, promote=not stopping):
                cand = store.get_candidate(cfg.campaign, d.candidate_id)
                label = failure_label(store, cfg.campaign, d)
                view.decision(d, cand.title if cand else "", cfg.metric, label=label)
            while controller.notices:
                view.note(controller.notices.pop(0))
            dispatcher.step(wait_s=0.5)
            while dispatcher.notices:
                view.note(dispatcher.notices.pop(0))
            view.tick(
                lambda: snapshot(store, cfg.campaign, last=0),
                busy=dispatcher.busy,
                cluster=dispatcher.view,
            )
            if _finished(store, cfg.campaign, feeder_done=feeder.done, stopping=stopping):
                break
    except KeyboardInterrupt:
        view.close()
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
        view.close()
        feeder.stop()
        dispatcher.shutdown()
        if metrics:
            metrics.close()
        raise
    feeder.stop()
    if metrics:
        metrics.close()
    view.tick(lambda: snapshot(store, cfg.campaign, last=0), busy=0, force=True)
    view.close()
    # A branch moved behind farm's back since its last keep would otherwise go unnoticed.
    controller.sync_best_branch()
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
    """Done when nothing runs or waits and the incumbent is measured; when stopping early,
    queued candidates may wait and the incumbent may stay an estimate (every view says so)."""
    waiting = (
        {CandidateState.RUNNING} if stopping else {CandidateState.RUNNING, CandidateState.QUEUED}
    )
    if not (feeder_done or stopping) or not store.is_quiet(campaign, waiting=waiting):
        return False
    return stopping or not store.get_incumbent(campaign).estimated
