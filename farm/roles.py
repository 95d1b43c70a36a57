"""Each role as a process of its own against a shared store: `farm control`, `farm work`,
`farm propose`. `farm run` (farm/campaign.py) composes the same components in one process.

- control: the merge controller, and the only writer of the target repo's farm branches.
- work: a dispatcher; needs a clone of the target that has the campaign's start commit.
- propose: the proposer; needs only the store and farm.toml.

Any of them can be killed and restarted: all state is in the store.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TextIO

from farm.config import TargetConfig
from farm.controller import Controller
from farm.dispatch import Dispatcher, announce_sandbox
from farm.errors import CampaignTaken, FarmError
from farm.gitops import Repo
from farm.metrics import RoleMetrics
from farm.processes import gone_here, process_id
from farm.progress import decision_text, note_text, plural
from farm.propose import STOP_GRACE_S, Feeder
from farm.records import CandidateState, DriverLease, TrialState
from farm.store import Store
from proposer.base import Proposer

log = logging.getLogger(__name__)

POLL_S = 0.5
LEASE_S = 30.0  # a driver's lease: renewed every third of it, lapsed this long after a death


class Driving:
    """This process drives the campaign: it holds the campaign's driver lease (renewed in a
    thread) while it is inside the `with`, and a second `farm run` or `farm control` on the
    same campaign is refused with who holds it."""

    def __init__(self, store: Store, campaign: str, *, role: str) -> None:
        self.store, self.campaign = store, campaign
        self.holder = f"{role} ({process_id()})"  # the process: host:pid:nonce
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="farm-lease", daemon=True)

    def __enter__(self) -> Driving:
        lease = self._take()
        if lease.holder != self.holder and gone_here(lease.holder.rpartition("(")[2].rstrip(")")):
            self.store.drop_lease(self.campaign, holder=lease.holder)
            lease = self._take()
        if lease.holder != self.holder:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lease.since))
            raise CampaignTaken(
                f"campaign {self.campaign!r} is driven by {lease.holder} since {since}: stop "
                f"it first; if it died, its lease lapses within {LEASE_S:g} s of its last "
                "renewal and this command then takes over"
            )
        self._thread.start()
        return self

    def _take(self) -> DriverLease:
        """Take the lease, or renew it: the lease as it stands after (maybe another's)."""
        return self.store.take_lease(
            self.campaign, holder=self.holder, ttl_s=LEASE_S, now=time.time()
        )

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_S / 3):
            try:
                self._take()
            except FarmError as e:  # the store is down: the next renewal tries again
                log.warning("renewing the driver lease of %s: %s", self.campaign, e)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            self.store.drop_lease(self.campaign, holder=self.holder)
        except FarmError as e:  # it lapses by itself
            log.warning("dropping the driver lease of %s: %s", self.campaign, e)


def wait_for_campaign(store: Store, campaign: str, *, out: TextIO, timeout_s: float) -> None:
    """Roles other than control wait for it to create the campaign."""
    deadline = time.time() + timeout_s
    said = False
    while store.get_campaign(campaign) is None:
        if time.time() > deadline:
            raise FarmError(
                f"no campaign {campaign!r} appeared in {store.url} within {timeout_s:.0f}s: "
                "start `farm control` (or `farm run`) for it first"
            )
        if not said:
            print(
                f"waiting for campaign {campaign!r} in {store.url} (farm control creates it)",
                file=out,
                flush=True,
            )
            said = True
        time.sleep(POLL_S)


class _IdleClock:
    """True once the campaign has been idle for `limit_s` in a row (None: never)."""

    def __init__(self, limit_s: float | None) -> None:
        self.limit_s = limit_s
        self.since: float | None = None

    def expired(self, idle: bool) -> bool:
        if self.limit_s is None or not idle:
            self.since = None
            return False
        self.since = self.since or time.time()
        return time.time() - self.since >= self.limit_s


