"""The optuna proposer: TPE over the knobs declared in `[[proposer.params]]`.

With no `[[proposer.params]]`, it tunes the knobs proposer/knobs.py finds (the declared
ones, else the inline ones) over a quarter to four times their value on a log scale; the
ranges come from the files it first sees, and from the incumbent's after a restart.

The honest baseline for LLM proposers: no language model, only a sampler that learns
from measured outcomes. It keeps no state of its own. Each `propose` rebuilds the study
from the ledger: a past candidate's parameter values are read back from its edits (the
assignment lines it wrote), its objective is its decision's metric; crashed candidates
are FAIL trials and queued or running ones RUNNING trials (TPE's constant liar keeps new
suggestions away from them). So a restarted campaign samples where it left off.

Each draft sets every knob that changes, one edit per group of changed lines, and records
the values it stands for in `params`. The hybrid proposer tunes the knobs an LLM declared
the same way, with its structural change as the edits' `prefix`.
"""

from __future__ import annotations

import uuid

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState

from farm.config import ParamConfig
from farm.errors import ConfigError
from farm.records import DecisionKind, Direction, Draft, Edit, edit_hash
from proposer.base import LedgerEntry, ProposalContext, Proposer
from proposer.knobs import Knob, find_knobs, format_float, knob_edits, value_in

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

    def nothing_to_try(self, ctx: ProposalContext) -> str:
        if not self.params and not default_params(ctx):
            return (
                "the optuna proposer found no number to tune in the editable files: declare "
                "[[proposer.params]] in farm.toml, or make the hyperparameters numbers it can "
                'find (see README, "Using it on your own repo")'
            )
        try:
            for p in self.params:
                self._knob(ctx, p)
        except ConfigError as e:
            return str(e)
        return ""

    def propose(self, ctx: ProposalContext, n: int) -> list[Draft]:
        if not self.params:
            self.params = default_params(ctx)
        knobs = {p.name: self._knob(ctx, p) for p in self.params}
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
            past = self._past_trial(entry, space, knobs, ctx.files)
            if past is not None:
                study.add_trial(past)
        batch_id = f"optuna-{uuid.uuid4().hex[:8]}"
        seen = set(ctx.seen_hashes)
        drafts: list[Draft] = []
        for _ in range(n * ASKS_PER_DRAFT):
            if len(drafts) >= n:
                break
            trial = study.ask(space)  # stays RUNNING: later asks of this batch avoid it
            changes: dict[str, list[tuple[Knob, str]]] = {}
            shown, values = [], {}
            for p in self.params:
                k = knobs[p.name]
                literal = _literal(trial.params[p.name], p, k)
                values[p.name] = float(trial.params[p.name])
                if literal != k.literal:
                    changes.setdefault(p.file, []).append((k, literal))
                    shown.append(f"{p.name}={literal}")
            edits = list(self.prefix)
            edits += [e for path, c in changes.items() for e in knob_edits(ctx.files[path], c)]
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

    def _knob(self, ctx: ProposalContext, p: ParamConfig) -> Knob:
        found = knob_of(p, ctx.files)
        if found is None:
            raise ConfigError(
                f"proposer.params: {p.name} is not a number knob in {p.file} (a constant, "
                "config entry, call keyword or default, not marked `# farm: frozen`)"
            )
        return found

    def _past_trial(
        self,
        entry: LedgerEntry,
        space: dict[str, BaseDistribution],
        knobs: dict[str, Knob],
        files: dict[str, str],
    ) -> optuna.trial.FrozenTrial | None:
        """The entry as a finished or running trial, if its edits set every parameter."""
        if entry.status == DecisionKind.REJECTED.value:
            return None  # never ran: it says nothing about the objective
        values = {}
        for p in self.params:
            value = entry.params.get(
                p.name, _assigned(entry.edits, p, knobs[p.name], files[p.file])
            )
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


def knob_of(p: ParamConfig, files: dict[str, str]) -> Knob | None:
    """The tunable knob `p` names in `files`, if it is one."""
    found = [k for k in find_knobs(p.file, files.get(p.file, "")) if k.name == p.name]
    return found[0] if found else None


def _distribution(p: ParamConfig) -> BaseDistribution:
    if p.int:
        return IntDistribution(int(p.low), int(p.high), log=p.log)
    return FloatDistribution(p.low, p.high, log=p.log)


def _literal(value: float, p: ParamConfig, c: Knob) -> str:
    """The value as source text, in the style of the literal it replaces."""
    if p.int:
        return f"{int(value):_}" if "_" in c.literal else str(int(value))
    return format_float(value, scientific="e" in c.literal.lower())


def _assigned(edits: list[Edit], p: ParamConfig, knob: Knob, text: str) -> float | None:
    """The value the edits assign to `p` (the last edit that sets it wins), or None."""
    value = None
    for e in edits:
        if e.path != p.file:
            continue
        v = value_in(knob, text, e.replace)
        if v is not None:
            value = int(v) if p.int else float(v)
    return value


def default_params(ctx: ProposalContext) -> list[ParamConfig]:
    """A search space from the knobs of the editable files: declared knobs if there are any
    (constants, config blocks), else inline ones; each from a quarter to four times its
    value on a log scale, or for a value just below 1 (a decay, a beta) its distance to 1 so.
    Zero and negative values are switches or sentinels: left alone."""
    knobs = [
        k
        for path in ctx.editable
        if path.endswith(".py") and path in ctx.files
        for k in find_knobs(path, ctx.files[path], frozen=ctx.frozen)
        if k.value > 0
    ]
    params = []
    for k in [k for k in knobs if k.kind.is_declared()] or knobs:
        v = k.value
        if isinstance(v, int):
            low, high = float(max(1, v // 4)), float(v * 4)
        elif 0.5 < v < 1:
            low, high = 1 - (1 - v) * 4, 1 - (1 - v) / 4
        else:
            low, high = v / 4, v * 4
        params.append(
            ParamConfig(
                file=k.path,
                name=k.name,
                low=max(low, 1e-12),
                high=high,
                log=True,
                int=isinstance(v, int),
            )
        )
    return params
