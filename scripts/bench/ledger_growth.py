"""Costs as the ledger grows: what one decision costs the controller, and one proposer call
its context, at 250, 1,000, 2,000 … candidates decided, on SQLite and Redis.

    .venv/bin/python scripts/bench/ledger_growth.py [--at 100,250,500,1000] [--stores sqlite,redis]

A `farm simulate` campaign (the real controller, Feeder and mutate proposer on a virtual
clock; 64 slots, batches of 16, a 256-knob target and no target loss, so it runs until
the last candidate) is driven to the largest count, with every `Controller.step`,
every proposer context (`build_context`) and every `figures.line` timed where it runs.
Each row is the window of decided candidates just below its count (the last tenth of
it, printed as the ledger passes it): the controller's time in that window ÷ the
decisions made in it, its time per step, and the mean context and line call. A cost that
stays flat as the ledger grows has the same figure in every row. Times are this process's
CPU time (a shared machine's load does not count; the Redis server's own work does not
either). Redis: a database of its own, flushed before and after (--redis-url).
"""

from __future__ import annotations

import argparse
import bisect
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from farm import figures, propose
from farm.records import CandidateState
from farm.simulate import SimModel, Simulation
from farm.store import open_store

REDIS_URL = "redis://127.0.0.1:6379/12"


@dataclass
class Timings:
    """Each timed call: (candidates when it started, seconds, decisions it made)."""

    steps: list[tuple[int, float, int]] = field(default_factory=list)
    contexts: list[tuple[int, float]] = field(default_factory=list)
    lines: list[tuple[int, float]] = field(default_factory=list)


def candidates(sim: Simulation) -> int:
    """The ledger's size: candidates decided after running (rejected drafts never ran)."""
    counts = sim.store.count_candidates("sim")
    return sum(n for s, n in counts.items() if s.is_finished() and s is not CandidateState.REJECTED)


def run(model: SimModel, store_url: str | None, report: Callable[[Timings, int], None]) -> Timings:
    """The campaign to its last candidate; `report` is called as the ledger passes each of
    the model's checkpoints (`at`)."""
    got = Timings()
    with tempfile.TemporaryDirectory(prefix="farm-ledger-") as tmp:
        store = open_store(store_url) if store_url else None
        sim = Simulation(model, Path(tmp), store=store)
        step, context, line = sim.controller.step, propose.build_context, figures.line

        def timed_step(**kw: Any) -> list[Any]:
            n, t0 = candidates(sim), time.process_time()
            made = step(**kw)
            got.steps.append((n, time.process_time() - t0, len(made)))
            report(got, n)
            return made

        def timed(fn: Callable[..., Any], into: list[tuple[int, float]]) -> Callable[..., Any]:
            def call(*a: Any, **kw: Any) -> Any:
                n, t0 = candidates(sim), time.process_time()
                out = fn(*a, **kw)
                into.append((n, time.process_time() - t0))
                return out

            return call

        sim.controller.step = timed_step  # type: ignore[method-assign]
        propose.build_context = timed(context, got.contexts)  # type: ignore[assignment]
        figures.line = timed(line, got.lines)  # type: ignore[assignment]
        try:
            sim.run()
        finally:
            propose.build_context, figures.line = context, line
            sim.close()
    return got


def window(rows: list[Any], at: int) -> list[Any]:
    """The rows taken while the ledger held (0.9·at, at] candidates."""
    ns = [r[0] for r in rows]
    return rows[bisect.bisect_right(ns, int(at * 0.9)) : bisect.bisect_right(ns, at)]


def ms(x: float) -> str:
    return f"{x * 1000:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--at", default="100,250,500,1000", help="candidate counts to report")
    ap.add_argument("--stores", default="sqlite,redis")
    ap.add_argument("--redis-url", default=REDIS_URL, help="a database of its own (flushed)")
    ap.add_argument("--constants", type=int, default=256)
    ap.add_argument("--slots", type=int, default=64)
    args = ap.parse_args()
    at = [int(x) for x in args.at.split(",")]
    model = SimModel(
        slots=args.slots,
        batch_size=16,
        backlog=16,
        constants=args.constants,
        target=0.0,
        max_candidates=max(at),
    )
    print(
        f"{args.slots} slots, {args.constants} knobs, batches of 16; per window of the "
        "last tenth below each count:\n"
    )
    print(
        "| store | candidates | controller ms / decision | ms / step | context ms / call "
        "| line ms / call | CPU s so far |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind in args.stores.split(","):
        bench(kind, args.redis_url if kind == "redis" else None, model, at)


def bench(kind: str, url: str | None, model: SimModel, at: list[int]) -> None:
    """One store's rows, each printed as the ledger passes its count."""
    if url:
        redis.Redis.from_url(url).flushdb()
    started = time.process_time()
    left = list(at)

    def report(got: Timings, n: int) -> None:
        while left and n > left[0]:
            row(kind, left.pop(0), got, time.process_time() - started)

    got = run(model, url, report)
    for n in left:
        row(kind, n, got, time.process_time() - started)
    if url:
        redis.Redis.from_url(url).flushdb()


def row(kind: str, n: int, got: Timings, took: float) -> None:
    steps, ctx, lines = window(got.steps, n), window(got.contexts, n), window(got.lines, n)
    decided = sum(d for _, _, d in steps)
    spent = sum(s for _, s, _ in steps)
    print(
        f"| {kind} | {n} | {ms(spent / decided) if decided else '—'} "
        f"| {ms(spent / len(steps)) if steps else '—'} "
        f"| {ms(sum(s for _, s in ctx) / len(ctx)) if ctx else '—'} "
        f"| {ms(sum(s for _, s in lines) / len(lines)) if lines else '—'} "
        f"| {took:.0f} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
