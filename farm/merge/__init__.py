"""The noise-aware merge rule, as pure functions: evidence in, a ruling out.

Baseline repeats give the seed noise σ of one trial (`noise`); a mixed fleet's runs are
compared on the baseline's scale of their hardware class (`classes`); a candidate's screen
earns confirmations and the sequential test judges them one at a time (`sequential`); the
opt-in designs gate a screen on its gap to a run sharing its seed (`paired`) or rank short
screens before a full budget (`fidelity`); `verdicts` turns a stage's runs into what the
controller does next. Nothing here reads a store, touches git or keeps state between
calls. scripts/bench/merge_quality.py measures the error rates all this gives.
"""

from farm.merge.arith import mean
from farm.merge.classes import class_offsets, offset_error, placed
from farm.merge.fidelity import (
    SHORT_TIMEOUTS,
    Cohort,
    Fidelity,
    fidelity,
    fidelity_pairs,
    promoted,
    rank_agreement,
)
from farm.merge.noise import (
    MAD_SIGMAS,
    OUTLIER_MIN_RUNS,
    OUTLIER_SIGMAS,
    WINSOR_SIGMAS,
    Baseline,
    Noise,
    NoisePools,
    Run,
    baseline,
    estimate,
    noise,
    outlying,
    runs_of,
    smallest_delta,
)
from farm.merge.paired import PAIRED_GAIN, PAIRED_MIN, paired_bar, paired_spread
from farm.merge.sequential import (
    DIVERGED_SIGMAS,
    Verdict,
    dof_of,
    flattered,
    judge,
    keep_threshold,
    lucky,
    sequential,
    steady,
    threshold,
    widened,
)

__all__ = [
    "DIVERGED_SIGMAS",
    "MAD_SIGMAS",
    "OUTLIER_MIN_RUNS",
    "OUTLIER_SIGMAS",
    "PAIRED_GAIN",
    "PAIRED_MIN",
    "SHORT_TIMEOUTS",
    "WINSOR_SIGMAS",
    "Baseline",
    "Cohort",
    "Fidelity",
    "Noise",
    "NoisePools",
    "Run",
    "Verdict",
    "baseline",
    "class_offsets",
    "dof_of",
    "estimate",
    "fidelity",
    "fidelity_pairs",
    "flattered",
    "judge",
    "keep_threshold",
    "lucky",
    "mean",
    "noise",
    "offset_error",
    "outlying",
    "paired_bar",
    "paired_spread",
    "placed",
    "promoted",
    "rank_agreement",
    "runs_of",
    "sequential",
    "smallest_delta",
    "steady",
    "threshold",
    "widened",
]
