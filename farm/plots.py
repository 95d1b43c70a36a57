"""progress.png: autoresearch's picture of a campaign, from the ledger.

Every trial with a score is a dot in the order results came in: baseline runs, candidates
(grey), the trials of kept candidates (green, numbered). The running best is a step line
inside its noise band (±σ in force at each incumbent), with the keep threshold a candidate
had to beat as a dashed line. Failures have no score, so they are drawn apart, in a strip
of their own under the scores, by outcome. Kept changes are numbered on a lane along the
top of the plot, spread so that no two numbers touch, and listed with their titles beside
it: no label overlaps another or runs off the figure, however many keeps are close together.
"""

from __future__ import annotations

from pathlib import Path

# A Figure of its own, not pyplot: no global state and no display, Agg renders the file.
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from farm.progress import History, Point, fit, num
from farm.records import Direction, Outcome, TrialKind

KEPT = "#1a9850"
BASELINE = "#4575b4"
FAILED = "#d73027"
OTHER = "#9e9e9e"
LANE_GAP = 0.032  # least distance between two keep numbers, in axes widths
LIST_ROWS = 22  # kept changes listed under the legend; more are summed up in one row
TITLE_CHARS = 34


def progress_png(
    h: History, path: Path, *, metric: str, titles: dict[int, str], campaign: str
) -> Path:
    """Draw the campaign's progress to `path` (PNG, 1440×720)."""
    draw(h, metric=metric, titles=titles, campaign=campaign).savefig(path)
    return path


def draw(h: History, *, metric: str, titles: dict[int, str], campaign: str) -> Figure:
    minimize = h.direction is Direction.MINIMIZE
    fig = Figure(figsize=(12, 6), dpi=120)
    grid = fig.add_gridspec(2, 2, width_ratios=[3.2, 1], height_ratios=[6, 1], wspace=0.03)
    ax = fig.add_subplot(grid[0, 0])
    strip = fig.add_subplot(grid[1, 0], sharex=ax)
    side = fig.add_subplot(grid[:, 1])
    side.axis("off")

    # A short screen's metric is on another scale (less training): not plotted with the rest.
    ok = [p for p in h.points if p.metric is not None and p.kind is not TrialKind.SHORT]
    lo, hi = _ylim(h, ok, minimize=minimize)
    clipped = _scores(ax, ok, lo, hi)
    _best(ax, h, minimize=minimize)
    failed = [p for p in h.points if p.outcome != Outcome.OK]  # a passed pre-flight: no metric
    _failures(strip, failed)
    if failed:  # in the legend, not on the strip, where it could cover a mark
        ax.scatter([], [], marker="x", color=FAILED, label=f"failed ({len(failed)}): below")

    ax.set_ylim(lo, hi)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, (h.points[-1].n if h.points else 0) + 1)
    ax.tick_params(labelbottom=False)
    ax.set_ylabel(f"{metric} ({'lower' if minimize else 'higher'} is better)")
    ax.grid(alpha=0.3)
    strip.set_xlabel("trial (in the order results came in)")
    start = num(h.best[0][1]) if h.best else "—"
    best = num(h.best[-1][1]) if h.best else "—"
    ax.set_title(
        fit(
            f"{campaign}: {len(h.points)} trials, {len(h.kept)} kept — {metric} {start} → {best}",
            90,
        ),
        loc="left",
    )
    if clipped:
        ax.plot([], [], " ", label=f"{clipped} off the scale")
    _lane(ax, h)
    _side(side, ax, h, titles)
    fig.subplots_adjust(left=0.07, right=0.99, top=0.93, bottom=0.09, hspace=0.06)
    return fig


def _scores(ax: Axes, ok: list[Point], lo: float, hi: float) -> int:
    """The dots; returns how many fell outside [lo, hi]."""
    clipped = 0

    def scatter(points: list[Point], **style: object) -> None:
        nonlocal clipped
        inside = [p for p in points if p.metric is not None and lo <= p.metric <= hi]
        clipped += len(points) - len(inside)
        ax.scatter([p.n for p in inside], [p.metric for p in inside], **style)  # type: ignore[arg-type]

    others = [p for p in ok if p.kind is not TrialKind.BASELINE and not p.kept]
    scatter(others, s=18, color=OTHER, alpha=0.6, label="candidate trial", zorder=2)
    baseline = [p for p in ok if p.kind is TrialKind.BASELINE]
    scatter(baseline, s=30, marker="s", color=BASELINE, label="baseline run", zorder=3)
    kept = [p for p in ok if p.kept]
    scatter(kept, s=46, color=KEPT, edgecolor="black", lw=0.6, label="kept candidate", zorder=4)
    return clipped


def _best(ax: Axes, h: History, *, minimize: bool) -> None:
    """The running best, its noise band and the threshold a candidate had to beat."""
    if not h.best:
        return
    last = h.points[-1].n + 1
    ends = [n for n, _ in h.best[1:]] + [last]
    band = thr = False
    for (start, value), end, sigma, threshold in zip(
        h.best, ends, h.sigmas, h.thresholds, strict=True
    ):
        if sigma:
            ax.fill_between(
                [start, end],
                value - sigma,
                value + sigma,
                color=KEPT,
                alpha=0.12,
                lw=0,
                zorder=1,
                label=None if band else "noise band (±σ)",
            )
            band = True
        if threshold:
            bar = value - threshold if minimize else value + threshold
            ax.plot(
                [start, end],
                [bar, bar],
                ls="--",
                lw=1,
                color=KEPT,
                zorder=1,
                label=None if thr else "keep threshold",
            )
            thr = True
    xs = [n for n, _ in h.best] + [last]
    ys = [v for _, v in h.best] + [h.best[-1][1]]
    ax.step(xs, ys, where="post", color=KEPT, lw=2, label="running best", zorder=5)


