"""What a person sees of a campaign: `farm status`, the decision and status lines of a running
one (farm/terminal.py draws them live), and its trials as a sequence for progress.png.

`snapshot` reads the store's running aggregates and only the records it shows (the keeps,
the last decisions, the last results), so `farm status` costs the same at 40,000 trials as
at 40. Every line fits `WIDTH` columns: titles and reasons are cut at a word, never inside
one, and a candidate's words have their control characters replaced before they are shown.
"""

from __future__ import annotations

import bisect
import textwrap
from dataclasses import dataclass, field
from typing import Any

from farm import figures, merge
from farm.config import MergeConfig, stored_config
from farm.figures import Step
from farm.merge import baseline, runs_of
from farm.records import (
    CandidateState,
    Decision,
    DecisionKind,
    Direction,
    Incumbent,
    Trial,
    TrialKind,
    TrialState,
)
from farm.store import Store
from farm.store.stats import DEAD, CampaignStats
from farm.text import clean_line
from farm.trials import baseline_ids

WIDTH = 80
KEPT_SHOWN = 10  # `farm status` lists the last keeps by title; the sparkline has them all
MARKS = "(b baseline · ok ✓ kept ✗ failed)"
# Candidates that have been decided (a rejected draft never got a slot).
DECIDED = (
    CandidateState.KEPT,
    CandidateState.DISCARDED,
    CandidateState.CRASHED,
    CandidateState.SUPERSEDED,
    CandidateState.REVERTED,
)


@dataclass(frozen=True)
class ClusterView:
    """What a dispatcher sees of the Ray nodes that can run its trials (farm/dispatch.py
    looks every few seconds; its status line and its metrics show this)."""

    slots: int  # the slots it fills now: those asked for, at most what live nodes hold
    asked: int
    alive: int = 0  # live nodes that can run a trial
    lost: int = 0  # how many fewer than the most it has seen alive
    # Live nodes of each hardware class trials have run on (a class with 0 has none left).
    classes: dict[str, int] = field(default_factory=dict)
    unplaced: int = 0  # trials it holds that have waited longer than a budget for a node
    placement_wait_s: float = 0.0  # the longest of those waits

    def text(self) -> str:
        """What the status line adds to `slots busy/slots`: "" while all is well."""
        gone = [c for c, n in sorted(self.classes.items()) if n == 0]
        parts = [
            f"{self.lost} node{'s' if self.lost != 1 else ''} lost" if self.lost else "",
            f"no node of {', '.join(gone)}" if gone and len(self.classes) > 1 else "",
            f"{self.unplaced} unplaced" if self.unplaced else "",
        ]
        return ", ".join(p for p in parts if p)


# -- the campaign as a sequence of trials (progress.png, report.md) ---------------------------
@dataclass
class Point:
    """One finished trial; `n` numbers trials in the order their results came in."""

    n: int
    kind: TrialKind
    outcome: str  # an Outcome value, or DEAD
    metric: float | None
    candidate_id: int | None
    kept: bool  # its candidate was kept


@dataclass
class History:
    """The campaign as a sequence: every finished trial, and the running best."""

    direction: Direction
    points: list[Point]
    # (trial number, the incumbent's estimate from then on): the baseline, then each keep.
    best: list[tuple[int, float]]
    kept: list[tuple[int, Decision]]  # each keep, at the trial number it happened
    sigmas: list[float | None]  # the σ in force from each `best` entry on
    thresholds: list[float | None]  # what a candidate had to improve by, from each on


