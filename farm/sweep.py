"""`farm simulate`'s sweep: each setting over a few seeds against the one-slot sequential
loop on the same seeds, the table of it, and what the controller decided in each run."""

from __future__ import annotations

import collections
import concurrent.futures
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace

from farm.simulate import SimModel, SimResult, simulate


@dataclass
class Row:
    farm: SimResult
    sequential: SimResult | None  # None: not run (`--no-sequential`, for large farms)

    @property
    def speedup(self) -> float | None:
        f = self.farm.reached_s
        s = self.sequential.reached_s if self.sequential else None
        return s / f if f and s else None

    @property
    def efficiency(self) -> float | None:
        """Sequential time ÷ (N × farm time) to the same target."""
        sp = self.speedup
        return sp / self.farm.model.slots if sp is not None else None


COLUMNS = [
    "slots",
    "schedule",
    "batch",
    "backlog",
    "max rebases",
    "short screen",
    "late knobs",
    "ρ",
    "paired",
    "LLM s",
    "utilisation",
    "starved",
    "trials/slot-h",
    "budgets/cand.",
    "to target (h)",
    "sequential (h)",
    "speed-up",
    "parallel eff.",
    "kept",
    "false keeps",
    "2σ kept",
    "rank τ",
    "calls",
]


def cells(rows: list[Row]) -> list[str]:
    """One table row for the runs of one setting (several seeds: medians)."""
    m = rows[0].farm.model

    def med(xs: list[float | None], fmt: str) -> str:
        got = [x for x in xs if x is not None]
        if not got:
            return "not reached"
        text = format(statistics.median(got), fmt)
        return text if len(got) == len(xs) else f"{text} ({len(got)}/{len(xs)})"

    def h(x: float | None) -> float | None:
        return None if x is None else x / 3600

    return [
        str(m.slots),
        m.schedule,
        _sized(m.batch_size, [r.farm.feed.batch for r in rows]),
        _sized(m.backlog, [r.farm.feed.backlog for r in rows]),
        str(m.merge.max_rebases),
        f"{m.screen_fraction:.0%}" if m.screen_fraction else "—",
        f"{m.late:.0%}",
        f"{m.rho:g}",
        "on" if m.merge.paired else "off",
        f"{m.llm_s:g}",
        med([r.farm.utilisation for r in rows], ".1%"),
        med([r.farm.starved_s / (m.slots * r.farm.wall_s) for r in rows], ".1%"),
        med([r.farm.trials_per_slot_hour for r in rows], ".2f"),
        med([r.farm.budgets_per_candidate for r in rows], ".2f"),
        med([h(r.farm.reached_s) for r in rows], ".2f"),
        *(
            [
                med([h(r.sequential.reached_s) if r.sequential else None for r in rows], ".1f"),
                med([r.speedup for r in rows], ".1f"),
                med([r.efficiency for r in rows], ".0%"),
            ]
            if rows[0].sequential
            else ["not run"] * 3
        ),
        med([float(r.farm.kept) for r in rows], ".0f"),
        med([float(r.farm.false_keeps) for r in rows], ".0f"),
        near(rows, 2.0),
        agreement(rows) if m.screen_fraction else "—",
        med([float(r.farm.proposer_calls) for r in rows], ".0f"),
    ]


def near(rows: list[Row], gain: float) -> str:
    """The share of true gains of about `gain` σ kept, over all the seeds' runs; with short
    screens, also among those the test judged (the rest were ranked out short)."""

    def count(tested: bool) -> tuple[int, int]:
        kept, judged = zip(*(r.farm.kept_near(gain, tested=tested) for r in rows), strict=True)
        return sum(kept), sum(judged)

    kept, judged = count(False)
    if not judged:
        return "none"
    said = f"{kept / judged:.0%} of {judged}"
    if rows[0].farm.model.screen_fraction:
        said += " (tested: {} of {})".format(*count(True))
    return said


def _sized(given: int | None, used: list[int]) -> str:
    """A batch size or backlog: as given, or as sized (farm.propose.feed_sizes)."""
    if given is not None:
        return str(given)
    return "/".join(str(u) for u in dict.fromkeys(used)) + " (sized)"


def agreement(rows: list[Row]) -> str:
    """The rank monitor of each run: τ over its pairs, and when it stopped short screens."""
    said = []
    for r in rows:
        tau, n = r.farm.fidelity.tau, r.farm.fidelity.pairs
        text = "none" if tau is None else f"{tau:+.2f}/{n}"
        off = r.farm.short_off_s
        said.append(text + (f" off {off / 3600:.1f} h" if off is not None else ""))
    return "; ".join(said)


def summary(result: SimResult) -> str:
    """What the controller decided in one run, by kind and by where, in one line."""
    by: dict[str, collections.Counter[str]] = {}
    for d in result.decided:
        by.setdefault(d.decision.kind.value, collections.Counter())[d.stage] += 1
    said = []
    for kind, stages in sorted(by.items(), key=lambda kv: -sum(kv[1].values())):
        where = ", ".join(f"{n} {stage}" for stage, n in stages.most_common())
        said.append(f"{sum(stages.values())} {kind} ({where})")
    return "; ".join(said) + f"; {result.false_keeps} of {result.kept} keeps false"


def table(results: list[list[Row]]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---:" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(cells(rows)) + " |" for rows in results]
    return "\n".join(lines)


def sweep(
    models: list[SimModel],
    *,
    seeds: int,
    compare: bool = True,
    on_row: Callable[[list[Row]], None] | None = None,
    jobs: int = 1,
) -> list[list[Row]]:
    """Every model over `seeds` seeds, each against the sequential loop on the same seed
    (unless not `compare`: at 1,000 slots the sequential loop is the slow part)."""
    # Every run is independent and seeded: with `jobs` > 1 that many processes run them at
    # once; each row is shown as soon as its runs are in, in the order of `models`.
    pool = concurrent.futures.ProcessPoolExecutor(jobs) if jobs > 1 else None

    def run(model: SimModel) -> _Result:
        return pool.submit(simulate, model) if pool else _Later(model)

    try:
        sequential: dict[str, _Result] = {}  # by the model's repr (MergeConfig is unhashable)
        planned = []
        for model in models:
            runs = []
            for s in range(seeds):
                m = replace(model, seed=model.seed + s)
                seq = m.sequential()
                if compare and repr(seq) not in sequential:
                    sequential[repr(seq)] = run(seq)
                runs.append((sequential.get(repr(seq)), run(m)))
            planned.append(runs)
        out = []
        for runs in planned:
            rows = [
                Row(sequential=seq.result() if seq else None, farm=farm.result())
                for seq, farm in runs
            ]
            out.append(rows)
            if on_row is not None:
                on_row(rows)
        return out
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)


class _Later:
    """A run in this process, made when its result is first asked for (jobs = 1)."""

    def __init__(self, model: SimModel) -> None:
        self.model = model
        self.made: SimResult | None = None

    def result(self) -> SimResult:
        if self.made is None:
            self.made = simulate(self.model)
        return self.made


_Result = concurrent.futures.Future[SimResult] | _Later
