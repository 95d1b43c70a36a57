"""The hybrid proposer: Claude proposes structural changes, Optuna tunes their knobs.

Classical samplers beat LLM agents at tuning a fixed set of numbers, LLMs beat them at
structural change, and a hybrid beats both (Centaur, 2026). So a campaign runs in phases:

1. Structure: one call asks Claude for one structural change (code, not a constant) that
   also declares the numeric knobs worth tuning with it, with ranges (`knobs` in the tool
   schema): module-level UPPER_CASE constants of the file after its edits.
2. Tuning: once that change is decided (and did not crash), TPE, rebuilt from the ledger
   as the optuna proposer does, proposes `tune_trials` drafts of it with its knobs set:
   its edits (unless it was kept) and one edit per knob, on the incumbent. Their `parent`
   names the structural candidate and their `params` the values, so the study rebuilds
   after a restart and `farm report` can follow the lineage.
3. Then the next structural call, whose prompt shows what the tuning measured.

Declared knobs are checked before the draft is recorded: an editable file, a tunable
constant there after the edits, a range that holds its value. A structural draft with no
usable knob is rejected with the reasons, which the repair request quotes.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from farm.config import ParamConfig
from farm.errors import ConfigError
from farm.records import DecisionKind, Draft
from proposer import prompt
from proposer.anthropic import AnthropicProposer
from proposer.base import Book, LedgerEntry, ProposalContext
from proposer.optuna import OptunaProposer, knob_of
from proposer.validate import Rejected, validate_draft

STRUCTURE = "structure"  # the strategy label of structural drafts
TUNE = "tpe"  # and of the tuning drafts
MAX_KNOBS = 4
_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
_UNLIMITED = 1 << 40  # validation's size limit does not matter for checking knobs
_OVER = {DecisionKind.CRASHED.value, DecisionKind.SUPERSEDED.value, DecisionKind.REJECTED.value}
_IN_FLIGHT = {"queued", "running"}

KNOBS_HELP = (
    "The numeric knobs of this change worth tuning (1 to 4): module-level UPPER_CASE "
    "constants assigned a number in the file after your edits (introduce one for a new "
    "number), each with a range that holds its value. farm tunes them with TPE."
)


class HybridProposer(AnthropicProposer):
    name = "hybrid"
    tool = prompt.with_knobs(prompt.TOOL, description=KNOBS_HELP)

    def propose_into(self, ctx: ProposalContext, n: int, book: Book) -> None:
        phase = self._phase(ctx)
        if phase is not None:
            structure, children = phase
            if structure.status in _IN_FLIGHT or len(children) >= self.cfg.tune_trials:
                # Wait: for the structure's outcome (are its knobs worth tuning?), or for
                # its last tuning drafts to start (one superseded on the way is replaced).
                return
            drafts = self._tune(ctx, structure, children, n)
            if drafts:
                book.record(drafts)
                return
        super().propose_into(ctx, 1, book)  # one structural change per phase

    def _phase(self, ctx: ProposalContext) -> tuple[LedgerEntry, list[LedgerEntry]] | None:
        """The structural change being tuned and its tuning drafts; None: time for a new one."""
        structures = [
            e
            for e in ctx.history
            if e.proposer == self.name and e.strategy == STRUCTURE and e.knobs
        ]
        if not structures or structures[-1].status in _OVER:
            return None
        structure = structures[-1]
        # A tuning draft superseded before it ran (a sibling's keep rewrote its knob lines)
        # used no trial: TPE drafts a replacement on the new incumbent.
        children = [
            e
            for e in ctx.history
            if e.parent == structure.candidate_id
            and not (e.status == DecisionKind.SUPERSEDED.value and not e.runs)
        ]
        if len(children) >= self.cfg.tune_trials and not any(
            c.status == "queued" for c in children
        ):
            return None
        return structure, children

    def _tune(
        self, ctx: ProposalContext, s: LedgerEntry, children: list[LedgerEntry], n: int
    ) -> list[Draft]:
        """TPE drafts of `s` with its knobs set; none when its edits or knobs are gone."""
        kept = DecisionKind.KEPT.value
        in_incumbent = s.status == kept or any(c.status == kept for c in children)
        prefix = [] if in_incumbent else s.edits
        files = ctx.files
        if prefix:
            applied = validate_draft(
                Draft(title=s.title, hypothesis="", edits=prefix),
                files=ctx.files,
                editable=ctx.editable,
                seen_hashes=set(),
                max_edit_bytes=_UNLIMITED,
            )
            if isinstance(applied, Rejected):
                return []  # no longer applies on the incumbent
            files = {**ctx.files, **applied.files}
        tuner = OptunaProposer(
            [ParamConfig(**k) for k in s.knobs],
            seed=self.cfg.seed + s.candidate_id,
            prefix=prefix,
            startup_trials=max(2, self.cfg.tune_trials // 2),
        )
        family = dataclasses.replace(ctx, files=files, history=[s, *children])
        want = min(n, self.cfg.tune_trials - len(children))
        try:
            drafts = tuner.propose(family, want)
        except ConfigError:
            return []  # a knob is no longer a constant of the code
        for i, d in enumerate(drafts, start=len(children) + 1):
            values = d.title.removeprefix("optuna: ")
            d.title = f"tune #{s.candidate_id}: {values}"
            d.hypothesis = (
                f"TPE on the knobs of #{s.candidate_id} ({s.title}), trial {i} of "
                f"{self.cfg.tune_trials}"
            )
            d.proposer, d.strategy, d.parent = self.name, TUNE, s.candidate_id
        return drafts

    def _plan(self, n: int, *, offset: int) -> list[tuple[str, str, int]]:
        return [(STRUCTURE, "", n)]

    def _task(self, ctx: ProposalContext, *, n: int, focus: str, digest: str) -> str:
        return (
            f"{digest}\n\n# Task\n\nPropose 1 structural change that you expect to improve "
            f"{ctx.metric} ({ctx.direction.value}) by more than the noise: a change to the "
            "model, the loss, the optimiser or the training loop, not only a constant. "
            f"Declare its numeric knobs worth tuning, with ranges: farm runs "
            f"{self.cfg.tune_trials} TPE trials of your change with them set before it asks "
            f"you again. Call {prompt.TOOL_NAME} with it."
        )

    def _prepare(self, ctx: ProposalContext, drafts: list[Draft]) -> None:
        """Check each draft's knobs on the files its edits produce; keep the good ones."""
        for d in drafts:
            raw, d.knobs = d.knobs, []
            if d.problem:
                continue
            applied = validate_draft(
                d,
                files=ctx.files,
                editable=ctx.editable,
                seen_hashes=set(),
                max_edit_bytes=_UNLIMITED,
            )
            if isinstance(applied, Rejected):
                continue  # validation rejects it with its own reason
            files = {**ctx.files, **applied.files}
            problems = []
            for item in raw[:MAX_KNOBS]:
                checked = _knob(item, files, ctx.editable)
                if isinstance(checked, str):
                    problems.append(checked)
                elif checked[0].name not in d.params:
                    d.knobs.append(dataclasses.asdict(checked[0]))
                    d.params[checked[0].name] = checked[1]
            if not d.knobs:
                d.problem = "declare at least one knob to tune: " + (
                    "; ".join(problems) or "'knobs' is empty"
                )