def history(
    trials: list[Trial],
    decisions: list[Decision],
    *,
    line: list[Step],
    baseline_sigma: float | None,
    direction: Direction,
    config: dict[str, Any] | None = None,
) -> History:
    """`line`: the incumbents at their values now (farm.figures); `baseline_sigma`: the
    baseline's σ (outliers out); `config`: the campaign's farm.toml snapshot, for the keep
    threshold at each step."""

    def finished_at(t: Trial) -> float:
        return t.result.finished_at if t.result else t.lease_expires

    done = sorted((t for t in trials if t.result or t.state is TrialState.DEAD), key=finished_at)
    kept_ids = {step.candidate_id for step in line[1:]}
    points = [
        Point(
            n=i,
            kind=t.kind,
            outcome=t.result.outcome.value if t.result else DEAD,
            metric=t.result.metric if t.result else None,
            candidate_id=t.candidate_id,
            kept=t.candidate_id in kept_ids,
        )
        for i, t in enumerate(done, start=1)
    ]
    times = [finished_at(t) for t in done]
    by_cand = {d.candidate_id: d for d in decisions if d.kind is DecisionKind.KEPT}
    base_done = [p.n for p in points if p.kind is TrialKind.BASELINE]
    best: list[tuple[int, float]] = []
    sigmas: list[float | None] = []
    kept: list[tuple[int, Decision]] = []
    for step in line:
        if step.candidate_id is None:  # the baseline, once its runs are in
            best.append((max(base_done, default=1), step.metric))
            sigmas.append(baseline_sigma)
            continue
        d = by_cand[step.candidate_id]
        n = max(1, bisect.bisect_right(times, step.at))
        kept.append((n, d))
        best.append((n, step.metric))
        sigmas.append(d.sigma if d.sigma is not None else sigmas[-1])
    thresholds = [
        keep_threshold(config, sigma, Incumbent(sha="", metric=step.metric, runs=step.runs))
        if config is not None and sigma is not None
        else None
        for step, sigma in zip(line, sigmas, strict=True)
    ]
    return History(
        direction=direction,
        points=points,
        best=best,
        kept=kept,
        sigmas=sigmas,
        thresholds=thresholds,
    )


def full_history(store: Store, campaign: str) -> History:
    """Every trial of a campaign (reads the whole ledger: for reports, not for status)."""
    camp = store.get_campaign(campaign)
    if camp is None:
        raise KeyError(campaign)
    decisions = store.list_decisions(campaign)
    kept = [d for d in decisions if d.kind is DecisionKind.KEPT]
    return history(
        store.list_trials(campaign),
        decisions,
        line=figures.line(store, camp, kept, store.get_incumbent(campaign)),
        baseline_sigma=camp.sigma,
        direction=Direction(camp.config.get("direction", Direction.MINIMIZE)),
        config=camp.config,
    )


# -- where a campaign stands, from the aggregates ----------------------------------------------
@dataclass
class Snapshot:
    campaign: str
    metric: str
    direction: Direction
    stats: CampaignStats
    incumbent_sha: str
    incumbent_metric: float | None
    incumbent_runs: int  # the runs its metric stands on; 0 for a keep merged untried
    line: list[Step]  # the incumbents in order, at their values now (farm.figures)
    start_metric: float | None  # the start commit's baseline mean
    baseline_sigma: float | None
    sigma: float | None  # in force: the latest decision's, else the baseline's
    threshold: float | None  # what a confirmed candidate must improve by now
    repeats: int  # baseline runs the campaign asks for
    started_at: float
    kept: list[Decision]  # every keep, in order
    recent: list[Decision]  # the last decisions, in order
    results: list[Trial]  # the last results, in the order they came in
    titles: dict[int, str]  # of the last KEPT_SHOWN keeps and of `recent`
    # How the recent failed candidates failed (no_metric, timeout, tampered…): a decision
    # says `crashed` for every way a trial can fail.
    failures: dict[int, str]

    @property
    def decided(self) -> int:
        return sum(self.stats.candidates[s] for s in DECIDED)

    @property
    def estimated(self) -> bool:
        """The incumbent is a keep merged untried whose own runs have not measured it."""
        return bool(self.line) and self.line[-1].estimated

    @property
    def failed(self) -> int:
        """Trials that ended without a metric (dead ones included)."""
        return sum(n for (_, outcome), n in self.stats.outcomes.items() if outcome != "ok")

    @property
    def finished(self) -> int:
        return sum(self.stats.outcomes.values())


