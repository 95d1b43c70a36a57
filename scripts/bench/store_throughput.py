"""Store throughput: trials per second a store sustains for enqueue + claim + record.

    .venv/bin/python scripts/bench/store_throughput.py [--seconds 8]

1, 2 and 4 dispatcher processes share one campaign; each loops over the store calls one
trial costs (`enqueue_trial` as the controller does, `claim_trials` n=1 as a dispatcher
with one free slot does, `record_result` with a realistic result). Backends: SQLite on a
temporary file and Redis at redis://127.0.0.1:6379/12 (flushed before and after).
The need: 1,000 slots with 5-minute trials finish 1000/300 ≈ 3.3 trials/s.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

import redis

from farm.dispatch import HEARTBEAT_S, REAP_EVERY_S
from farm.records import Campaign, Incumbent, Outcome, Trial, TrialKind, TrialResult
from farm.store import open_store

REDIS_URL = "redis://127.0.0.1:6379/12"
CAMPAIGN = "bench"
SHA = "0" * 40
NEED = 1000 / 300  # trials/s at 1,000 slots of 5-minute trials
PROCESSES = (1, 2, 4)
LEASES = 1000  # trials in flight at 1,000 slots
# A trial carries the candidate's editable files and comes back with an output tail:
# sizes typical of an autoresearch train.py and a capped tail.
FILES = {"train.py": "x = 1\n" * 2_000}
TAIL = "step 1000 | loss 1.234\n" * 400


def dispatcher(url: str, n: int, start: mp.Event, stop_at: mp.Value, done: mp.Queue) -> None:
    store = open_store(url)  # opened in the child: connections are never shared across fork
    start.wait()
    count, deadline = 0, stop_at.value
    while time.time() < deadline:
        trial = Trial(
            id=f"p{n}-{count}",
            campaign=CAMPAIGN,
            kind=TrialKind.CANDIDATE,
            commit_sha=SHA,
            base_sha=SHA,
            seed=count,
            candidate_id=1,
            files=FILES,
        )
        store.enqueue_trial(trial)
        # Claims take any queued trial, so processes take each other's: as dispatchers do.
        for t in store.claim_trials(CAMPAIGN, worker=f"p{n}", n=1, lease_s=60):
            now = time.time()
            result = TrialResult(
                trial_id=t.id,
                outcome=Outcome.OK,
                metric=1.0,
                summary={"loss": 1.0, "steps": 1000.0},
                exit_code=0,
                duration_s=300.0,
                hardware="cpu",
                output_tail=TAIL,
                started_at=now,
                process_started_at=now,
                process_ended_at=now,
                finished_at=now,
            )
            if store.record_result(CAMPAIGN, result):
                count += 1
    store.close()
    done.put(count)


def measure(url: str, processes: int, seconds: float) -> float:
    store = open_store(url)
    store.create_campaign(
        Campaign(id=CAMPAIGN, target="", start_sha=SHA, config={}), Incumbent(sha=SHA)
    )
    store.close()
    ctx = mp.get_context("spawn")
    start, done = ctx.Event(), ctx.Queue()
    stop_at = ctx.Value("d", 0.0)
    procs = [
        ctx.Process(target=dispatcher, args=(url, n, start, stop_at, done))
        for n in range(processes)
    ]
    for p in procs:
        p.start()
    time.sleep(2.0)  # let every child import farm and open the store before the clock starts
    began = time.time()
    stop_at.value = began + seconds
    start.set()
    total = sum(done.get(timeout=seconds + 60) for _ in procs)
    for p in procs:
        p.join()
    return total / (time.time() - began)


def lease_upkeep(url: str, leases: int) -> tuple[float, float]:
    """Seconds one `heartbeat` and one `reap` take with `leases` trials running.

    At scale these recur (every HEARTBEAT_S and REAP_EVERY_S) on top of the per-trial calls.
    """
    store = open_store(url)
    store.create_campaign(
        Campaign(id=CAMPAIGN, target="", start_sha=SHA, config={}), Incumbent(sha=SHA)
    )
    for i in range(leases):
        store.enqueue_trial(
            Trial(
                id=f"lease-{i}",
                campaign=CAMPAIGN,
                kind=TrialKind.CANDIDATE,
                commit_sha=SHA,
                base_sha=SHA,
                seed=i,
                files=FILES,
            )
        )
    ids = [t.id for t in store.claim_trials(CAMPAIGN, worker="w", n=leases, lease_s=60)]
    beats, reaps = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        store.heartbeat(CAMPAIGN, ids, worker="w", lease_s=60)
        beats.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        store.reap(CAMPAIGN, now=time.time(), max_deliveries=3)
        reaps.append(time.perf_counter() - t0)
    store.close()
    return statistics.median(beats), statistics.median(reaps)


def flush() -> None:
    redis.Redis.from_url(REDIS_URL).flushdb()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="per configuration")
    args = ap.parse_args()

    rows: list[tuple[str, int, float]] = []
    for processes in PROCESSES:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{Path(tmp) / 'farm.db'}"
            rows.append(("sqlite", processes, measure(url, processes, args.seconds)))
    with tempfile.TemporaryDirectory() as tmp:
        upkeep = {"sqlite": lease_upkeep(f"sqlite:///{Path(tmp) / 'farm.db'}", LEASES)}
    for processes in PROCESSES:
        flush()
        try:
            rows.append(("redis", processes, measure(REDIS_URL, processes, args.seconds)))
        finally:
            flush()
    flush()
    try:
        upkeep["redis"] = lease_upkeep(REDIS_URL, LEASES)
    finally:
        flush()

    print("| store | dispatcher processes | trials/s | × the need at 1,000 slots (3.3/s) |")
    print("|---|---:|---:|---:|")
    for store, processes, rate in rows:
        print(f"| {store} | {processes} | {rate:.0f} | {rate / NEED:.0f}× |")
    print()
    print(f"| store | heartbeat of {LEASES:,} leases | reap with {LEASES:,} running |")
    print("|---|---:|---:|")
    for store, (beat, reap) in upkeep.items():
        print(
            f"| {store} | {beat * 1000:.1f} ms ({beat / HEARTBEAT_S:.1%} of every "
            f"{HEARTBEAT_S:g} s) | {reap * 1000:.1f} ms ({reap / REAP_EVERY_S:.1%} of every "
            f"{REAP_EVERY_S:g} s) |"
        )
    print()
    worst = min(rows, key=lambda r: r[2])
    verdict = "PASS" if worst[2] >= NEED else "FAIL"
    print(
        f"verdict: {verdict}: the slowest configuration ({worst[0]}, {worst[1]} dispatcher(s)) "
        f"sustains {worst[2]:.0f} trials/s, {worst[2] / NEED:.0f}× the {NEED:.1f}/s that "
        "1,000 slots of 5-minute trials need"
    )


if __name__ == "__main__":
    main()
