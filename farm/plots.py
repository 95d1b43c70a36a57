"""progress.png: autoresearch's picture of a campaign, from the ledger.

Every finished trial is a dot in the order results came in: baseline runs, candidates
(grey), the trials of kept candidates (highlighted and labelled with their titles), and
failures as red crosses along the bottom, since a failure has no metric. The running best
(the incumbent's estimate) is a step line.
"""

from __future__ import annotations

from pathlib import Path

# A Figure of its own, not pyplot: no global state and no display, Agg renders the file.
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

from farm.progress import History, Point
from farm.records import Direction, TrialKind

KEPT = "#1a9850"
BASELINE = "#4575b4"
FAILED = "#d73027"
OTHER = "#9e9e9e"


def progress_png(
    h: History, path: Path, *, metric: str, titles: dict[int, str], campaign: str
) -> Path:
    """Draw the campaign's progress to `path` (PNG)."""
    minimize = h.direction is Direction.MINIMIZE
    fig = Figure(figsize=(12, 6), dpi=120)
    ax = fig.subplots()
    ok = [p for p in h.points if p.metric is not None]
    lo, hi = _ylim(h, ok, minimize=minimize)
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

    failed = [p for p in h.points if p.metric is None]
    if failed:
        # No metric to place a failure by: a cross along the bottom edge.
        bottom = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(
            [p.n for p in failed],
            [0.03] * len(failed),
            transform=bottom,
            marker="x",
            s=30,
            color=FAILED,
            label=f"failed ({len(failed)})",
            zorder=3,
        )
    if clipped:
        ax.plot([], [], " ", label=f"{clipped} off the scale")

    if h.best:
        last = h.points[-1].n
        xs = [n for n, _ in h.best] + [last]
        ys = [v for _, v in h.best] + [h.best[-1][1]]
        ax.step(xs, ys, where="post", color=KEPT, lw=2, label="running best", zorder=5)
    for i, (n, d) in enumerate(h.kept):
        title = titles.get(d.candidate_id, f"c{d.candidate_id}")
        title = title if len(title) <= 40 else title[:39] + "…"
        # Alternate above and below the line so that neighbouring labels do not collide.
        dy = (-14 if minimize else 14) * (1 if i % 2 == 0 else -1)
        ax.annotate(
            f"c{d.candidate_id} {title}",
            (n, d.metric),
            xytext=(4, dy),
            textcoords="offset points",
            fontsize=9,
            color="#0b4f27",
            rotation=20,
            ha="left",
            va="center",
            zorder=6,
        )

    ax.set_ylim(lo, hi)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if h.points:
        ax.set_xlim(0, h.points[-1].n + 1)
    better = "lower" if minimize else "higher"
    ax.set_xlabel("trial (in the order results came in)")
    ax.set_ylabel(f"{metric} ({better} is better)")
    start = f"{h.best[0][1]:.5g}" if h.best else "—"
    best = f"{h.best[-1][1]:.5g}" if h.best else "—"
    ax.set_title(
        f"{campaign}: {len(h.points)} trials, {len(h.kept)} kept — {metric} {start} → {best}"
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right" if minimize else "lower right", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _ylim(h: History, ok: list[Point], *, minimize: bool) -> tuple[float, float]:
    """Limits that show the baseline, the best and kept trials; far-off trials clip.

    A diverged candidate can be orders of magnitude worse than the rest, which would
    flatten everything that matters into one line.
    """
    core = [v for _, v in h.best] + [
        p.metric for p in ok if p.metric is not None and (p.kept or p.kind is TrialKind.BASELINE)
    ]
    if not core:
        core = [p.metric for p in ok if p.metric is not None] or [0.0]
    lo, hi = min(core), max(core)
    span = (hi - lo) or abs(hi) * 0.1 or 1.0
    # Room on the worse side for candidates somewhat worse than the baseline.
    return (lo - 0.15 * span, hi + 0.5 * span) if minimize else (lo - 0.5 * span, hi + 0.15 * span)
