"""farm.toml, read through one schema into dataclasses.

A target's farm.toml can be five lines (autoresearch layout):

    editable = ["train.py"]
    protected = ["prepare.py"]
    command = "uv run train.py"
    metric = "val_bpb"
    budget_s = 600

Everything else has a default. Sections: [merge], [resources], [proposer], [sandbox], [store],
[metrics].

Each key is declared once, as a dataclass field made by `setting` (farm/schema.py): its type
(the annotation), default, unit, range and a one-line help; adding a key is adding one
declaration. Loading refuses unknown keys and bad values with "<file>: [section] key: what is
wrong; what to write instead"; choices are str Enums. `farm init` (the keys marked
Tier.INIT) and docs/config.md (`reference`) are generated from the same declarations. The
merge rule's z-values are set by error rates (`alpha` and its kin: z = Φ⁻¹(1 − rate)); a z
written directly (older farm.toml files) overrides its rate.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.errors import ConfigError
from farm.records import Direction
from farm.schema import (
    Rate,
    Reader,
    Tier,
    default_text,
    keys,
    range_text,
    rate_of,
    setting,
    show,
    template,
    type_text,
    where,
)

CONFIG_NAME = "farm.toml"

# Variables a training process may inherit from the driver. Anything else (API keys,
# tokens, cloud credentials) never reaches it. Extend with [sandbox] env_allow.
DEFAULT_ENV_ALLOW = [
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TERM",
    "TMPDIR",
    "USER",
    "VIRTUAL_ENV",
    "PYTHONPATH",
    "LD_LIBRARY_PATH",
    "CUDA_HOME",
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
]


# -- choices -------------------------------------------------------------------------------


class ProposerKind(enum.StrEnum):
    MUTATE = "mutate"
    REPLAY = "replay"
    ANTHROPIC = "anthropic"
    OPTUNA = "optuna"
    HYBRID = "hybrid"


class Schedule(enum.StrEnum):
    BACKLOG = "backlog"  # refill the backlog while trials run
    ROUNDS = "rounds"  # the next batch only once the last is decided (to compare against)


class Strategy(enum.StrEnum):
    SINGLE = "single"
    FOCUSED = "focused"
    MIX = "mix"


class IsolationSetting(enum.StrEnum):
    AUTO = "auto"
    STRICT = "strict"
    BASIC = "basic"


class Network(enum.StrEnum):
    AUTO = "auto"
    ISOLATED = "isolated"
    HOST = "host"


# -- the sections --------------------------------------------------------------------------

# The merge rule's z-values, set by error rates. Defaults: 1 − Φ(z) of the z-values that
# scripts/bench/merge_quality.py chose (docs/performance.md), so that they derive to them.
Z, SCREEN_Z, EFFICACY_Z, PAIRED_Z, POWER_Z = 1.55, 0.35, 2.25, 1.5, 1.1


@dataclass
class MergeConfig:
    """How a candidate is judged: seed noise from baseline runs, a screen, confirmations
    judged one at a time (a group-sequential test), and the opt-in designs."""

    # Defaults from scripts/bench/merge_quality.py (docs/performance.md): the cheapest
    # setting that keeps <= 5% of no-effect changes and >= 90% of 2σ improvements.
    # 24, not 12: the incumbent's level and σ known better narrow every bar, so a no-effect
    # candidate is let go after fewer runs (1.58 trials, not 1.70, at both error goals).
    repeats: int = setting(
        24, doc="baseline runs that estimate the seed noise σ", unit="runs", ge=2, tier=Tier.INIT
    )
    confirm: int = setting(
        4,
        doc="re-runs a candidate may get, one at a time, before it is decided (0 = none)",
        unit="runs",
        ge=0,
        tier=Tier.INIT,
    )
    min_delta: float = setting(
        0.0, doc="smallest improvement worth keeping", unit="metric units", ge=0, tier=Tier.INIT
    )
    # What a deterministic target (σ = 0) is judged by alone; far below any seeded noise.
    min_rel_delta: float = setting(
        1e-4, doc="smallest improvement worth keeping, relative to the metric", ge=0, lt=1
    )
    z: float = setting(
        Z,
        doc="keep only improvements beyond z standard errors of the difference",
        ge=0,
        tier=Tier.ADVANCED,
        rate=Rate(
            "alpha",
            "level of the keep test: the chance a no-effect change passes its last look",
            Tier.INIT,
        ),
    )
    screen_z: float = setting(
        SCREEN_Z,
        doc="a screening run earns confirmations beyond screen_z standard errors",
        ge=0,
        tier=Tier.ADVANCED,
        rate=Rate(
            "screen_alpha",
            "level of the screen's gate: the chance a no-effect screen earns confirmations",
        ),
    )
    # Confirmations run one at a time (farm/merge.py `sequential`): the confirmations so
    # far stop early below futility_z standard errors (discard) or beyond efficacy_z (keep).
    futility_z: float = setting(
        0.0,
        doc="after a confirmation, discard early below futility_z standard errors "
        "(negative: more patient)",
        tier=Tier.ADVANCED,
    )
    efficacy_z: float = setting(
        EFFICACY_Z,
        doc="keep early, on two or more confirmations, beyond efficacy_z standard errors",
        ge=0,
        tier=Tier.ADVANCED,
        rate=Rate(
            "efficacy_alpha",
            "level of each early keep (on two or more confirmations, before the last)",
        ),
    )
    # The other early discard: a candidate whose runs fall power_z standard errors short of
    # a gain of `effect` σ is unlikely to be one (the discard side of a probability-ratio
    # test: it rises towards the gain as runs come in, where futility_z stays flat). Its line
    # (effect, power_z) was searched jointly with the other bars for the fewest trials per
    # no-effect candidate at both error goals: 1.5σ and 1.1 standard errors, not 2σ and 1.75.
    effect: float = setting(
        1.5,
        doc="the gain the early discard measures a candidate's shortfall from",
        unit="σ",
        ge=0,
        tier=Tier.ADVANCED,
    )
    power_z: float = setting(
        POWER_Z,
        doc="after a confirmation, discard early once the runs are power_z standard errors "
        "short of a gain of `effect` σ",
        tier=Tier.ADVANCED,
        rate=Rate(
            "beta",
            "level of each early discard: the chance a gain of `effect` σ is discarded there",
        ),
    )
    # The runs that win a keep are the luckier draws of the candidate (the winner's curse:
    # -0.2σ a keep of 2σ, far more for a false keep), and a flattering incumbent raises the
    # bar for everything after it; measured afresh, it stands at its true level. Always
    # only on request: where candidates' gains vary far more than the noise (`farm
    # simulate`'s landscape) it cost the one-slot loop a sixth more time and kept fewer
    # gains; where they vary less than `measure_spread` σ (most changes do little) a keep
    # near its bar is mostly luck, and it is measured (docs/performance.md, "Honest
    # estimates").
    measure_keeps: bool = setting(
        False,
        doc="measure every keep near its bar afresh by its own runs (afresh_runs) and judge "
        "against that",
        tier=Tier.ADVANCED,
    )
    measure_spread: float = setting(
        1.0,
        doc="measure a keep near its bar afresh while candidates' gains, from their "
        "screens, spread less than this (0: only with measure_keeps)",
        unit="σ",
        ge=0,
        tier=Tier.ADVANCED,
    )
    # A keep merged on evidence (a winner on a stale base) is run this many times for its
    # own estimate. On a farm of many slots the incumbent moves faster than a trial and
    # nearly every keep is merged on evidence: four runs each took 41% of 16 slots' time in
    # `farm simulate`; two still outvote one failed run.
    measure_runs: int = setting(
        2,
        doc="runs measuring a keep merged on evidence (at most confirm, one on a "
        "deterministic target)",
        ge=1,
        tier=Tier.ADVANCED,
    )
    # A keep measured afresh was a near thing, most of it luck, and every later candidate is
    # judged against the value these runs give it: measured by 2, null-heavy campaigns kept
    # 77% of a later 2σ gain, by 4 84%, by 8 86% (the 87% of campaigns with no such keep is
    # the ceiling), by 16 no more (docs/performance.md, "Honest estimates").
    afresh_runs: int = setting(
        8,
        doc="runs measuring a keep measured afresh (measure_spread, measure_keeps)",
        ge=1,
        tier=Tier.ADVANCED,
    )
    # A decision waits for its confirmations one after another. On a farm of several slots a
    # screen that earns confirmations starts confirm_ahead of them at once (an early keep
    # needs two), and slots that would otherwise idle run the rest ahead of the test; it
    # still reads them in order and stops at its decision (the runs after it are never
    # read): the same error rates, sooner. `farm simulate` measures it.
    confirm_ahead: int = setting(
        2,
        doc="confirmations a screen that earns them starts at once, the rest ahead on slots "
        "that would idle (0: one at a time, as the test asks)",
        unit="runs",
        ge=0,
    )
    # A winner on a stale base is re-run on the incumbent up to this many times; if the
    # incumbent moved again meanwhile, it is merged on that evidence (its gain added to the
    # incumbent's estimate) instead of chasing it. `farm simulate` shows the cost of more.
    max_rebases: int = setting(
        0,
        doc="re-runs of a stale winner on the moved incumbent before it merges on evidence",
        unit="runs",
        ge=0,
        tier=Tier.INIT,
    )
    # A run that crashes, prints a NaN or ends without its metric within it is decided
    # `crashed` and never takes a full budget; one still running at preflight_s has passed.
    preflight_s: float = setting(
        0.0,
        doc="a pre-flight run this long before a new candidate's screen (0 = none)",
        unit="s",
        ge=0,
        tier=Tier.INIT,
    )
    # Paired screens: a screen runs with the seed of one of its reference's runs (common
    # random numbers) and, where the campaign's screens show that pairing at least halves
    # the variance of their gap to that run, earns confirmations beyond paired_z σ of paired
    # gaps instead. It pays where drafts are small changes (the seed carries over) and can
    # discard a large one that redraws its random numbers: `make demo` lost the planted
    # clamp fix to it (docs/performance.md#paired-seeds).
    paired: bool = setting(
        False, doc="paired screens (common random numbers; README: Paired screens)", tier=Tier.INIT
    )
    paired_z: float = setting(
        PAIRED_Z,
        doc="a paired screen earns confirmations beyond paired_z σ of paired gaps",
        ge=0,
        tier=Tier.ADVANCED,
        rate=Rate(
            "paired_alpha",
            "level of the paired screen's gate: the chance a no-effect screen passes it",
        ),
    )
    # Multi-fidelity screening: a new candidate first runs screen_budget_s seconds (its
    # FARM_BUDGET_S says so: the target must train for that long), and only the best
    # `promote` share of the short screens ranked against the same incumbent go on to a
    # full budget. Short budgets favour changes that pay off early, so screening short
    # stops for good once the short and full screens of the same candidates stop ranking
    # alike: Kendall's τ below min_rank_agreement over rank_pairs pairs or more.
    screen_budget_s: float = setting(
        0.0,
        doc="screen new candidates this short first (0 = at the full budget); unset: "
        "¼ of budget_s where an editable or protected file reads FARM_BUDGET_S",
        unit="s",
        ge=0,
        tier=Tier.INIT,
    )
    promote: float = setting(
        0.33, doc="the share of short screens promoted to a full budget", gt=0, le=1
    )
    # A short screen ranked below the cut is held, not discarded: promoted later if it
    # climbs into the best `promote` share as more come in (ASHA), or when a slot would
    # idle; once the incumbent moves, it is screened short again on the new incumbent,
    # up to `looks` short screens in all. Ranked against a strong cohort is not worse than
    # its reference: a real gain ranked out while bigger ones were about gets another look.
    looks: int = setting(
        1,
        doc="short screens a candidate may get, each against the incumbent of its time",
        ge=1,
    )
    min_rank_agreement: float = setting(
        0.3,
        doc="screen short only while short and full screens rank alike (Kendall's τ)",
        ge=-1,
        le=1,
    )
    rank_pairs: int = setting(
        10, doc="pairs of screens ranked before their agreement is trusted", ge=2
    )


@dataclass
class ResourcesConfig:
    """What one trial asks of Ray."""

    slots: int = setting(0, doc="concurrent trials; 0 = as many as the cluster can hold", ge=0)
    cpus_per_trial: float = setting(1.0, doc="CPUs each trial holds", ge=0, tier=Tier.INIT)
    gpus_per_trial: float = setting(
        0.0, doc="GPUs each trial holds (1 on a GPU cluster)", ge=0, tier=Tier.INIT
    )
    accelerator_type: str = setting(
        "", doc='Ray accelerator_type, e.g. "A100" (docs/gpu-cluster.md for an RTX 4090)'
    )
    labels: dict[str, str] = setting(
        doc='Ray node label_selector, e.g. { gpu-model = "rtx4090" }', factory=dict
    )
    custom: dict[str, float] = setting(doc="Ray custom resources per trial", ge=0, factory=dict)


@dataclass
class ModelPrice:
    """USD per million tokens of one model; `[proposer.prices."<model>"]` in farm.toml."""

    input: float = setting(doc="input tokens", unit="USD/Mtok", ge=0)
    output: float = setting(doc="output tokens", unit="USD/Mtok", ge=0)
    cache_write: float = setting(doc="prompt-cache writes (5-minute cache)", unit="USD/Mtok", ge=0)
    cache_read: float = setting(doc="prompt-cache hits", unit="USD/Mtok", ge=0)


@dataclass
class ParamConfig:
    """One `[[proposer.params]]` table: a knob optuna may tune (named as proposer/knobs.py
    names it: a constant, a config entry, a call keyword, a default)."""

    file: str = setting(doc="an editable file")
    name: str = setting(doc='e.g. "LEARNING_RATE", "RandomForestClassifier.max_depth", "CONFIG.lr"')
    low: float = setting(doc="lowest value tried")
    high: float = setting(doc="highest value tried")
    log: bool = setting(False, doc="sample on a log scale (learning rates, weight decays)")
    int: bool = setting(False, doc="an integer parameter (depth, batch size)")


DEFAULT_FOCUSES = [
    "hyperparameters",
    "optimisation",
    "architecture",
    "data and augmentation",
    "bug hunting",
]


DEFAULT_BATCH, DEFAULT_BACKLOG = 4, 4  # the least batch_size and backlog are sized to


@dataclass
class ProposerConfig:
    """Where candidates come from: offline proposers, an LLM, or both."""

    kind: ProposerKind = setting(
        ProposerKind.MUTATE,
        doc="mutate, optuna (offline, no API key), anthropic, hybrid (an LLM), replay (a file)",
        tier=Tier.INIT,
    )
    # Unset, both are sized from the slots and the proposer's latency (farm.propose.
    # feed_sizes) and said in the first lines of a run; `farm simulate` tells which keep
    # N slots busy.
    batch_size: int | None = setting(
        None, doc="drafts asked for per proposer call; unset: sized from the slots", ge=1
    )
    backlog: int | None = setting(
        None,
        doc="validated candidates kept ready beyond the free slots; unset: sized from the slots",
        ge=0,
    )
    schedule: Schedule = setting(
        Schedule.BACKLOG,
        doc="backlog: propose while trials run; rounds: the next batch once the last is decided",
    )
    seed: int = setting(0, doc="the offline proposers' random seed")
    replay_file: str = setting("", doc='JSONL of drafts, for kind = "replay"')
    max_edit_bytes: int = setting(
        20_000, doc="a draft's edits larger than this are rejected", unit="bytes", ge=1
    )
    # A batch with no usable draft (unreadable answers, invalid edits, the API unavailable
    # after its retries) is retried after backoff_s, doubled each time in a row (at most
    # 10 minutes); after max_failed_batches in a row, proposing stops with the cause.
    max_failed_batches: int = setting(
        3, doc="batches in a row with no usable draft before proposing stops", ge=1
    )
    backoff_s: float = setting(
        10.0, doc="wait after a batch with no usable draft, doubled each time", unit="s", ge=0
    )
    model: str = setting("claude-sonnet-4-6", doc='the Claude model, for kind = "anthropic"')
    max_tokens: int = setting(16_000, doc="per API call (a batch of drafts)", unit="tokens", ge=1)
    # Not sent unless set: API version 2026-10-21 (anthropic SDK >= 2) rejects it.
    temperature: float | None = setting(
        None, doc="sampling temperature; unset: not sent", ge=0, le=1
    )
    strategy: Strategy = setting(
        Strategy.SINGLE, doc="single prompt, one focus per call (focused), or a mix per batch"
    )
    focuses: list[str] = setting(
        doc="the focuses of strategy focused and mix", factory=lambda: list(DEFAULT_FOCUSES)
    )
    spend_cap_usd: float = setting(
        10.0, doc="proposing stops once the ledger's LLM cost reaches it", unit="USD", ge=0
    )
    timeout_s: float = setting(300.0, doc="per API request", unit="s", gt=0)
    max_retries: int = setting(
        4, doc="the SDK's retries on 429, 529, 5xx and timeouts, with backoff", ge=0
    )
    api_key_file: str = setting(
        "", doc="file holding the API key, relative to the target; else $ANTHROPIC_API_KEY"
    )
    base_url: str = setting("", doc="the API's URL; default $ANTHROPIC_BASE_URL, else the SDK's")
    prices: dict[str, ModelPrice] = setting(
        doc="prices of models, added to / overriding the built-ins", factory=dict
    )
    digest_tokens: int = setting(
        6_000, doc="budget of the ledger digest in the prompt (≈ chars / 4)", unit="tokens", ge=0
    )
    files_tokens: int = setting(
        32_000, doc="budget of the editable and protected files in the prompt", unit="tokens", ge=1
    )
    tune_trials: int = setting(
        8, doc='kind = "hybrid": TPE trials on the knobs of each structural change', ge=1
    )
    params: list[ParamConfig] = setting(
        doc='kind = "optuna": [[proposer.params]] tables, the knobs it tunes', factory=list
    )


@dataclass
class SandboxConfig:
    """What a trial may see and do (docs/security.md)."""

    # strict: bubblewrap namespaces or refuse to run; basic: a process group (guarantees
    # missing, said at the start); auto: strict where bubblewrap works.
    isolation: IsolationSetting = setting(
        IsolationSetting.AUTO,
        doc="strict: bubblewrap or refuse to run; basic: a process group; auto: strict "
        "where it works",
        tier=Tier.INIT,
    )
    env_allow: list[str] = setting(
        doc="variables trials inherit, added to the built-in allow-list", factory=list
    )
    env: dict[str, str] = setting(doc="variables set for every trial", factory=dict)
    # "~" is the worker's home. Never writable.
    read_only_paths: list[str] = setting(
        doc="host paths a trial may read besides the system and the runtime",
        factory=list,
        tier=Tier.INIT,
        example='["~/.cache/data"]',
    )
    output_cap_kb: int = setting(
        256, doc="captured output kept per trial (the tail)", unit="KiB", ge=1
    )
    network: Network = setting(
        Network.AUTO, doc="isolated, host, or auto (isolated where the OS allows)"
    )
    grace_s: float = setting(5.0, doc="between SIGTERM and SIGKILL at the budget", unit="s", ge=0)
    memory_mb: int = setting(
        0,
        doc="memory a trial's processes may hold together; 0 = the node's memory over the "
        "trials it runs at once",
        unit="MB",
        ge=0,
    )


@dataclass
class StoreConfig:
    """Where the queue and ledger live."""

    url: str = setting(
        "", doc="sqlite:///path/farm.db or redis://host:port/db; default <target>/.farm/farm.db"
    )


# Role processes serve their metrics next to `farm run`'s port: [metrics] address + offset.
ROLE_PORT_OFFSETS = {"run": 0, "control": 1, "work": 2, "propose": 3}
EXPORTER_ADDRESS = "127.0.0.1:9463"  # `farm exporter --address` default


@dataclass
class MetricsConfig:
    """Prometheus metrics of the farm's processes (docs/observability.md)."""

    enabled: bool = setting(True, doc="farm run/control/work/propose serve Prometheus metrics")
    address: str = setting("127.0.0.1:9464", doc="host:port; loopback unless you mean to expose it")
    # Keys: a trial's `hardware` (a GPU model such as "NVIDIA GeForce RTX 4090", or "cpu");
    # "default" for any other. Read from the farm.toml a campaign started with.
    hour_usd: dict[str, float] = setting(
        doc="USD per hour of training by hardware class, for farm_cost_per_kept_usd",
        ge=0,
        factory=dict,
    )

    def role_address(self, role: str) -> str:
        """Where a role process serves: `address`'s host, its port + the role's offset."""
        host, port = self.host_port()
        shown = f"[{host}]" if ":" in host else host
        return f"{shown}:{port + ROLE_PORT_OFFSETS[role]}"

    def host_port(self) -> tuple[str, int]:
        """`address` split; "[::1]:9464" for IPv6. ConfigError when it is not host:port."""
        host, sep, port = self.address.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f'{self.address!r} is not host:port; write one like "127.0.0.1:9464"')
        return host, int(port)


