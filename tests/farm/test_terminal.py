"""What a person sees in a terminal: `farm status`, and `farm run`'s live view (a real
pseudo-terminal of 80 columns) or plain lines (anything else)."""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest
from helpers import TOY_TOML, MakeTarget, RunCampaign
from rich.text import Text

from farm.cli import main
from farm.progress import WIDTH, fit, snapshot
from farm.records import CallState, Campaign, Incumbent, ProposerCall
from farm.store.sqlite import SQLiteStore
from farm.terminal import LiveView

LONG = (
    "Replace the cosine learning-rate schedule with a warmup-stable-decay schedule whose "
    "decay phase covers the last fifth of training, and raise the peak rate to match"
)
ESCAPE = "\x1b[2J\x1b]0;pwned\x07"  # a candidate's words trying to drive the terminal


def drafts() -> str:
    rows = [
        (LONG, "LR = 0.5", "LR = 1.5"),
        (f"reset the terminal {ESCAPE} please", "LR = 0.5", "LR = 0.4"),
        ("SEED_OFFSET 3 → 4 " * 6, "SEED_OFFSET = 3", "SEED_OFFSET = 4"),
    ]
    return "".join(
        json.dumps(
            {
                "title": title,
                "hypothesis": title,
                "edits": [{"path": "train.py", "search": a, "replace": b}],
            }
        )
        + "\n"
        for title, a, b in rows
    )


REPLAY = '[proposer]\nkind = "replay"\nreplay_file = "drafts.jsonl"\n[merge]\nrepeats = 3\n'


def test_status_and_run_lines_fit_80_columns_and_cut_titles_at_a_word(
    make_target: MakeTarget, run_campaign: RunCampaign, capsys: pytest.CaptureFixture[str]
) -> None:
    target = make_target({"drafts.jsonl": drafts()}, extra_toml=REPLAY)
    done = run_campaign(target)
    assert done.code == 0, done.output
    capsys.readouterr()
    assert main(["status", str(target), "--last", "20"]) == 0
    status = capsys.readouterr().out
    for text in (status, done.output):
        too_wide = [line for line in text.splitlines() if len(line) > WIDTH]
        assert not too_wide, too_wide
        assert "\x1b" not in text and "\x07" not in text
    # The long title is cut after a whole word, marked with '…'.
    cut = [x for x in status.splitlines() if "Replace the cosine" in x]
    assert len(cut) == 2  # in the kept list and among the decisions
    for line in cut:
        shown = "Replace" + line.split("Replace", 1)[1].split("…")[0]
        assert LONG.startswith(shown) and LONG[len(shown)] == " ", line
    assert "keep threshold" in status and "noise σ" in status
    assert "  kept, in order:" in status and "best loss:" in status


def test_fit_cuts_at_a_word_but_never_leaves_a_line_empty() -> None:
    assert fit("short", 10) == "short"
    assert fit("one two three four", 12) == "one two…"
    path = "store sqlite:////a/very/long/path/that/has/no/spaces/farm.db"
    assert fit(path, 30) == path[:29] + "…"
    assert len(fit(LONG, 80)) <= 80


def test_status_into_a_closed_pipe_ends_without_a_traceback(
    make_target: MakeTarget, run_campaign: RunCampaign
) -> None:
    target = make_target()
    assert run_campaign(target, max_candidates=1).code == 0
    read, write = os.pipe()
    os.close(read)  # the reader (`head`) is gone before the first line
    proc = subprocess.run(
        [sys.executable, "-m", "farm.cli", "status", str(target)],
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    os.close(write)
    assert proc.returncode == 141
    assert proc.stderr == ""


def test_run_says_something_before_ray_starts(
    make_target: MakeTarget, ray_local: None, capsys: pytest.CaptureFixture[str]
) -> None:
    target = make_target(toml=TOY_TOML + "[metrics]\nenabled = false\n")
    assert main(["run", str(target), "--max-candidates", "1"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "farm: campaign default: starting a local Ray …"


def test_run_in_a_terminal_draws_a_live_view_of_80_columns(
    make_target: MakeTarget, run_campaign: RunCampaign, monkeypatch: pytest.MonkeyPatch
) -> None:
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    screen = bytearray()
    reader = threading.Thread(target=_drain, args=(primary, screen), daemon=True)
    reader.start()
    monkeypatch.setenv("TERM", "xterm-256color")
    target = make_target({"drafts.jsonl": drafts()}, extra_toml=REPLAY)
    with open(secondary, "w", closefd=True) as tty:
        done = run_campaign(target, out=tty, max_candidates=3)
    reader.join(timeout=10)
    os.close(primary)
    assert done.code == 0
    text = screen.decode(errors="replace")
    assert "\x1b[" in text  # drawn in place, not printed line by line
    lines = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", x) for x in re.split(r"[\r\n]+", text)]
    wide = [x for x in lines if len(x) > WIDTH]
    assert not wide, wide  # a 120-column terminal still gets 80
    assert any(re.search(r"━+ cand 3/3 ETA 0:00:00$", x) for x in lines), "\n".join(lines)
    assert any(x.startswith("trials ") and "done" in x for x in lines)
    assert any(x.startswith("  c1    ") for x in lines)
    # Its words shown, its escape sequences (and what they carry) not.
    assert "reset the terminal please" in text
    assert "\x1b]0;" not in text and "pwned" not in text and "\x1b[2J" not in text


def _drain(fd: int, into: bytearray) -> None:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return
        if not chunk:
            return
        into.extend(chunk)


def test_the_live_view_shows_llm_spend_calls_and_tokens(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "farm.db")
    store.create_campaign(
        Campaign(id="c", target="", start_sha="s0", config={"metric": "loss"}), Incumbent("s0")
    )
    call = ProposerCall("c", "k1", "anthropic", "single", reserved_usd=0.3)
    store.hold_call(call)
    store.hold_call(dataclasses.replace(call, id="k2"))
    answered = dataclasses.replace(
        call, state=CallState.ANSWERED, cost_usd=0.0123, tokens_in=1200, tokens_out=700
    )
    store.settle_call(answered)
    try:
        view = LiveView(out=io.StringIO(), slots=2, max_candidates=None, every_s=1.0)
        frame = view.frame(snapshot(store, "c"), busy=0)
        view.close()
    finally:
        store.close()
    lines = [t.plain for t in frame.renderables if isinstance(t, Text)]
    assert "LLM $0.0123 in 1 call, 1200 tokens in, 700 out, $0.3 held for 1 in flight" in lines