def snapshot(store: Store, campaign: str, *, last: int = 10, results: int = 40) -> Snapshot:
    camp = store.get_campaign(campaign)
    if camp is None:
        raise KeyError(campaign)
    cfg = stored_config(camp.config)
    inc = store.get_incumbent(campaign)
    stats = store.stats(campaign)
    kept = store.list_decisions(campaign, kinds={DecisionKind.KEPT})
    recent = store.list_decisions(campaign, last=last) if last else []
    titles = {}
    for cid in {d.candidate_id for d in [*kept[-KEPT_SHOWN:], *recent]}:
        cand = store.get_candidate(campaign, cid)
        titles[cid] = cand.title if cand else ""
    sigma = figures.sigma_in_force(camp, stats)
    return Snapshot(
        campaign=campaign,
        metric=cfg.metric,
        direction=cfg.direction,
        stats=stats,
        incumbent_sha=inc.sha,
        incumbent_metric=inc.metric,
        incumbent_runs=inc.runs,
        line=figures.line(store, camp, kept, inc),
        start_metric=camp.baseline_metric,
        baseline_sigma=camp.sigma,
        sigma=sigma,
        threshold=keep_threshold(camp.config, sigma, inc) if sigma is not None else None,
        repeats=cfg.merge.repeats,
        started_at=camp.created_at,
        kept=kept,
        recent=recent,
        results=store.recent_results(campaign, results) if results else [],
        titles=titles,
        failures={d.candidate_id: failure_label(store, campaign, d) for d in recent},
    )


def baseline_noise(store: Store, campaign: str) -> str:
    """What the baseline runs said (min/median/max, outliers, deterministic, hardware
    classes), as the campaign said it, for `farm status` and the report; empty until the
    baseline is in."""
    camp = store.get_campaign(campaign)
    if camp is None or camp.sigma is None:
        return ""
    cfg = stored_config(camp.config)
    trials = [store.get_trial(campaign, i) for i in baseline_ids(cfg.merge.repeats)]
    runs = runs_of([t for t in trials if t is not None])
    if len(runs) < 2:
        return ""
    return baseline(runs, cfg.merge).describe(cfg.metric)


def short_screens(store: Store, campaign: str) -> str:
    """What short screens ([merge] screen_budget_s) did and how their ranks agree with full
    budgets (the monitor that stops them), for `farm status` and the report; empty when the
    campaign screens at the full budget alone."""
    camp = store.get_campaign(campaign)
    m = stored_config(camp.config).merge if camp else MergeConfig()
    if camp is None or m.screen_budget_s <= 0:
        return ""
    trials = store.list_trials(campaign)
    shorts = {t.candidate_id for t in trials if t.kind is TrialKind.SHORT and t.result}
    went_on = {t.candidate_id for t in trials if t.kind is TrialKind.CANDIDATE} & shorts
    return (
        f"short screens of {m.screen_budget_s:g} s: {len(shorts)} in, {len(went_on)} went on "
        f"to a full budget (the best {m.promote:.0%} against each incumbent); rank agreement "
        f"with full budgets: {merge.fidelity(trials, m).describe(m)}"
    )


def keep_threshold(config: dict[str, Any], sigma: float, inc: Incumbent) -> float:
    """The improvement a confirmed candidate must show against the incumbent now: the merge
    rule's own threshold for `confirm` runs against the incumbent's runs."""
    m = stored_config(config).merge
    return merge.keep_threshold(m, sigma=sigma, metric=inc.metric, runs=inc.runs)


@dataclass
class Pace:
    """A run against its candidate budget: how many decided, how many to go, when done."""

    decided: int
    total: int | None  # --max-candidates, when given
    eta_s: float | None  # at this run's pace; None until one candidate is decided
    baseline: tuple[int, int] | None = None  # (runs done, asked) until the baseline is in

    @classmethod
    def of(
        cls, s: Snapshot, *, max_candidates: int | None, decided_before: int, elapsed_s: float
    ) -> Pace:
        done_now = s.decided - decided_before
        eta = None
        if max_candidates is not None and done_now > 0:
            eta = max(0.0, (max_candidates - s.decided) * elapsed_s / done_now)
        return cls(decided=s.decided, total=max_candidates, eta_s=eta, baseline=_baseline(s))

    def text(self) -> str:
        if self.baseline is not None:
            return f"baseline {self.baseline[0]}/{self.baseline[1]} runs"
        if self.total is None:
            return f"cand {self.decided} decided"
        eta = f" ETA {clock(self.eta_s)}" if self.eta_s is not None else ""
        return f"cand {self.decided}/{self.total}{eta}"


def _baseline(s: Snapshot) -> tuple[int, int] | None:
    """(runs done, runs asked) while the baseline is still being measured."""
    if s.start_metric is not None:
        return None
    done = sum(n for (kind, _), n in s.stats.outcomes.items() if kind == TrialKind.BASELINE)
    return done, s.repeats


