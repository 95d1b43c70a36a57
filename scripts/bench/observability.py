"""Scrape and status latency against the size of the ledger: 40, 4,000 and 40,000 trials.

    .venv/bin/python scripts/bench/observability.py [--redis redis://127.0.0.1:6379/3]

One campaign grows through the real store API (a baseline, then candidates with a
screening trial each and three confirmations for one in four, a decision each, one
candidate in 40 kept, 5% of trials crashed), on SQLite in a temporary file and, with
--redis, on that Redis database (it must be empty; it is flushed at the end). At each
size it measures, 20 times after a warm-up, the median and 95th percentile of:

- scrape: an HTTP GET of /metrics from `farm exporter`'s collector (farm/metrics.py) served
  in this process, as Prometheus sees it;
- status: `farm status`'s work in this process, `status_report(snapshot(...))` (the CLI adds
  the interpreter's start, the same at any size);
- full read: reading every trial, candidate and decision, which is what a scrape and
  `farm status` cost before the store kept aggregates (shown for comparison, 3 times).

Goal: a scrape at 40,000 trials within 50 ms.
"""

from __future__ import annotations

import argparse
import io
import random
import socket
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import redis
from prometheus_client import CollectorRegistry

from farm.metrics import LedgerCollector, serve
from farm.progress import snapshot, status_report
from farm.records import (
    Campaign,
    Candidate,
    CandidateState,
    Decision,
    DecisionKind,
    Edit,
    Incumbent,
    Outcome,
    Trial,
    TrialKind,
    TrialResult,
)
from farm.store import Store, open_store

SIZES = (40, 4_000, 40_000)
GOAL_MS = 50.0
CAMPAIGN = "bench"
SHA = "0" * 40
# Smaller than a real train.py (~12 KB) and output tail, to keep 40,000 trials within this
# shared machine's memory; the aggregates' cost does not depend on them, the full read's does.
FILES = {"train.py": "x = 1\n" * 340}
TAIL = "step 1000 | loss 1.234\n" * 45
REPEATS, WARMUP = 20, 3


class Grower:
    """Adds trials to one campaign the way a campaign does, through the store API."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.rng = random.Random(0)
        self.trials = 0
        config = {"metric": "val_bpb", "budget_s": 300, "merge": {"confirm": 3, "z": 1.5}}
        store.create_campaign(
            Campaign(id=CAMPAIGN, target="/t", start_sha=SHA, config=config),
            Incumbent(sha=SHA, metric=1.0, runs=12, files=FILES),
        )
        for i in range(12):
            self._trial(f"b{i}", TrialKind.BASELINE, None)
        store.set_baseline(CAMPAIGN, metric=1.0, runs=12, sigma=0.01)

    def grow_to(self, n: int) -> None:
        while self.trials < n:
            cid = self.store.next_candidate_id(CAMPAIGN)
            cand = Candidate(
                campaign=CAMPAIGN,
                id=cid,
                base_sha=SHA,
                title=f"candidate {cid}",
                hypothesis="h",
                edits=[Edit("train.py", "x = 1", f"x = {cid}")],
                files=FILES,
                edit_hash=f"h{cid}",
                proposer="anthropic",
                tokens_in=3000,
                tokens_out=800,
                cost_usd=0.02,
            )
            self.store.add_candidate(cand)
            confirmed = self.rng.random() < 0.25
            for k in range(4 if confirmed else 1):
                self._trial(f"c{cid}-{k}", TrialKind.CONFIRM if k else TrialKind.CANDIDATE, cid)
            kept = confirmed and self.rng.random() < 0.1  # 2.5% of candidates
            cand.state = CandidateState.KEPT if kept else CandidateState.DISCARDED
            self.store.update_candidate(cand)
            kind = DecisionKind.KEPT if kept else DecisionKind.DISCARDED
            self.store.record_decision(
                Decision(campaign=CAMPAIGN, candidate_id=cid, kind=kind, reason="r", sigma=0.01)
            )

    def _trial(self, trial_id: str, kind: TrialKind, cid: int | None) -> None:
        trial = Trial(
            id=trial_id,
            campaign=CAMPAIGN,
            kind=kind,
            commit_sha=SHA,
            base_sha=SHA,
            seed=self.trials,
            candidate_id=cid,
            files=FILES,
        )
        self.store.enqueue_trial(trial)
        self.store.claim_trials(CAMPAIGN, worker="bench", n=1, lease_s=60)
        crashed = self.rng.random() < 0.05
        self.store.record_result(
            CAMPAIGN,
            TrialResult(
                trial_id=trial_id,
                outcome=Outcome.CRASHED if crashed else Outcome.OK,
                metric=None if crashed else 1.0 + self.rng.gauss(0, 0.01),
                duration_s=self.rng.uniform(250, 300),
                hardware="NVIDIA GeForce RTX 4090",
                output_tail=TAIL,
                finished_at=time.time(),
            ),
        )
        self.trials += 1


def timed(fn: Callable[[], object], *, repeats: int = REPEATS, warmup: int = WARMUP) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def measure(name: str, store: Store) -> list[list[str]]:
    registry = CollectorRegistry()
    registry.register(LedgerCollector(store))
    server = serve(f"127.0.0.1:{free_port()}", registry, out=io.StringIO(), what="bench")
    assert server is not None
    grower, rows = Grower(store), []
    try:
        for size in SIZES:
            started = time.time()
            grower.grow_to(size)
            print(f"  {name}: {grower.trials} trials ({time.time() - started:.0f} s)", flush=True)
            scrape = timed(lambda: urllib.request.urlopen(server.url, timeout=30).read())
            status = timed(lambda: status_report(snapshot(store, CAMPAIGN)))
            full = timed(
                lambda: (
                    store.list_trials(CAMPAIGN),
                    store.list_candidates(CAMPAIGN),
                    store.list_decisions(CAMPAIGN),
                ),
                repeats=3,
                warmup=0,
            )
            rows.append(
                [name, f"{grower.trials:,}"]
                + [f"{statistics.median(v):.1f} / {p95(v):.1f}" for v in (scrape, status)]
                + [f"{statistics.median(full):,.0f}"]
            )
    finally:
        server.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis", help="an empty Redis database for the benchmark (flushed)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{Path(tmp) / 'farm.db'}")
        rows += measure("sqlite", store)
        store.close()
    if args.redis:
        client = redis.Redis.from_url(args.redis)
        if client.dbsize():
            raise SystemExit(f"{args.redis} is not empty: give the benchmark a database of its own")
        try:
            store = open_store(args.redis)
            rows += measure("redis", store)
            store.close()
        finally:
            client.flushdb()
    print()
    print("| store | trials | scrape ms (p50 / p95) | status ms (p50 / p95) | full read ms |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    largest = [r for r in rows if int(r[1].replace(",", "")) >= SIZES[-1]]
    worst = max(float(r[2].split(" / ")[0]) for r in largest)
    verdict = "PASS" if worst <= GOAL_MS else "FAIL"
    print(f"\n{verdict}: scrape at {SIZES[-1]:,} trials {worst:.1f} ms (goal <= {GOAL_MS:.0f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
