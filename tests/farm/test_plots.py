"""progress.png's layout, measured on the rendered figure: keep labels never overlap or
leave the figure, failures sit apart from the scores, the noise band and threshold are drawn."""

from __future__ import annotations

import random
from itertools import combinations, pairwise

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.text import Annotation, Text
from matplotlib.transforms import Bbox

from farm.plots import LANE_GAP, draw, lane_positions
from farm.progress import History, Point
from farm.records import Decision, DecisionKind, Direction, TrialKind


def campaign_history(*, keeps: list[int], direction: Direction, trials: int = 300) -> History:
    """A long noisy campaign with keeps at the given trials and some failures."""
    rng = random.Random(3)
    sign = 1 if direction is Direction.MINIMIZE else -1
    value, points, kept = 1.0, [], []
    best, sigmas, thresholds = [(12, 1.0)], [0.05], [0.06]
    for n in range(1, trials + 1):
        failed = n > 12 and n not in keeps and rng.random() < 0.1
        if n in keeps:
            value -= sign * 0.03
            d = Decision(
                campaign="x",
                candidate_id=n,
                kind=DecisionKind.KEPT,
                reason="",
                metric=value,
                delta=0.03,
                sigma=0.04,
            )
            kept.append((n, d))
            best.append((n, value))
            sigmas.append(0.04)
            thresholds.append(0.05)
        points.append(
            Point(
                n=n,
                kind=TrialKind.BASELINE if n <= 12 else TrialKind.CANDIDATE,
                outcome=rng.choice(["crashed", "timeout", "no_metric"]) if failed else "ok",
                metric=None if failed else value + sign * abs(rng.gauss(0.05, 0.05)),
                candidate_id=None if n <= 12 else n,
                kept=n in keeps,
            )
        )
    return History(
        direction=direction,
        points=points,
        best=best,
        kept=kept,
        sigmas=sigmas,
        thresholds=thresholds,
    )


def rendered(h: History) -> Figure:
    long = "Swap the learning-rate schedule for warmup-stable-decay and retune the peak rate"
    titles = {d.candidate_id: long for _, d in h.kept}
    fig = draw(h, metric="val_bpb", titles=titles, campaign="a-campaign-with-a-long-name")
    FigureCanvasAgg(fig).draw()
    return fig


def extent(fig: Figure, artist: Text) -> Bbox:
    renderer = FigureCanvasAgg(fig).get_renderer()
    if isinstance(artist, Annotation) and artist.get_bbox_patch() is not None:
        return artist.get_bbox_patch().get_window_extent(renderer)  # type: ignore[union-attr]
    return artist.get_window_extent(renderer)


@pytest.mark.parametrize("direction", list(Direction))
def test_keep_labels_never_overlap_each_other_or_leave_the_figure(direction: Direction) -> None:
    # 25 keeps, most of them on neighbouring trials: the case that used to pile up labels.
    keeps = [*range(40, 60), 120, 121, 200, 299, 300]
    fig = rendered(campaign_history(keeps=keeps, direction=direction))
    page = fig.bbox
    labels = [a for a in fig.findobj(Annotation) if a.get_gid() == "keep-label"]
    assert sorted(int(a.get_text()) for a in labels) == list(range(1, len(keeps) + 1))
    boxes = [extent(fig, a) for a in labels]
    for a, b in combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)
    texts = [t for t in fig.findobj(Text) if t.get_text().strip() and t.get_visible()]
    for t in texts:
        box = extent(fig, t)
        inside = page.x0 - 0.5 <= box.x0 and box.x1 <= page.x1 + 0.5
        assert inside and page.y0 - 0.5 <= box.y0 and box.y1 <= page.y1 + 0.5, t.get_text()
    (listing,) = [t for t in fig.findobj(Text) if t.get_gid() == "keep-list"]
    assert "… and 4 more kept" in listing.get_text()  # 22 rows at most beside the plot


def test_failures_are_drawn_apart_from_the_scores_by_outcome() -> None:
    h = campaign_history(keeps=[50, 150], direction=Direction.MINIMIZE)
    fig = rendered(h)
    scores, strip = fig.axes[0], fig.axes[1]
    failed = {p.n: p.outcome for p in h.points if p.metric is None}
    assert failed
    in_scores = {
        x for c in scores.collections if isinstance(c, PathCollection) for x, _ in c.get_offsets()
    }
    assert not in_scores & set(failed)
    rows = [t.get_text() for t in strip.get_yticklabels()]
    assert rows == sorted({o.replace("_", " ") for o in failed.values()})
    marks = {
        int(x): rows[int(y)]
        for c in strip.collections
        if isinstance(c, PathCollection)
        for x, y in c.get_offsets()
    }
    assert marks == {n: o.replace("_", " ") for n, o in failed.items()}


def test_the_noise_band_and_keep_threshold_follow_each_incumbent() -> None:
    h = campaign_history(keeps=[50, 150], direction=Direction.MINIMIZE)
    scores = rendered(h).axes[0]
    labels = scores.get_legend_handles_labels()[1]
    assert {"noise band (±σ)", "keep threshold", "running best"} <= set(labels)
    dashed = [line for line in scores.get_lines() if line.get_linestyle() == "--"]
    # One threshold segment per incumbent, below it by the threshold (lower is better).
    assert [tuple(line.get_ydata()) for line in dashed] == [
        (v - t, v - t) for (_, v), t in zip(h.best, h.thresholds, strict=True) if t
    ]


def test_lane_positions_keep_their_order_and_distance_and_stay_inside() -> None:
    xs = sorted([0.0, 0.0, 0.01, 0.5, 0.51, 0.52, 0.99, 1.0])
    at = lane_positions(xs)
    assert at == sorted(at)
    assert all(b - a >= LANE_GAP - 1e-12 for a, b in pairwise(at))
    assert at[0] >= LANE_GAP / 2 and at[-1] <= 1 - LANE_GAP / 2
    assert lane_positions([0.3, 0.7]) == [0.3, 0.7]  # room enough: exactly where they are
    crowded = lane_positions([0.5] * 100)
    assert len(crowded) == 100 and crowded[0] >= 0 and crowded[-1] <= 1