def failure_outcome(trials: list[Trial]) -> str:
    """How the first failed trial of a candidate ended (an Outcome value, or `dead`)."""
    for t in trials:
        if t.state is TrialState.DEAD:
            return DEAD
        if t.result is not None and not t.result.outcome.is_ok():
            return t.result.outcome.value
    return DecisionKind.CRASHED.value


def failure_label(store: Store, campaign: str, d: Decision) -> str:
    """A failed candidate's outcome for its decision line; "" for any other decision."""
    if d.kind is not DecisionKind.CRASHED:
        return ""
    return failure_outcome(store.list_trials(campaign, candidate_id=d.candidate_id))


# -- text ---------------------------------------------------------------------------------
def plural(n: int, word: str) -> str:
    """`1 slot`, `2 slots`, `0 slots`."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def fit(text: str, width: int) -> str:
    """`text` on one line of at most `width` columns, cut with '…' (at a word if it can).

    A candidate's words are cleaned first: no escape sequence reaches the terminal."""
    text = clean_line(text)
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    cut = text[: width - 1]
    # At the last word that keeps half the line; a long path or word is cut where it must be.
    if not text[width - 1].isspace() and cut.rfind(" ") >= width // 2:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip() + "…"


def num(x: float | None) -> str:
    return "—" if x is None else f"{x:.5g}"


def clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


def decision_line(
    d: Decision, title: str, metric: str, *, label: str = "", width: int = WIDTH
) -> str:
    """Two lines: the candidate, its decision (or `label`: how it failed) and title; then
    the reason, wrapped."""
    detail = f" -> {metric} {d.metric:.5g}" if d.kind is DecisionKind.KEPT and d.metric else ""
    head = f"  c{d.candidate_id:<4} {(label or d.kind.value).upper():<10} "
    head += fit(title, width - len(head) - len(detail)) + detail
    indent = " " * 9
    reason = textwrap.wrap(clean_line(d.reason), width - len(indent), max_lines=2, placeholder=" …")
    return "\n".join([head, *(indent + line for line in reason)])


def note_text(text: str) -> str:
    """A line the campaign says once: `farm: ` and the text, wrapped at WIDTH columns."""
    return textwrap.fill(clean_line(text), WIDTH, initial_indent="farm: ", subsequent_indent="  ")


def decision_text(store: Store, campaign: str, d: Decision, metric: str) -> str:
    """The decision as a role prints it when it is made, naming a failure's outcome."""
    cand = store.get_candidate(campaign, d.candidate_id)
    label = failure_label(store, campaign, d)
    return decision_line(d, cand.title if cand else "", metric, label=label)


def status_line(
    s: Snapshot,
    *,
    slots: int,
    busy: int,
    elapsed_s: float,
    pace: Pace,
    cluster: ClusterView | None = None,
    width: int = WIDTH,
) -> str:
    """One line: time, candidates against the budget with ETA, slots (and nodes lost, trials
    unplaced), trials, the best.

    What does not fit goes, least useful first: the failure count, the trials, the slots.
    """
    trouble = cluster.text() if cluster else ""
    parts = [
        f"[{clock(elapsed_s)}] {pace.text()}",
        f"slots {busy}/{slots}" + (f" ({trouble})" if trouble else ""),
        f"trials {s.finished}",
        f"{s.failed} failed",
        f"{s.metric} {num(s.incumbent_metric)}" + (" (estimated)" if s.estimated else ""),
    ]
    for drop in (None, 3, 2, 1):
        if drop is not None:
            del parts[drop]
        line = " · ".join(parts)
        if len(line) <= width:
            return line
    return fit(line, width)


