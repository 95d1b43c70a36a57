"""The optuna proposer: TPE over the constants declared in `[[proposer.params]]`.

The honest baseline for LLM proposers: no language model, only a sampler that learns
from measured outcomes. It keeps no state of its own. Each `propose` rebuilds the study
from the ledger: a past candidate's parameter values are read back from its edits (the
assignment lines it wrote), its objective is its decision's metric; crashed candidates
are FAIL trials and queued or running ones RUNNING trials (TPE's constant liar keeps new
suggestions away from them). So a restarted campaign samples where it left off.

Each draft sets every declared constant that changes, one edit per assignment line, and
records the values it stands for in `params`. The hybrid proposer tunes the knobs an LLM
declared the same way, with its structural change as the edits' `prefix`.
"""

from __future__ import annotations

import ast
import re
import uuid

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState

from farm.config import ParamConfig
from farm.errors import ConfigError
from farm.records import DecisionKind, Direction, Draft, Edit, edit_hash
from proposer.base import LedgerEntry, ProposalContext, Proposer
from proposer.mutate import Constant, constant_edit, find_constants, format_float

ASKS_PER_DRAFT = 5  # suggestions tried per draft before giving up on finding a new one
_RAN = {DecisionKind.KEPT.value, DecisionKind.DISCARDED.value, DecisionKind.SUPERSEDED.value}


class OptunaProposer(Proposer):
    name = "optuna"

    def __init__(
        self,
        params: list[ParamConfig],
        *,
        seed: int,
        prefix: list[Edit] | None = None,
        startup_trials: int = 10,
    ) -> None:
        self.params = params
        self.seed = seed
        # Edits every draft starts with (the hybrid's structural change): `ctx.files` are
        # the files after them, and the drafts' edits apply to the incumbent's.
        self.prefix = prefix or []
        self.startup_trials = startup_trials  # random suggestions before TPE models
        optuna.logging.set_verbosity(optuna.logging.WARNING)

    def propose(self, ctx: ProposalContext, n: int) -> list[Draft]:
        constants = {p.name: self._constant(ctx, p) for p in self.params}
        space = {p.name: _distribution(p) for p in self.params}
        # Seeded by the ledger's length too: a rebuilt study that saw nothing new (say,
        # all of its drafts were rejected) must not suggest the same values again.
        sampler = optuna.samplers.TPESampler(
            seed=self.seed + len(ctx.history),
            constant_liar=True,
            n_startup_trials=self.startup_trials,
        )
        direction = (
            StudyDirection.MINIMIZE
            if ctx.direction is Direction.MINIMIZE
            else StudyDirection.MAXIMIZE
        )
        study = optuna.create_study(direction=direction, sampler=sampler)
        for entry in ctx.history:
            past = self._past_trial(entry, space)
            if past is not None:
                study.add_trial(past)
        batch_id = f"optuna-{uuid.uuid4().hex[:8]}"
        seen = set(ctx.seen_hashes)
        drafts: list[Draft] = []
        for _ in range(n * ASKS_PER_DRAFT):
            if len(drafts) >= n:
                break
            trial = study.ask(space)  # stays RUNNING: later asks of this batch avoid it
            edits, shown, values = list(self.prefix), [], {}
            for p in self.params:
                c = constants[p.name]
                literal = _literal(trial.params[p.name], p, c)
                values[p.name] = float(trial.params[p.name])
                if literal != c.literal:
                    edits.append(constant_edit(ctx.files[p.file], c, literal))
                    shown.append(f"{p.name}={literal}")
            digest = edit_hash(edits)
            if not shown or digest in seen:
                study.tell(trial, state=TrialState.FAIL)
                continue
            seen.add(digest)
            drafts.append(
                Draft(
                    title="optuna: " + ", ".join(shown),
                    hypothesis=f"TPE suggestion after {len(study.trials) - 1} earlier trials",
                    edits=edits,
                    proposer=self.name,
                    strategy="tpe",
                    batch_id=batch_id,
                    params=values,
                )
            )
        return drafts

    def _constant(self, ctx: ProposalContext, p: ParamConfig) -> Constant:
        found = constant_of(p, ctx.files)
        if found is None:
            raise ConfigError(
                f"proposer.params: {p.name} is not a module-level number assignment in "
                f"{p.file} (or it is marked `# farm: frozen`)"
            )
        return found

    def _past_trial(
        self, entry: LedgerEntry, space: dict[str, BaseDistribution]
    ) -> optuna.trial.FrozenTrial | None:
        """The entry as a finished or running trial, if its edits set every parameter."""
        if entry.status == DecisionKind.REJECTED.value:
            return None  # never ran: it says nothing about the objective
        values = {}
        for p in self.params:
            value = entry.params.get(p.name, _assigned(entry.edits, p))
            if value is None or not p.low <= value <= p.high:
                return None  # not set by this candidate, or outside today's range
            values[p.name] = int(value) if p.int else float(value)
        if entry.status in _RAN and entry.metric is not None:
            state, objective = TrialState.COMPLETE, entry.metric
        elif entry.status == DecisionKind.CRASHED.value:
            state, objective = TrialState.FAIL, None
        elif entry.status in _RAN:
            return None  # decided without a metric estimate
        else:
            state, objective = TrialState.RUNNING, None
        return optuna.trial.create_trial(
            state=state, value=objective, params=values, distributions=space
        )


def constant_of(p: ParamConfig, files: dict[str, str]) -> Constant | None:
    """The tunable constant `p` names in `files`, if it is one."""
    found = [c for c in find_constants(p.file, files.get(p.file, "")) if c.name == p.name]
    return found[0] if found else None


def _distribution(p: ParamConfig) -> BaseDistribution:
    if p.int:
        return IntDistribution(int(p.low), int(p.high), log=p.log)
    return FloatDistribution(p.low, p.high, log=p.log)


def _literal(value: float, p: ParamConfig, c: Constant) -> str:
    """The value as source text, in the style of the literal it replaces."""
    if p.int:
        return f"{int(value):_}" if "_" in c.literal else str(int(value))
    return format_float(value, scientific="e" in c.literal.lower())


def _assigned(edits: list[Edit], p: ParamConfig) -> float | None:
    """The value the edits assign to `p` (the last assignment wins), or None."""
    line = re.compile(rf"^{p.name}\s*(?::[^=]*)?=\s*([^#\n]+?)\s*(?:#.*)?$", re.MULTILINE)
    value = None
    for e in edits:
        if e.path != p.file:
            continue
        for m in line.finditer(e.replace):
            try:
                v = ast.literal_eval(m.group(1))
            except (ValueError, SyntaxError):
                continue
            if isinstance(v, int | float) and not isinstance(v, bool):
                value = int(v) if p.int else float(v)
    return value
