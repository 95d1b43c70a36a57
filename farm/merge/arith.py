"""Arithmetic every part of the rule shares."""

from __future__ import annotations

from collections.abc import Sequence


def mean(values: Sequence[float]) -> float:
    """Mean that cannot overflow (math.fsum raises on ±1e308 + ±1e308)."""
    return sum(v / len(values) for v in values)