def status_report(s: Snapshot, *, width: int = WIDTH, baseline: str = "", screens: str = "") -> str:
    """`farm status`; `baseline`: what baseline_noise says, `screens`: short_screens."""
    better = "lower" if s.direction is Direction.MINIMIZE else "higher"
    st = s.stats
    gain = ""
    if s.start_metric is not None and s.incumbent_metric is not None:
        delta = s.direction.improvement(old=s.start_metric, new=s.incumbent_metric)
        rel = f" ({100 * delta / abs(s.start_metric):+.1f}%)" if s.start_metric else ""
        gain = f" · gain {delta:+.4g}{rel}"
    outcomes = ", ".join(
        f"{o} {n}"
        for o, n in sorted(_by_outcome(st).items(), key=lambda kv: (kv[0] != "ok", kv[0]))
        if n
    )
    cands = ", ".join(f"{state.value} {n}" for state, n in st.candidates.items() if n)
    lines = [
        f"campaign {s.campaign} · {s.metric}, {better} is better",
        f"  incumbent {s.incumbent_sha[:10]} {s.metric} {num(s.incumbent_metric)}"
        + (" (estimated, not measured)" if s.estimated else "")
        + f" · start {num(s.start_metric)}{gain}",
        f"  noise σ {num(s.sigma)} (baseline {num(s.baseline_sigma)})"
        f" · keep threshold {num(s.threshold)}",
        *textwrap.wrap(baseline, width, initial_indent="  ", subsequent_indent="    "),
        *textwrap.wrap(screens, width, initial_indent="  ", subsequent_indent="    "),
        "  trials: "
        + ", ".join(f"{state.value} {st.trials[state]}" for state in TrialState)
        + (f" | {outcomes}" if outcomes else ""),
        f"  candidates: {cands or 'none'}",
        *picture(s, width=width),
    ]
    if s.kept:
        more = f" (the last {KEPT_SHOWN} of {len(s.kept)})" if len(s.kept) > KEPT_SHOWN else ""
        lines.append(f"  kept, in order{more}:")
        now = {step.candidate_id: step for step in s.line}
        for d in s.kept[-KEPT_SHOWN:]:
            step = now.get(d.candidate_id)
            value = "reverted" if step is None else f"{s.metric} {num(step.metric)}"
            value += " (estimated)" if step and step.estimated else ""
            tail = f" {value}" + (f" Δ {d.delta:+.4g}" if d.delta else "")
            head = f"    c{d.candidate_id:<4} "
            title = fit(s.titles.get(d.candidate_id, ""), width - len(head) - len(tail) - 1)
            lines.append(f"{head}{title:<{width - len(head) - len(tail) - 1}} {tail.strip()}")
    if s.recent:
        lines.append(f"  last {len(s.recent)} decisions:")
        for d in s.recent:
            title, label = s.titles.get(d.candidate_id, ""), s.failures.get(d.candidate_id, "")
            lines.append(decision_line(d, title, s.metric, label=label, width=width))
    return "\n".join(line.rstrip() for line in "\n".join(lines).splitlines())


def _by_outcome(st: CampaignStats) -> dict[str, int]:
    total: dict[str, int] = {}
    for (_, outcome), n in st.outcomes.items():
        total[outcome] = total.get(outcome, 0) + n
    return total


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(SPARK[round((v - lo) / span * (len(SPARK) - 1))] for v in values)


def picture(s: Snapshot, *, width: int = WIDTH) -> list[str]:
    """The best so far over the campaign's time as a sparkline; the last results as marks."""
    lines = []
    if s.line:
        steps = [(step.at, step.metric) for step in s.line]
        end = max(s.stats.last_result_at or 0.0, steps[-1][0])
        better = "lower" if s.direction is Direction.MINIMIZE else "higher"
        head = f"  best {s.metric}: {num(steps[0][1])} "
        tail = f" {num(steps[-1][1])} ({len(s.line) - 1} kept, {better} is better)"
        n = max(8, width - len(head) - len(tail))
        times = [s.started_at + (end - s.started_at) * i / (n - 1) for i in range(n)]
        values = [[v for at, v in steps if at <= t][-1] for t in times]
        lines.append(head + sparkline(values) + tail)
    if s.results:
        kept = {d.candidate_id for d in s.kept}
        head = "  last {} trials: "
        n = min(len(s.results), width - len(head.format(99)) - len(MARKS) - 1)
        marks = "".join(_mark(t, kept) for t in s.results[-n:])
        lines.append(f"{head.format(n)}{marks} {MARKS}")
    return lines


def _mark(t: Trial, kept: set[int]) -> str:
    if t.result is None or not t.result.outcome.is_ok():
        return "✗"
    if t.kind is TrialKind.BASELINE:
        return "b"
    return "✓" if t.candidate_id in kept else "·"