@dataclass
class TargetConfig:
    """The target: what proposals may change, how a trial runs and what it is scored by."""

    editable: list[str] = setting(doc="files proposals may change")
    command: str = setting(doc="runs one trial in a fresh checkout")
    metric: str = setting(doc="the name of a `name: value` summary line trials print")
    protected: list[str] = setting(
        doc="files that must be byte-identical at run time", factory=list
    )
    metric_regex: str = setting(
        "",
        doc="instead of a summary line: a regex, one capture group around the value",
        tier=Tier.INIT,
        example="'loss (\\S+) at end'",
    )
    direction: Direction = setting(Direction.MINIMIZE, doc="minimize or maximize the metric")
    budget_s: float = setting(300.0, doc="hard wall-clock budget per trial", unit="s", gt=0)
    # When set, the metric is read from its output alone (measured, not claimed by code
    # the candidate wrote).
    evaluate: str = setting(
        "",
        doc="a protected command that measures the metric after `command` (docs/security.md)",
        tier=Tier.INIT,
        example='"python evaluate.py"',
    )
    evaluate_budget_s: float = setting(0.0, doc="budget of `evaluate`; 0: budget_s", unit="s", ge=0)
    artifacts: list[str] = setting(
        doc="what training leaves for `evaluate` (fnmatch patterns; a directory keeps what is "
        "under it): everything else it wrote is removed first, and a declared file that loads "
        "as code (a pickle calling more than a tensor state dict needs) is `tampered`",
        factory=list,
        tier=Tier.INIT,
        example='["model.safetensors"]',
    )
    artifacts_safe_load: bool = setting(
        False,
        doc="the evaluator loads artifacts with safe loaders only (safetensors, torch.load "
        "with weights_only=True, numpy without pickle): farm need not refuse pickles",
    )
    frozen: list[str] = setting(
        doc="the evaluation protocol where it sits in an editable file (names, dotted paths "
        'such as "Config.n_folds", patterns such as "EVAL_*"): a draft that changes one is '
        "rejected",
        factory=list,
        tier=Tier.INIT,
        example='["ValidationConfig", "EVAL_*"]',
    )
    bounds: list[float] = setting(
        doc="[lowest, highest] plausible metric; one outside is invalid_metric",
        factory=list,
        tier=Tier.INIT,
        example="[0, 100]",
    )
    program: str = setting("program.md", doc="instructions for the proposer")
    seed_env: str = setting("FARM_SEED", doc="the trial's seed reaches training through it")
    campaign: str = setting("default", doc="names the campaign's git branches farm/<campaign>/…")
    merge: MergeConfig = setting(doc="", factory=MergeConfig)
    resources: ResourcesConfig = setting(doc="", factory=ResourcesConfig)
    proposer: ProposerConfig = setting(doc="", factory=ProposerConfig)
    sandbox: SandboxConfig = setting(doc="", factory=SandboxConfig)
    store: StoreConfig = setting(doc="", factory=StoreConfig)
    metrics: MetricsConfig = setting(doc="", factory=MetricsConfig)

    def to_dict(self) -> dict[str, Any]:
        """The snapshot a campaign stores: plain TOML-like values (enums as their value)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @property
    def env_allow(self) -> list[str]:
        return DEFAULT_ENV_ALLOW + [k for k in self.sandbox.env_allow if k not in DEFAULT_ENV_ALLOW]


# -- loading -------------------------------------------------------------------------------


def load_config(target: Path) -> TargetConfig:
    """Read `<target>/farm.toml`. Raises ConfigError naming the key and the file."""
    path = target / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"{path} not found: run `farm init {target}` to write one")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    cfg = config_from_dict(raw, source=str(path))
    if "screen_budget_s" in raw.get("merge", {}) or not reads_budget(target, cfg):
        return cfg
    return short_screens_on(cfg)


# Where the target trains for the budget farm gives it (workers.sandbox sets it per trial),
# a short screen is that budget shortened: new candidates screen short unless told not to.
BUDGET_ENV = "FARM_BUDGET_S"
SHORT_SHARE = 0.25  # a default short screen's share of budget_s


def reads_budget(target: Path, cfg: TargetConfig) -> bool:
    """Whether an editable or protected file of the target reads FARM_BUDGET_S."""
    for rel in [*cfg.editable, *cfg.protected]:
        try:
            if BUDGET_ENV in (target / rel).read_text(errors="replace"):
                return True
        except OSError:
            continue  # a missing file is said where the campaign is prepared
    return False


def short_screens_on(cfg: TargetConfig) -> TargetConfig:
    """`cfg` with short screens of SHORT_SHARE of its budget, as farm.toml files that leave
    [merge] screen_budget_s unset get for a target that reads FARM_BUDGET_S (the rank
    monitor stops them where they rank candidates unlike full budgets)."""
    merge = dataclasses.replace(cfg.merge, screen_budget_s=SHORT_SHARE * cfg.budget_s)
    return dataclasses.replace(cfg, merge=merge)


def config_from_dict(raw: dict[str, Any], *, source: str) -> TargetConfig:
    """A farm.toml's table, checked against the schema (keys, types, ranges, choices) and
    across keys. Raises ConfigError "<source>: [section] key: what is wrong; what to write"."""
    cfg = Reader(TargetConfig, source, strict=True).build(TargetConfig, raw, "")
    _check(cfg, source)
    return cfg


def stored_config(config: dict[str, Any]) -> TargetConfig:
    """A campaign's stored farm.toml snapshot, read back through the schema: every reader of
    a campaign's settings gets typed values and the schema's defaults for keys an older farm
    did not store. Keys a newer or older farm stored that this one lacks are left out."""
    return Reader(TargetConfig, "the campaign's stored config", strict=False).build(
        TargetConfig, config, ""
    )


def _check(cfg: TargetConfig, source: str) -> None:
    """What one key's declaration cannot say: relations between keys, paths, patterns."""

    def fail(section: str, key: str, why: str) -> None:
        raise ConfigError(f"{source}: {where(section, key)}: {why}")

    if not cfg.editable:
        fail("", "editable", 'empty; list the files proposals may change, e.g. ["train.py"]')
    for key, paths in (("editable", cfg.editable), ("protected", cfg.protected)):
        for path in paths:
            if not path or Path(path).is_absolute() or ".." in Path(path).parts:
                fail("", key, f"{path!r}: write a relative path inside the target repo")
    both = set(cfg.editable) & set(cfg.protected)
    if both:
        fail("", "protected", f"{sorted(both)[0]!r} is also editable; a file is one or the other")
    if not cfg.command.strip():
        fail("", "command", 'empty; write the command that runs one trial, e.g. "python train.py"')
    if not cfg.metric_regex and not re.fullmatch(r"[A-Za-z_][\w./-]*", cfg.metric):
        fail("", "metric", f'{cfg.metric!r}: write a summary-line name like "val_bpb"')
    if cfg.metric_regex:
        try:
            rx = re.compile(cfg.metric_regex)
        except re.error as e:
            fail("", "metric_regex", f"not a valid regex ({e}); write one with one capture group")
        else:
            if rx.groups != 1:
                fail("", "metric_regex", "write exactly one capture group around the value")
    if cfg.evaluate_budget_s and not cfg.evaluate.strip():
        fail("", "evaluate_budget_s", "set `evaluate` too, the command it is the budget of")
    if cfg.artifacts and not cfg.evaluate.strip():
        fail("", "artifacts", "set `evaluate` too, the command that reads them")
    for name in cfg.frozen:
        if not re.fullmatch(r"[\w.*?\[\]!-]+", name):
            fail("", "frozen", f"{name!r}: give a name, a dotted path or a pattern (EVAL_*)")
    for pattern in cfg.artifacts:
        if not pattern or Path(pattern).is_absolute() or ".." in Path(pattern).parts:
            fail("", "artifacts", f"{pattern!r} must be a relative path or pattern inside the repo")
    if cfg.bounds and not (len(cfg.bounds) == 2 and cfg.bounds[0] < cfg.bounds[1]):
        fail("", "bounds", f"{cfg.bounds}: write [lowest, highest] plausible values, lowest first")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", cfg.campaign):
        fail(
            "",
            "campaign",
            f"{cfg.campaign!r}: write letters, digits, '.', '_' and '-' (it names git branches)",
        )
    m = cfg.merge
    if m.preflight_s >= cfg.budget_s:
        fail(
            "merge",
            "preflight_s",
            f"{m.preflight_s:g}: write 0 (none) or fewer seconds than budget_s",
        )
    if m.screen_budget_s >= cfg.budget_s:
        fail(
            "merge",
            "screen_budget_s",
            f"{m.screen_budget_s:g}: write 0 (screen at the full budget) or fewer seconds than "
            "budget_s",
        )
    if m.futility_z >= m.efficacy_z:
        fail(
            "merge",
            "futility_z",
            f"{m.futility_z:g} would discard every candidate not kept early; write less than "
            f"efficacy_z ({m.efficacy_z:g})",
        )
    p = cfg.proposer
    if p.strategy is not Strategy.SINGLE and not [f for f in p.focuses if f.strip()]:
        fail("proposer", "focuses", f'strategy "{p.strategy}" needs at least one; list them')
    for i, par in enumerate(p.params):
        section = f"proposer.params #{i + 1}"
        if par.file not in cfg.editable:
            fail(section, "file", f"{par.file!r} is not editable; write one of {cfg.editable}")
        if not re.fullmatch(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[\d+\])*(?:#\d+)?", par.name):
            fail(
                section,
                "name",
                f"{par.name!r}: write a knob name like LR, CONFIG.lr or AdamW.betas[0]",
            )
        if not par.low < par.high:
            fail(section, "low", f"{par.low:g}: write less than high ({par.high:g})")
        if par.log and par.low <= 0:
            fail(section, "log", "a log scale needs low > 0; raise low or write log = false")
        if par.int and not (par.low.is_integer() and par.high.is_integer()):
            fail(section, "int", "an integer parameter needs whole-number low and high")
    names = [(par.file, par.name) for par in p.params]
    if len(set(names)) != len(names):
        fail("proposer", "params", "a knob is declared twice; keep one table per knob")
    for path in cfg.sandbox.read_only_paths:
        if not Path(path).expanduser().is_absolute():
            fail("sandbox", "read_only_paths", f"{path!r}: write an absolute path (or one under ~)")
    try:
        cfg.metrics.host_port()
    except ConfigError as e:
        fail("metrics", "address", str(e))


def init_template() -> str:
    """What `farm init` adds below the target's own keys: the keys marked Tier.INIT,
    commented out at their defaults (or an example), by table. Nothing is set: a default
    written into every file would freeze it there."""
    head = [
        "# Every other key has its default (docs/config.md lists them all). Worth a look,",
        "# uncomment to set (with its [table] line):",
    ]
    return template(TargetConfig, head)


_MERGE_MATH = """\
## How the z-values follow from the error rates

The merge rule compares a candidate's runs with the incumbent's in standard errors of the
difference of their means, σ·√(1/n + 1/m). Each gate is a one-sided z-test: a change with
no effect passes it with the chance `rate`, so its bar is

    z = Φ⁻¹(1 − rate)        (Python: -statistics.NormalDist().inv_cdf(rate), to 6 decimals)

σ is itself estimated from the baseline's `repeats` runs, so each bar is applied as the
quantile of a Student t with `repeats` − 1 degrees of freedom at that level (z 1.5 is 1.62
standard errors with 12 baseline runs, 2.05 with 4): few baseline runs widen every bar
rather than let σ's own error through. `power_z` is the discard side: after a run, a
candidate whose runs are `power_z` standard errors short of a gain of `effect` σ is
discarded (`beta`: the chance a real gain of `effect` σ is discarded at one look).

| rate | sets | default rate | z |
| --- | --- | --- | --- |
{rows}

The default rates are 1 − Φ(z) of the z-values that scripts/bench/merge_quality.py chose
(docs/performance.md), so they give those z-values exactly. A rate is the level of one look,
not the campaign's false-keep rate: what the screen, the early looks and the last look add
up to (false keeps, power, trials per candidate) is what scripts/bench/merge_quality.py
measures (docs/performance.md, "Merge quality under noise"); run it after changing a rate.
`futility_z` (default 0: stop once the runs so far show no gain at all) has no rate: it
trades trials for power, not for false keeps.

A z-value written directly (as farm.toml files from before the rates did: `z = 1.5`) overrides
its rate; a file may set one of the two, not both. The other constants of the rule (outlier
and clipping distances, the paired-screen thresholds) live in farm/merge.py with their reasons.
"""


def reference() -> str:
    """docs/config.md: every key of the schema; tests/farm/test_config.py keeps them equal."""
    out = [
        "# farm.toml reference",
        "",
        "Generated from farm/config.py (`python -m farm.config > docs/config.md`); a test",
        "checks that they agree. Only `editable`, `command` and `metric` are required;",
        "`farm init` writes those it can find out and lists the keys marked *init*. Keys",
        "marked *advanced* follow from others: set them only to override.",
    ]
    table = None
    for k in keys(TargetConfig):
        if k.table != table:
            table = k.table
            title = table or "top level"
            out += ["", f"## {title}", "", "| key | type | default | allowed | tier | meaning |"]
            out.append("| --- | --- | --- | --- | --- | --- |")
        allowed = range_text(k.spec) or "—"
        unit = f" ({k.spec.unit})" if k.spec.unit else ""
        row = [k.name, type_text(k.type), default_text(k), allowed, k.spec.tier.value]
        out.append(
            "| "
            + " | ".join(f"`{c}`" if i == 0 else c for i, c in enumerate(row))
            + f" | {k.spec.doc}{unit} |"
        )
    rows = [
        f"| `{k.spec.rate.key}` | `{k.name}` | {rate_of(k.default):.6g} | {show(k.default)} |"
        for k in keys(TargetConfig)
        if k.spec.rate is not None
    ]
    out += ["", _MERGE_MATH.format(rows="\n".join(rows))]
    return "\n".join(out).rstrip("\n") + "\n"


if __name__ == "__main__":
    print(reference(), end="")
