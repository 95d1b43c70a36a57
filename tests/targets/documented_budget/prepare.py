"""Fixed constants, the corpus and the evaluation (bits per byte on held-out text)."""

import itertools
import math

TIME_BUDGET = 0.2  # seconds of training per experiment
TEXT = "the quick brown fox jumps over the lazy dog and the dog sleeps " * 8
SPLIT = len(TEXT) * 3 // 4


def corpus():
    return TEXT[:SPLIT], TEXT[SPLIT:]


def evaluate_bpb(prob):
    """Bits per byte of the held-out text under prob(previous char, char)."""
    val = corpus()[1]
    bits = -sum(math.log2(max(prob(a, b), 1e-9)) for a, b in itertools.pairwise(val))
    return bits / (len(val) - 1)
