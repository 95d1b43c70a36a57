"""Words from a candidate are data: make them safe to print, commit or quote.

Titles, hypotheses, reasons and output tails are written by an LLM or by code a candidate
controls. Raw, an escape sequence clears or rewrites the operator's terminal, a newline
forges extra lines in a log, a status listing or a commit message, and an invisible format
character (a right-to-left override, a zero-width space) shows a reader other text than
what is there; so every such text is cleaned, by this module alone, before it reaches the
terminal, `farm status`, the export, a commit message or a prompt.
"""

from __future__ import annotations

import re
import unicodedata

# CSI (ESC [ ... final byte), OSC (ESC ] ... BEL or ST), other two-byte escapes, then any
# C0/C1 control character that is left.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[@-_]?"
    r"|\x9b[0-?]*[ -/]*[@-~]"
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_LINE_BREAKS = re.compile(r"[\r\n\t\u2028\u2029\x85]+")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
# Format (bidi overrides and isolates, zero-width, soft hyphen), surrogate, private-use and
# unassigned characters: nothing a reader would see, or see as it is.
_INVISIBLE = ("Cf", "Cs", "Co", "Cn")


def _visible(match: re.Match[str]) -> str:
    return "" if unicodedata.category(match.group()) in _INVISIBLE else match.group()


def clean_text(text: str, *, limit: int = 0) -> str:
    """`text` without escape sequences, control and format characters; newlines and tabs stay.

    Carriage returns become newlines (a progress bar's redraws are lines of their own).
    `limit` > 0 keeps the last `limit` characters (an output tail).
    """
    text = _ESCAPES.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _NON_ASCII.sub(_visible, _CONTROLS.sub("", text))
    return text[-limit:] if limit > 0 else text


def clean_line(text: str, *, limit: int = 0) -> str:
    """`text` as one printable line: escapes dropped, line breaks and tabs made spaces.

    `limit` > 0 cuts it to that many characters, ending in '…' when cut.
    """
    line = _LINE_BREAKS.sub(" ", _ESCAPES.sub("", text))
    line = " ".join(_NON_ASCII.sub(_visible, _CONTROLS.sub("", line)).split())
    if limit > 0 and len(line) > limit:
        return line[: limit - 1] + "…"
    return line


def fence(text: str) -> str:
    """`text` in a Markdown code fence longer than any run of backticks inside it, so that
    nothing in it can close the fence and stand outside as an instruction or a heading."""
    runs = [len(run) for run in re.findall(r"`+", text)]
    bar = "`" * max(3, max(runs, default=0) + 1)
    return f"{bar}\n{text.rstrip(chr(10))}\n{bar}"
