"""Read a trial's metric from its output.

Targets print summary lines at the end of a run, in any of the formats autoresearch-style
repos use: `val_bpb:   0.997900`, `loss : 2.5`, `accuracy=0.91`, `[run] score=1.23` (a
bracketed tag first). The last occurrence of a name wins, so a metric printed during
training is overridden by the final one. A configured regex (one capture group around the
value) replaces name lookup. NaN and inf parse as floats: the caller turns them into the
`invalid_metric` outcome. `farm init` reads a probe run with the same parser, so what it
finds is what trials parse.
"""

from __future__ import annotations

import difflib
import math
import re

# float() syntax: signed decimals, scientific notation, nan, inf and infinity.
_NUMBER = r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf(?:inity)?)"
_SUMMARY_LINE = re.compile(
    rf"^[ \t]*(?:\[[^\]\n]*\][ \t]*)?([A-Za-z_][\w./-]*)[ \t]*[:=][ \t]*({_NUMBER})[ \t]*$",
    re.MULTILINE | re.IGNORECASE,
)
_HAS_NUMBER = re.compile(r"\d")
NEAR_MISS_CHARS = 160  # a near-miss line is quoted up to this length


def parse_summary(output: str) -> dict[str, float]:
    """Every finite summary line of `output` as {name: value}; the last occurrence wins.

    NaN and inf are left out: the summary is stored as JSON, which has no such values.
    """
    summary: dict[str, float] = {}
    for key, value in _SUMMARY_LINE.findall(_lines(output)):
        summary[key] = float(value)
    return {key: value for key, value in summary.items() if math.isfinite(value)}


def summary_names(output: str) -> list[str]:
    """The names of every summary line (NaN and inf too), each once, in order of last use."""
    names: dict[str, None] = {}
    for key, _ in _SUMMARY_LINE.findall(_lines(output)):
        names.pop(key, None)
        names[key] = None
    return list(names)


def nan_lines(output: str) -> list[str]:
    """The summary lines of `output` whose value is NaN (a run that went NaN, say in its
    training loss, before it printed the metric), stripped, in order."""
    return [
        m.group(0).strip()
        for m in _SUMMARY_LINE.finditer(_lines(output))
        if math.isnan(float(m.group(2)))
    ]


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


def near_misses(output: str, *, name: str, limit: int = 3) -> list[str]:
    """The lines of `output` that look most like the metric `name` that was not found.

    A line naming it in another shape (`val loss 0.3`, `loss: 0.3 (best)`) ranks first, a
    summary line with a similar name (`val_los: 0.3`) next; lines without a number never
    count. Best first, each stripped and cut to NEAR_MISS_CHARS.
    """
    scored: list[tuple[float, int, str]] = []
    wanted = name.lower()
    for i, raw in enumerate(_lines(output).splitlines()):
        line = raw.strip()
        if not _HAS_NUMBER.search(line):
            continue
        m = _SUMMARY_LINE.match(line)
        if wanted in line.lower():
            score = 2.0
        elif m:
            score = difflib.SequenceMatcher(None, wanted, m.group(1).lower()).ratio()
        else:
            words = re.findall(r"[a-z]+", line.lower())
            score = max(
                (difflib.SequenceMatcher(None, wanted, w).ratio() for w in words), default=0.0
            )
            score -= 0.2  # not even a summary line
        if score >= 0.5:
            scored.append((score, i, line[:NEAR_MISS_CHARS]))
    scored.sort(key=lambda s: (-s[0], -s[1]))  # best, then latest
    return [line for _, _, line in scored[:limit]]


def missing_metric_note(output: str, *, name: str, regex: str = "") -> str:
    """Why a run has no metric, with the closest lines it did print (for a decision reason)."""
    wanted = f"line matching metric_regex {regex!r}" if regex else f"`{name}: <value>` line"
    lines = near_misses(output, name=name)
    if not lines:
        return f"it printed no {wanted}, nor anything like one"
    return f"it printed no {wanted}; closest: " + "; ".join(repr(ln) for ln in lines)


def _lines(output: str) -> str:
    # Progress bars redraw with carriage returns; each redraw is a line of its own.
    return output.replace("\r", "\n")