def _failures(strip: Axes, failed: list[Point]) -> None:
    """Failed trials by outcome, in their own strip: a failure is a status, not a score."""
    kinds = sorted({p.outcome for p in failed})
    for i, outcome in enumerate(kinds):
        xs = [p.n for p in failed if p.outcome == outcome]
        strip.scatter(xs, [i] * len(xs), marker="x", s=26, color=FAILED, zorder=3)
    strip.set_yticks(range(len(kinds)), [k.replace("_", " ") for k in kinds], fontsize=7)
    strip.set_ylim(-0.7, max(len(kinds), 1) - 0.3)
    strip.grid(axis="x", alpha=0.3)
    if not failed:
        strip.set_yticks([0], ["no failures"], fontsize=7)


def lane_positions(xs: list[float], *, gap: float = LANE_GAP) -> list[float]:
    """Label positions (axes fractions) near `xs` (sorted, in [0, 1]), at least `gap` apart
    and inside [gap/2, 1 - gap/2]: pushed right past each other, then back left from the
    end. Too many to fit at that gap: evenly spread over the lane instead."""
    n = len(xs)
    if not n:
        return []
    lo, hi = gap / 2, 1 - gap / 2
    if (n - 1) * gap > hi - lo:
        step = (hi - lo) / max(n - 1, 1)
        return [lo + i * step for i in range(n)]
    out: list[float] = []
    for x in xs:
        out.append(max(x, lo, out[-1] + gap if out else lo))
    out[-1] = min(out[-1], hi)
    for i in range(n - 2, -1, -1):
        out[i] = min(out[i], out[i + 1] - gap)
    return out


def _lane(ax: Axes, h: History) -> None:
    """Keep numbers on a lane along the worse edge (where _ylim leaves room), each tied to
    its point by a thin line."""
    if not h.kept:
        return
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    xs = [min(1.0, max(0.0, (n - x0) / (x1 - x0))) for n, _ in h.kept]
    for i, ((n, d), at) in enumerate(zip(h.kept, lane_positions(xs), strict=True), start=1):
        metric = d.metric if d.metric is not None else y1
        target = (n, min(max(metric, y0), y1))
        ax.annotate(
            str(i),
            xy=target,
            xycoords="data",
            xytext=(at, 0.965 if h.direction is Direction.MINIMIZE else 0.035),
            textcoords="axes fraction",
            ha="center",
            va="center",
            fontsize=7,
            color="white",
            bbox={"boxstyle": "circle,pad=0.25", "fc": KEPT, "ec": "none"},
            arrowprops={"arrowstyle": "-", "color": KEPT, "lw": 0.6, "alpha": 0.7},
            zorder=7,
            gid="keep-label",
        )


def _side(side: Axes, ax: Axes, h: History, titles: dict[int, str]) -> None:
    """The legend, then the kept changes by number, title and delta (rows never clip)."""
    handles, labels = ax.get_legend_handles_labels()
    side.legend(
        handles, labels, loc="upper left", fontsize=8, frameon=False, bbox_to_anchor=(0.0, 1.0)
    )
    rows = []
    for i, (_, d) in enumerate(h.kept, start=1):
        delta = f" {d.delta:+.3g}" if d.delta is not None else ""
        rows.append(
            f"{i:>2}. c{d.candidate_id} "
            + fit(titles.get(d.candidate_id, ""), TITLE_CHARS - len(str(d.candidate_id)))
            + delta
        )
    if len(rows) > LIST_ROWS:
        rows = [*rows[: LIST_ROWS - 1], f"    … and {len(rows) - LIST_ROWS + 1} more kept"]
    if rows:
        side.text(
            0.0,
            0.7,
            "kept, in order:\n" + "\n".join(rows),
            transform=side.transAxes,
            fontsize=7,
            family="monospace",
            va="top",
            ha="left",
            linespacing=1.35,
            gid="keep-list",
        )


def _ylim(h: History, ok: list[Point], *, minimize: bool) -> tuple[float, float]:
    """Limits that show the baseline, the best, kept trials and the noise band; far-off
    trials clip. A diverged candidate can be orders of magnitude worse than the rest, which
    would flatten everything that matters into one line."""
    core = [v for _, v in h.best] + [
        p.metric for p in ok if p.metric is not None and (p.kept or p.kind is TrialKind.BASELINE)
    ]
    core += [v + s * k for (_, v), s in zip(h.best, h.sigmas, strict=True) if s for k in (-1, 1)]
    if not core:
        core = [p.metric for p in ok if p.metric is not None] or [0.0]
    lo, hi = min(core), max(core)
    span = (hi - lo) or abs(hi) * 0.1 or 1.0
    # Room on the worse side for candidates somewhat worse than the baseline, and for the
    # lane of keep numbers.
    return (lo - 0.15 * span, hi + 0.6 * span) if minimize else (lo - 0.6 * span, hi + 0.15 * span)
