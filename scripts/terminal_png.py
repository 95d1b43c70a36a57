"""Render a terminal capture (`tmux capture-pane -e -p`, colours kept) to a PNG, as the
terminal showed it: one monospace cell per character, SGR colours and bold.

    tmux capture-pane -e -p -t SESSION > capture.ansi
    .venv/bin/python scripts/terminal_png.py capture.ansi out.png [--columns 80]

Used for docs/observability/terminal-80-columns.png.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from matplotlib.figure import Figure

SGR = re.compile(r"\x1b\[([0-9;]*)m")
PALETTE = {  # xterm's first eight colours, on a dark background
    30: "#3b3b3b", 31: "#e06c75", 32: "#6cc070", 33: "#e5c07b",
    34: "#61afef", 35: "#c678dd", 36: "#56b6c2", 37: "#dcdfe4",
}  # fmt: skip
FOREGROUND, BACKGROUND, GREY = "#dcdfe4", "#1e2127", "#6b6b6b"


def cells(line: str) -> list[tuple[str, str, bool]]:
    """(character, colour, bold) of each cell of one captured line."""
    out, colour, bold = [], FOREGROUND, False
    for i, part in enumerate(SGR.split(line)):
        if i % 2 == 0:
            out += [(ch, colour, bold) for ch in part]
            continue
        codes = [int(c) for c in part.split(";") if c] or [0]
        j = 0
        while j < len(codes):
            code = codes[j]
            if code == 0:
                colour, bold = FOREGROUND, False
            elif code == 1:
                bold = True
            elif code in PALETTE:
                colour = PALETTE[code]
            elif code == 39:
                colour = FOREGROUND
            elif code == 38 and codes[j + 1 : j + 2] == [5]:  # 256 colours: greys dimmed
                colour = PALETTE.get(30 + codes[j + 2], GREY) if codes[j + 2] < 8 else GREY
                j += 2
            j += 1
    return out


def render(text: str, path: Path, *, columns: int) -> None:
    lines = text.rstrip("\n").split("\n")
    cell_w, cell_h = 0.0835, 0.19  # inches: DejaVu Sans Mono's advance at 10 pt
    fig = Figure(figsize=(columns * cell_w + 0.4, len(lines) * cell_h + 0.4), dpi=130)
    fig.patch.set_facecolor(BACKGROUND)
    for row, line in enumerate(lines):
        for col, (ch, colour, bold) in enumerate(cells(line)):
            if ch.strip():
                fig.text(
                    (0.2 + col * cell_w) / fig.get_figwidth(),
                    1 - (0.2 + (row + 0.75) * cell_h) / fig.get_figheight(),
                    ch,
                    color=colour,
                    family="DejaVu Sans Mono",
                    fontsize=10,
                    weight="bold" if bold else "normal",
                )
    fig.savefig(path, facecolor=BACKGROUND)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("capture", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--columns", type=int, default=80)
    args = parser.parse_args()
    render(args.capture.read_text(), args.png, columns=args.columns)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