def serve_control(
    *,
    store: Store,
    repo: Repo,
    cfg: TargetConfig,
    slots: int | None,
    idle_exit_s: float | None,
    out: TextIO,
) -> int:
    controller = Controller(store=store, repo=repo, cfg=cfg, campaign=cfg.campaign)
    controller.sync_best_branch()
    print(
        f"farm control: campaign {cfg.campaign} on {repo.path} | store {store.url}",
        file=out,
        flush=True,
    )
    clock = _IdleClock(idle_exit_s)
    while True:
        for d in controller.step(slots=slots):
            print(decision_text(store, cfg.campaign, d, cfg.metric), file=out, flush=True)
        while controller.notices:
            print(note_text(controller.notices.pop(0)), file=out, flush=True)
        waiting = {CandidateState.QUEUED, CandidateState.RUNNING}
        quiet = store.is_quiet(cfg.campaign, waiting=waiting)
        if clock.expired(quiet and not store.get_incumbent(cfg.campaign).estimated):
            print("farm control: idle; exiting", file=out, flush=True)
            return 0
        time.sleep(POLL_S)


def serve_work(
    *,
    store: Store,
    repo: Repo,
    cfg: TargetConfig,
    slots: int,
    lease_s: float,
    idle_exit_s: float | None,
    out: TextIO,
    metrics: RoleMetrics | None = None,
) -> int:
    dispatcher = Dispatcher(
        store=store,
        repo=repo,
        cfg=cfg,
        campaign=cfg.campaign,
        slots=slots,
        lease_s=lease_s,
        heartbeat_s=max(0.2, lease_s / 6),
    )
    if metrics is not None:
        metrics.watch_slots(busy=lambda: dispatcher.busy, cluster=lambda: dispatcher.view)
    freed = dispatcher.reclaim_orphans()
    print(
        f"farm work: {dispatcher.worker_id} | {plural(slots, 'slot')} | campaign {cfg.campaign} | "
        f"store {store.url}" + (f" | {len(freed)} orphaned trials requeued" if freed else ""),
        file=out,
        flush=True,
    )
    announce_sandbox(cfg, out=out)
    clock = _IdleClock(idle_exit_s)
    recorded = 0
    try:
        while True:
            recorded += dispatcher.step(wait_s=POLL_S)
            while dispatcher.notices:
                print(note_text(dispatcher.notices.pop(0)), file=out, flush=True)
            counts = store.count_trials(cfg.campaign)
            idle = not dispatcher.busy and not counts[TrialState.QUEUED]
            if clock.expired(idle):
                print(f"farm work: idle; exiting after {recorded} results", file=out, flush=True)
                return 0
    except KeyboardInterrupt:
        dispatcher.shutdown()
        print(f"farm work: stopped; {recorded} results recorded", file=out, flush=True)
        return 130


def serve_propose(
    *,
    store: Store,
    cfg: TargetConfig,
    proposer: Proposer,
    max_candidates: int | None,
    out: TextIO,
) -> int:
    feeder = Feeder(
        store=store,
        cfg=cfg,
        campaign=cfg.campaign,
        proposer=proposer,
        max_candidates=max_candidates,
        slots=cfg.resources.slots or None,
    )
    print(
        f"farm propose: {proposer.name} for campaign {cfg.campaign} | store {store.url} | "
        f"{feeder.sizes().describe()}",
        file=out,
        flush=True,
    )
    feeder.start()
    try:
        feeder.wait()
    except KeyboardInterrupt:
        lost = feeder.stop(grace_s=STOP_GRACE_S)
        held = f"; {lost} calls in flight stay counted at their worst case" if lost else ""
        print(f"farm propose: interrupted{held}; run it again to resume", file=out, flush=True)
        return 130
    if feeder.error is not None:
        print(f"farm propose: stopped: {feeder.error}", file=out, flush=True)
        return 1
    why = "nothing new to try" if feeder.exhausted else "candidate limit reached"
    why = feeder.stopped or why  # the spend cap
    print(f"farm propose: done ({why})", file=out, flush=True)
    return 0