def _knob(item: dict[str, Any], files: dict[str, str], editable: list[str]) -> Any:
    """(ParamConfig, current value) of a declared knob, or why it cannot be tuned."""
    name, path = item.get("name"), item.get("path")
    log, whole = item.get("log") is True, item.get("int") is True
    label = f"knob {name!r}"
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return f"{label}: the name must be an UPPER_CASE module-level constant"
    if not isinstance(path, str) or path not in editable:
        return f"{label}: {path!r} is not an editable file ({', '.join(editable)})"
    if not (_number(item.get("low")) and _number(item.get("high"))):
        return f"{label}: low and high must be numbers"
    low, high = float(item["low"]), float(item["high"])
    if not low < high:
        return f"{label}: low must be below high"
    if log and low <= 0:
        return f"{label}: a log-scale knob needs low > 0"
    if whole and not (low.is_integer() and high.is_integer()):
        return f"{label}: an int knob needs whole-number low and high"
    p = ParamConfig(file=path, name=name, low=low, high=high, log=log, int=whole)
    knob = knob_of(p, files)
    if knob is None:
        return (
            f"{label}: after the edits, {path} has no number knob `{name}` (a constant, "
            "config entry, call keyword or default, not marked `# farm: frozen`) to tune"
        )
    if not p.low <= knob.value <= p.high:
        return f"{label}: its value {knob.value} is outside [{p.low:g}, {p.high:g}]"
    return p, float(knob.value)


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
