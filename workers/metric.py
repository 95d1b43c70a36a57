"""Read a trial's metric from its output.

Targets print autoresearch-style summary lines at the end of a run (`val_bpb:   0.997900`);
the last occurrence of a name wins, so a metric printed during training is overridden by the
final one. A configured regex (one capture group around the value) replaces name lookup.
NaN and inf parse as floats: the caller turns them into the `invalid_metric` outcome.
"""

from __future__ import annotations

import math
import re

# float() syntax: signed decimals, scientific notation, nan, inf and infinity.
_NUMBER = r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf(?:inity)?)"
_SUMMARY_LINE = re.compile(
    rf"^[ \t]*([A-Za-z_][\w./-]*)[ \t]*:[ \t]*({_NUMBER})[ \t]*$", re.MULTILINE | re.IGNORECASE
)


def parse_summary(output: str) -> dict[str, float]:
    """Every finite `key: number` line of `output`; the last occurrence of a key wins.

    NaN and inf are left out: the summary is stored as JSON, which has no such values.
    """
    summary: dict[str, float] = {}
    for key, value in _SUMMARY_LINE.findall(_lines(output)):
        summary[key] = float(value)
    return {key: value for key, value in summary.items() if math.isfinite(value)}


def parse_metric(output: str, *, name: str, regex: str = "") -> float | None:
    """The last value of summary line `name`, or of `regex`'s capture group; None if absent.

    `regex` is matched per line (re.MULTILINE, so `^` and `$` anchor lines). A capture that
    is not a number counts as absent.
    """
    text = _lines(output)
    if regex:
        values = [m.group(1) for m in re.finditer(regex, text, re.MULTILINE)]
    else:
        values = [value for key, value in _SUMMARY_LINE.findall(text) if key == name]
    if not values:
        return None
    try:
        return float(values[-1].strip())
    except ValueError:
        return None


def _lines(output: str) -> str:
    # Progress bars redraw with carriage returns; each redraw is a line of its own.
    return output.replace("\r", "\n")
