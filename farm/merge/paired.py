"""Paired screens: a screen shares its seed with a run of its reference (common random
numbers), and is gated on its gap to that run where the campaign's screens show that
pairing at least halves the variance."""

from __future__ import annotations

import math
from collections.abc import Sequence

from farm.config import MergeConfig
from farm.merge.noise import robust_sigma

PAIRED_MIN = 10  # screens with a partner run before the spread of their gaps is trusted
PAIRED_GAIN = 0.5  # pair only where it at least halves the variance a screen is gated by


def paired_spread(gaps: Sequence[float]) -> float | None:
    """σ of a screen's gap to its partner (the reference's run with the same seed), robustly
    from the gaps of the screens so far: most candidates change little, and the few that
    gain or lose much would inflate a plain σ. None before PAIRED_MIN of them."""
    if len(gaps) < PAIRED_MIN:
        return None
    return robust_sigma(gaps)


def paired_bar(
    spread: float | None, *, sigma: float, incumbent_runs: float, m: MergeConfig
) -> float | None:
    """What a screen's paired gap (its improvement over its partner run) must exceed, where
    pairing at least halves the variance the unpaired gate has (σ²·(1 + 1/n)); else None.
    `spread`: of the campaign's gaps (`paired_spread`).
    Pairing pays as far as the seed drives a run alike on both commits: on examples/eclip a
    small change keeps ρ 0.76–0.98 with its parent, a large one loses it."""
    if spread is None:
        return None
    # A gap carries its partner run's noise as well as its screen's, but the screens against
    # one reference share that partner: their spread shows only the screens' half of it
    # (more where partners differ, and the bar errs high).
    gap = spread * math.sqrt(2)
    unpaired = sigma * sigma * (1 + 1 / max(incumbent_runs, 1))
    if not gap * gap <= PAIRED_GAIN * unpaired:
        return None
    return m.paired_z * gap
