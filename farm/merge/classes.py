"""Hardware classes: a mixed fleet shifts every run of a faster class, so runs are
compared on the baseline's scale of their class."""

from __future__ import annotations

from collections.abc import Sequence

from farm.merge.arith import mean


def class_offsets(values: Sequence[float], classes: Sequence[str]) -> dict[str, float]:
    """How far each hardware class's runs sit from the mean of all (a faster GPU trains
    more steps in the same budget), for the classes with two or more runs."""
    by: dict[str, list[float]] = {}
    for v, c in zip(values, classes, strict=True):
        by.setdefault(c, []).append(v)
    known = {c: vs for c, vs in by.items() if len(vs) >= 2}
    if len(known) <= 1:  # nothing to compare with: one scale (a lone run's class or none)
        return dict.fromkeys(known or by, 0.0)
    overall = mean([v for vs in known.values() for v in vs])
    return {c: mean(vs) - overall for c, vs in known.items()}


def placed(
    values: Sequence[float], classes: Sequence[str], offsets: dict[str, float]
) -> list[float]:
    """Runs moved onto the reference's scale: each less its class's offset; a run on a
    class without an offset cannot be compared and is left out."""
    return [v - offsets[c] for v, c in zip(values, classes, strict=True) if c in offsets]


def offset_error(classes: Sequence[str], counts: dict[str, int]) -> float:
    """The variance, in units of σ², that class offsets measured on the baseline (`counts`
    runs per class) add to the mean of runs on `classes`: each offset is a class mean less
    the overall mean, off by about σ²·(1/n_c − 1/n)."""
    n = sum(counts.values())
    if len(counts) < 2 or not classes:
        return 0.0
    k = len(classes)
    share = {c: classes.count(c) / k for c in set(classes)}
    return sum(w * w * (1 / counts[c] - 1 / n) for c, w in share.items() if c in counts)
