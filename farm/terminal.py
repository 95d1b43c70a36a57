"""The terminal of `farm run`: a live view on a terminal, plain lines anywhere else.

Both show the same things from the same snapshot (farm/progress.py): progress against
`--max-candidates` with an ETA, slots, trials, the best so far, the last decisions; the
live view also the LLM spend, calls and tokens once a paid proposer has called. The
live view redraws a few lines at the bottom of an 80-column terminal and prints each
decision above them; the plain view (a pipe, a log file, `ray job logs`) prints each
decision and, every `--progress-every`, one status line.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from farm.progress import (
    WIDTH,
    ClusterView,
    Pace,
    Snapshot,
    clock,
    decision_line,
    fit,
    note_text,
    num,
    picture,
    status_line,
)
from farm.records import CandidateState, Decision, Direction, TrialState
from farm.report import spend_text
from farm.store.stats import llm_spend

LIVE_EVERY_S = 1.0  # redraw period of the live view


@dataclass
class RunView:
    """Plain lines: each decision, and a status line every `every_s`."""

    out: TextIO
    slots: int
    max_candidates: int | None
    every_s: float
    started: float = field(default_factory=time.time)
    decided_before: int | None = None  # candidates decided before this run (a resume)
    cluster: ClusterView | None = None  # the dispatcher's nodes, as it last looked
    _last: float = 0.0
    _shown: str = ""  # the last status line printed

    def decision(self, d: Decision, title: str, metric: str, *, label: str = "") -> None:
        print(decision_line(d, title, metric, label=label), file=self.out, flush=True)

    def note(self, text: str) -> None:
        """A line the campaign says once (the baseline was deterministic, had outliers)."""
        print(note_text(text), file=self.out, flush=True)

    def tick(
        self,
        snap: Callable[[], Snapshot],
        *,
        busy: int,
        cluster: ClusterView | None = None,
        force: bool = False,
    ) -> None:
        """Show where the run stands, when it is time to (or `force`); `cluster`: the
        dispatcher's view of its nodes (its slots follow them)."""
        if cluster is not None:
            self.cluster, self.slots = cluster, cluster.slots
        if not force and time.time() - self._last < self._period():
            return
        self._last = time.time()
        s = snap()
        if self.decided_before is None:
            self.decided_before = s.decided
        self.show(s, busy=busy, again=not force)

    def _period(self) -> float:
        return self.every_s

    def pace(self, s: Snapshot) -> Pace:
        return Pace.of(
            s,
            max_candidates=self.max_candidates,
            decided_before=self.decided_before or 0,
            elapsed_s=time.time() - self.started,
        )

    def show(self, s: Snapshot, *, busy: int, again: bool = True) -> None:
        """Print the status line; unless `again`, not when only its clock differs from the
        last one (a run's final line after a periodic one)."""
        elapsed = time.time() - self.started
        line = status_line(
            s,
            slots=self.slots,
            busy=busy,
            elapsed_s=elapsed,
            pace=self.pace(s),
            cluster=self.cluster,
        )
        if again or line.partition("] ")[2] != self._shown.partition("] ")[2]:
            print(line, file=self.out, flush=True)
            self._shown = line

    def close(self) -> None:
        """Stop drawing (the live view leaves its last frame on the screen)."""


@dataclass
class LiveView(RunView):
    """A few lines redrawn in place at the bottom of the terminal; decisions scroll above."""

    _live: Live | None = None

    def __post_init__(self) -> None:
        console = Console(file=self.out, width=min(WIDTH, _columns(self.out)), highlight=False)
        self._live = Live(
            Text("farm: starting …"),
            console=console,
            auto_refresh=False,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.start()

    def _period(self) -> float:
        return LIVE_EVERY_S

    def decision(self, d: Decision, title: str, metric: str, *, label: str = "") -> None:
        assert self._live is not None
        self._live.console.print(Text(decision_line(d, title, metric, label=label)))

    def note(self, text: str) -> None:
        assert self._live is not None
        self._live.console.print(Text(note_text(text)))

    def show(self, s: Snapshot, *, busy: int, again: bool = True) -> None:
        assert self._live is not None
        self._live.update(self.frame(s, busy=busy), refresh=True)

    def frame(self, s: Snapshot, *, busy: int) -> Group:
        width = min(WIDTH, self._live.console.width if self._live else WIDTH)
        pace = self.pace(s)
        st = s.stats
        head = f"farm {s.campaign} · {clock(time.time() - self.started)}"
        trouble = self.cluster.text() if self.cluster else ""
        slots = (
            f"slots {busy}/{self.slots} busy"
            + (f" ({trouble})" if trouble else "")
            + f" · queue {st.trials[TrialState.QUEUED]}"
            f" · backlog {st.candidates[CandidateState.QUEUED]}"
        )
        lines = [Text(fit(f"{head} · {slots}", width), style="bold")]
        lines.append(_bar(pace, width))
        lines.append(
            Text(fit(f"trials {s.finished} done, {s.failed} failed · {_outcomes(s)}", width))
        )
        better = "↓" if s.direction is Direction.MINIMIZE else "↑"
        lines.append(
            Text(
                fit(
                    f"{s.metric} {num(s.incumbent_metric)}"
                    + (" (estimated)" if s.estimated else "")
                    + f" {better} · start {num(s.start_metric)} · {max(len(s.line) - 1, 0)} kept"
                    f" · σ {num(s.sigma)}"
                    f" · threshold {num(s.threshold)}",
                    width,
                ),
                style="green",
            )
        )
        llm = llm_spend(st)
        if llm.calls or llm.in_flight:
            lines.append(Text(fit(f"LLM {spend_text(llm)}", width)))
        lines += [Text(line[2:]) for line in picture(s, width=width + 2)]
        return Group(*lines)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def _outcomes(s: Snapshot) -> str:
    total: dict[str, int] = {}
    for (_, outcome), n in s.stats.outcomes.items():
        total[outcome] = total.get(outcome, 0) + n
    return ", ".join(f"{o} {n}" for o, n in sorted(total.items()) if n) or "none yet"


def _bar(pace: Pace, width: int) -> Text:
    """`cand ━━━━━━━━━━╸━━━━━━ 12/24 ETA 0:11:05`: the candidate budget, when there is one."""
    label = pace.text()
    if pace.total is None or pace.baseline is not None:
        return Text(label)
    room = max(10, width - len(label) - 1)
    done = min(room, round(room * pace.decided / max(pace.total, 1)))
    bar = Text()
    bar.append("━" * done, style="green")
    bar.append("━" * (room - done), style="grey37")
    bar.append(" " + label)
    return bar


def _columns(out: TextIO) -> int:
    try:
        return os.get_terminal_size(out.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return WIDTH


def open_view(out: TextIO, *, slots: int, max_candidates: int | None, every_s: float) -> RunView:
    """The live view on a terminal (not TERM=dumb), plain lines otherwise."""
    live = out.isatty() and os.environ.get("TERM", "") not in ("", "dumb")
    cls = LiveView if live else RunView
    return cls(out=out, slots=slots, max_candidates=max_candidates, every_s=every_s)
