"""farm.toml, read into dataclasses. Unknown keys and bad values name the key and the file.

A target's farm.toml can be five lines (autoresearch layout):

    editable = ["train.py"]
    protected = ["prepare.py"]
    command = "uv run train.py"
    metric = "val_bpb"
    budget_s = 600

Everything else has a default. Sections: [merge], [resources], [proposer], [sandbox], [store],
[metrics].
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from farm.errors import ConfigError
from farm.records import Direction

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


@dataclass
class MergeConfig:
    # Defaults from scripts/bench/merge_quality.py (docs/performance.md): the cheapest
    # setting that keeps <= 5% of no-effect changes and >= 90% of 2σ improvements.
    repeats: int = 12  # baseline runs used to estimate seed noise σ
    confirm: int = 4  # independent re-runs a candidate may get before it is decided (0 = none)
    min_delta: float = 0.0  # smallest improvement worth keeping, in metric units
    # ... and relative to the metric's scale: what a deterministic target (σ = 0) is judged
    # by alone; far below the noise of any seeded target.
    min_rel_delta: float = 1e-4
    z: float = 1.5  # keep only improvements beyond z standard errors of the difference
    screen_z: float = 0.25  # a screening run earns confirmations beyond screen_z·σ
    # Confirmations run one at a time (farm/merge.py `sequential`): the confirmations so
    # far stop early below futility_z standard errors (discard) or beyond efficacy_z (keep).
    futility_z: float = 0.0
    efficacy_z: float = 2.5
    # A winner on a stale base is re-run on the incumbent up to this many times; if the
    # incumbent moved again meanwhile, it is merged on that evidence (its gain added to the
    # incumbent's estimate) instead of chasing it. `farm simulate` shows the cost of more.
    max_rebases: int = 0
    # Seconds of a pre-flight run before a new candidate's screen (0 = none): a run that
    # crashes, prints a NaN or ends without its metric within it is decided `crashed` and
    # never takes a full budget; one still running at preflight_s has passed (it is stopped).
    preflight_s: float = 0.0
    # Paired screens (off by default): a screen runs with the seed of one of its reference's
    # runs (common random numbers) and, where the campaign's screens show that pairing at
    # least halves the variance of their gap to that run, earns confirmations beyond
    # paired_z σ of paired gaps instead. It pays where drafts are small changes (the seed
    # carries over) and can discard a large one that redraws its random numbers: `make demo`
    # lost the planted clamp fix to it (docs/performance.md#paired-seeds).
    paired: bool = False
    paired_z: float = 1.5
    # Multi-fidelity screening (0 = off): a new candidate first runs screen_budget_s seconds
    # (its FARM_BUDGET_S says so: the target must train for that long), and only the best
    # `promote` share of the short screens ranked against the same incumbent go on to a
    # full budget. Short budgets favour changes that pay off early, so screening short
    # stops for good once the short and full screens of the same candidates stop ranking
    # alike: Kendall's τ below min_rank_agreement over rank_pairs pairs or more.
    screen_budget_s: float = 0.0
    promote: float = 0.33
    min_rank_agreement: float = 0.3
    rank_pairs: int = 10


@dataclass
class ResourcesConfig:
    slots: int = 0  # concurrent trials; 0 = as many as the cluster can hold
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    accelerator_type: str = ""  # Ray accelerator_type, e.g. "A100"; see docs for RTX 4090
    labels: dict[str, str] = field(default_factory=dict)  # Ray node label_selector
    custom: dict[str, float] = field(default_factory=dict)  # Ray custom resources


@dataclass
class ModelPrice:
    """USD per million tokens of one model; `[proposer.prices."<model>"]` in farm.toml."""

    input: float
    output: float
    cache_write: float  # prompt-cache writes (5-minute cache)
    cache_read: float  # prompt-cache hits


@dataclass
class ParamConfig:
    """One `[[proposer.params]]` table: a knob optuna may tune (named as proposer/knobs.py
    names it: a constant, a config entry, a call keyword, a default)."""

    file: str  # an editable file
    name: str  # e.g. "LEARNING_RATE", "RandomForestClassifier.max_depth", "CONFIG.lr"
    low: float
    high: float
    log: bool = False  # sample on a log scale (learning rates, weight decays)
    int: bool = False  # an integer parameter (depth, batch size)


DEFAULT_FOCUSES = [
    "hyperparameters",
    "optimisation",
    "architecture",
    "data and augmentation",
    "bug hunting",
]


@dataclass
class ProposerConfig:
    kind: str = "mutate"  # mutate | replay | anthropic | optuna | hybrid
    batch_size: int = 4  # drafts asked for per proposer call
    backlog: int = 4  # validated candidates kept ready beyond the free slots
    # backlog: refill the backlog while trials run (LLM latency hides behind training);
    # rounds: a synchronous loop, the next batch only once the last is decided (to compare).
    schedule: str = "backlog"
    seed: int = 0  # the offline proposers' random seed
    replay_file: str = ""  # JSONL of drafts, for kind = "replay"
    max_edit_bytes: int = 20_000  # a draft's edits larger than this are rejected
    # A batch with no usable draft (unreadable answers, invalid edits, the API unavailable
    # after its retries) is retried after backoff_s, doubled each time in a row (at most
    # 10 minutes); after max_failed_batches in a row, proposing stops with the cause.
    max_failed_batches: int = 3
    backoff_s: float = 10.0
    # kind = "anthropic"
    model: str = "claude-sonnet-4-6"
    max_tokens: int = 16_000  # per API call (a batch of drafts with its edits)
    # Not sent unless set: API version 2026-10-21 (anthropic SDK >= 2) rejects it.
    temperature: float | None = None
    strategy: str = "single"  # single | focused | mix
    focuses: list[str] = field(default_factory=lambda: list(DEFAULT_FOCUSES))
    spend_cap_usd: float = 10.0  # proposing stops once the ledger's LLM cost reaches it
    timeout_s: float = 300.0  # per API request
    max_retries: int = 4  # the SDK's retries on 429, 529, 5xx and timeouts, with backoff
    api_key_file: str = ""  # file holding the key (relative to the target); else $ANTHROPIC_API_KEY
    base_url: str = ""  # default: $ANTHROPIC_BASE_URL, else the SDK's
    prices: dict[str, ModelPrice] = field(default_factory=dict)  # add to / override built-ins
    digest_tokens: int = 6_000  # budget of the ledger digest in the prompt (≈ chars / 4)
    files_tokens: int = 32_000  # budget of the editable and protected files in the prompt
    # kind = "hybrid": TPE trials on the knobs of each structural change before the next
    tune_trials: int = 8
    # kind = "optuna"
    params: list[ParamConfig] = field(default_factory=list)


@dataclass
class SandboxConfig:
    # strict: bubblewrap namespaces or refuse to run; basic: a process group (guarantees
    # missing, said at the start); auto: strict where bubblewrap works. docs/security.md.
    isolation: str = "auto"
    env_allow: list[str] = field(default_factory=list)  # added to the built-in allow-list
    env: dict[str, str] = field(default_factory=dict)  # set for every trial
    # Host paths a trial may read besides the system and the runtime found on PATH
    # (datasets, a conda install); "~" is the worker's home. Never writable.
    read_only_paths: list[str] = field(default_factory=list)
    output_cap_kb: int = 256  # captured output kept per trial (the tail)
    network: str = "auto"  # isolated | host | auto (isolated where the OS allows)
    grace_s: float = 5.0  # between SIGTERM and SIGKILL at the budget
    # Memory a trial's processes may hold together, in MB; 0 = the node's memory (as Ray
    # counts it) divided by the trials it runs at once.
    memory_mb: int = 0


@dataclass
class StoreConfig:
    url: str = ""  # default: sqlite:///<target>/.farm/farm.db


# Role processes serve their metrics next to `farm run`'s port: [metrics] address + offset.
ROLE_PORT_OFFSETS = {"run": 0, "control": 1, "work": 2, "propose": 3}
EXPORTER_ADDRESS = "127.0.0.1:9463"  # `farm exporter --address` default


@dataclass
class MetricsConfig:
    enabled: bool = True  # farm run/control/work/propose serve Prometheus metrics
    address: str = "127.0.0.1:9464"  # host:port; loopback unless you mean to expose it
    # USD per hour of training by hardware class (a trial's `hardware`: a GPU model such as
    # "NVIDIA GeForce RTX 4090", or "cpu"); "default" for any other. Prices compute in
    # farm_cost_per_kept_usd; read from the farm.toml a campaign started with.
    hour_usd: dict[str, float] = field(default_factory=dict)

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
            raise ConfigError(f'{self.address!r} is not host:port, e.g. "127.0.0.1:9464"')
        return host, int(port)


@dataclass
class TargetConfig:
    editable: list[str]
    command: str
    metric: str  # name of a `name: value` summary line
    protected: list[str] = field(default_factory=list)
    metric_regex: str = ""  # overrides `metric` parsing: one capture group, the value
    direction: Direction = Direction.MINIMIZE
    budget_s: float = 300.0  # hard wall-clock budget per trial
    # A protected command run after `command` in a fresh sandbox that sees the trial's
    # directory read-only: when set, the metric is read from its output alone (measured,
    # not claimed by code the candidate wrote).
    evaluate: str = ""
    evaluate_budget_s: float = 0.0  # 0: budget_s
    # What training leaves for `evaluate` (fnmatch patterns; a directory keeps what is under
    # it): everything else it wrote is removed first, and a declared file that loads as code
    # (a pickle calling more than a tensor state dict needs) makes the trial `tampered`.
    artifacts: list[str] = field(default_factory=list)
    # The evaluator loads artifacts with safe loaders only (safetensors, torch.load with
    # weights_only=True, numpy without pickle): farm need not refuse pickles.
    artifacts_safe_load: bool = False
    # The evaluation protocol where it sits in an editable file (names, dotted paths such as
    # "Config.n_folds", fnmatch patterns such as "EVAL_*"): a draft that changes one is rejected.
    frozen: list[str] = field(default_factory=list)
    bounds: list[float] = field(default_factory=list)  # [lo, hi]: a metric outside is invalid
    program: str = "program.md"  # instructions for the proposer
    seed_env: str = "FARM_SEED"  # the trial's seed reaches training through this variable
    campaign: str = "default"
    merge: MergeConfig = field(default_factory=MergeConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    proposer: ProposerConfig = field(default_factory=ProposerConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["direction"] = self.direction.value
        return d

    @property
    def env_allow(self) -> list[str]:
        return DEFAULT_ENV_ALLOW + [k for k in self.sandbox.env_allow if k not in DEFAULT_ENV_ALLOW]


def load_config(target: Path) -> TargetConfig:
    """Read `<target>/farm.toml`. Raises ConfigError naming the key and the file."""
    path = target / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"{path} not found: run `farm init {target}` to write one")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return config_from_dict(raw, source=str(path))


def config_from_dict(raw: dict[str, Any], *, source: str) -> TargetConfig:
    cfg = _build(TargetConfig, raw, source=source, prefix="")
    _check(cfg, source)
    return cfg


def _build(cls: type, raw: Any, *, source: str, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [{prefix.rstrip('.')}] must be a table")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"{source}: unknown key '{prefix}{unknown[0]}' (known: {known})")
    missing = [
        name
        for name, f in fields.items()
        if name not in raw
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{source}: missing required key '{prefix}{missing[0]}'")
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, source=source, key=prefix + name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, *, source: str, key: str) -> Any:
    # `X | None`: TOML has no null, so a present key is always an X.
    args = getattr(tp, "__args__", ())
    if len(args) == 2 and type(None) in args:
        tp = next(a for a in args if a is not type(None))
    # Dataclasses, also as list items ([[proposer.params]]) or table values.
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, source=source, prefix=key + ".")
    bad = ConfigError(f"{source}: {key} = {value!r} is not a valid {_type_name(tp)}")
    if tp is Direction:
        try:
            return Direction(value)
        except ValueError:
            raise ConfigError(
                f'{source}: {key} = {value!r}: use "minimize" or "maximize"'
            ) from None
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    origin = getattr(tp, "__origin__", None)
    if origin is list:
        (item,) = tp.__args__
        if not isinstance(value, list):
            raise bad
        return [_coerce(item, v, source=source, key=f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = tp.__args__
        if not isinstance(value, dict):
            raise bad
        return {str(k): _coerce(item, v, source=source, key=f"{key}.{k}") for k, v in value.items()}
    raise AssertionError(f"unhandled config type {tp}")


def _type_name(tp: Any) -> str:
    origin = getattr(tp, "__origin__", None)
    if origin is list:
        return f"list of {_type_name(tp.__args__[0])}"
    if origin is dict:
        return f"table of {_type_name(tp.__args__[1])}"
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(tp, str(tp))


def _check(cfg: TargetConfig, source: str) -> None:
    def fail(key: str, why: str) -> None:
        raise ConfigError(f"{source}: {key}: {why}")

    if not cfg.editable:
        fail("editable", 'list at least one file proposals may change (e.g. ["train.py"])')
    for key, paths in (("editable", cfg.editable), ("protected", cfg.protected)):
        for path in paths:
            if not path or Path(path).is_absolute() or ".." in Path(path).parts:
                fail(key, f"{path!r} must be a relative path inside the target repo")
    both = set(cfg.editable) & set(cfg.protected)
    if both:
        fail("protected", f"{sorted(both)[0]!r} is also editable; a file is one or the other")
    if not cfg.command.strip():
        fail("command", 'give the command that runs one trial, e.g. "python train.py"')
    if not cfg.metric_regex and not re.fullmatch(r"[A-Za-z_][\w./-]*", cfg.metric):
        fail("metric", f'{cfg.metric!r} is not a summary-line name like "val_bpb"')
    if cfg.metric_regex:
        try:
            rx = re.compile(cfg.metric_regex)
        except re.error as e:
            fail("metric_regex", f"not a valid regex: {e}")
        else:
            if rx.groups != 1:
                fail("metric_regex", "needs exactly one capture group around the value")
    if cfg.budget_s <= 0 or cfg.evaluate_budget_s < 0:
        fail("budget_s", "budget_s must be > 0 seconds, evaluate_budget_s >= 0")
    if cfg.evaluate_budget_s and not cfg.evaluate.strip():
        fail("evaluate_budget_s", "set `evaluate` too, the command it is the budget of")
    if cfg.artifacts and not cfg.evaluate.strip():
        fail("artifacts", "set `evaluate` too, the command that reads them")
    for name in cfg.frozen:
        if not re.fullmatch(r"[\w.*?\[\]!-]+", name):
            fail("frozen", f"{name!r}: give a name, a dotted path or a pattern (EVAL_*)")
    for pattern in cfg.artifacts:
        if not pattern or Path(pattern).is_absolute() or ".." in Path(pattern).parts:
            fail("artifacts", f"{pattern!r} must be a relative path or pattern inside the repo")
    if cfg.bounds and not (len(cfg.bounds) == 2 and cfg.bounds[0] < cfg.bounds[1]):
        fail("bounds", f"{cfg.bounds}: give [lowest, highest] plausible values, lowest first")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", cfg.campaign):
        fail(
            "campaign",
            f"{cfg.campaign!r}: use letters, digits, '.', '_' and '-' (it names git branches)",
        )
    m = cfg.merge
    if m.repeats < 2:
        fail("merge.repeats", "needs at least 2 baseline runs to estimate noise")
    if m.confirm < 0 or m.max_rebases < 0:
        fail("merge", "confirm and max_rebases must be >= 0")
    if m.min_delta < 0 or m.z < 0 or m.screen_z < 0:
        fail("merge", "min_delta, z and screen_z must be >= 0")
    if not 0 <= m.preflight_s < cfg.budget_s:
        fail("merge.preflight_s", f"{m.preflight_s:g}: use 0 (none) or fewer seconds than budget_s")
    if not 0 <= m.screen_budget_s < cfg.budget_s:
        fail(
            "merge.screen_budget_s",
            f"{m.screen_budget_s:g}: use 0 (screen at the full budget) or fewer seconds than "
            "budget_s",
        )
    if not 0 < m.promote <= 1:
        fail("merge.promote", f"{m.promote:g}: the share of short screens promoted, in (0, 1]")
    if not -1 <= m.min_rank_agreement <= 1 or m.rank_pairs < 2:
        fail(
            "merge",
            "min_rank_agreement is a Kendall τ in [-1, 1] and rank_pairs must be >= 2",
        )
    r = cfg.resources
    if r.slots < 0 or r.cpus_per_trial < 0 or r.gpus_per_trial < 0:
        fail("resources", "slots, cpus_per_trial and gpus_per_trial must be >= 0")
    p = cfg.proposer
    if p.batch_size < 1 or p.backlog < 0:
        fail("proposer", "batch_size must be >= 1 and backlog >= 0")
    if p.schedule not in ("backlog", "rounds"):
        fail("proposer.schedule", f'{p.schedule!r}: use "backlog" or "rounds"')
    if p.max_tokens < 1:
        fail("proposer.max_tokens", "must be >= 1")
    if p.temperature is not None and not 0 <= p.temperature <= 1:
        fail("proposer.temperature", "must be between 0 and 1")
    if p.strategy not in ("single", "focused", "mix"):
        fail("proposer.strategy", f'{p.strategy!r}: use "single", "focused" or "mix"')
    if p.strategy != "single" and not [f for f in p.focuses if f.strip()]:
        fail("proposer.focuses", f'strategy "{p.strategy}" needs at least one focus')
    if p.spend_cap_usd < 0 or p.timeout_s <= 0 or p.max_retries < 0 or p.digest_tokens < 0:
        fail("proposer", "spend_cap_usd, max_retries, digest_tokens must be >= 0, timeout_s > 0")
    if p.max_failed_batches < 1 or p.backoff_s < 0 or p.tune_trials < 1 or p.files_tokens < 1:
        fail(
            "proposer",
            "max_failed_batches, tune_trials and files_tokens must be >= 1, backoff_s >= 0",
        )
    for model, price in p.prices.items():
        if min(price.input, price.output, price.cache_write, price.cache_read) < 0:
            fail(f"proposer.prices.{model}", "prices must be >= 0 (USD per million tokens)")
    for i, par in enumerate(p.params):
        key = f"proposer.params[{i}]"
        if par.file not in cfg.editable:
            fail(f"{key}.file", f"{par.file!r} is not an editable file")
        if not re.fullmatch(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[\d+\])*(?:#\d+)?", par.name):
            fail(
                f"{key}.name",
                f"{par.name!r} is not a knob name like LR, CONFIG.lr or AdamW.betas[0]",
            )
        if not par.low < par.high:
            fail(f"{key}.low", f"low ({par.low}) must be below high ({par.high})")
        if par.log and par.low <= 0:
            fail(f"{key}.log", "a log-scale parameter needs low > 0")
        if par.int and not (par.low.is_integer() and par.high.is_integer()):
            fail(f"{key}.int", "an integer parameter needs whole-number low and high")
    names = [(par.file, par.name) for par in p.params]
    if len(set(names)) != len(names):
        fail("proposer.params", "a constant is declared twice")
    if cfg.sandbox.network not in ("auto", "isolated", "host"):
        fail("sandbox.network", f'{cfg.sandbox.network!r}: use "auto", "isolated" or "host"')
    if cfg.sandbox.isolation not in ("auto", "strict", "basic"):
        fail("sandbox.isolation", f'{cfg.sandbox.isolation!r}: use "auto", "strict" or "basic"')
    for path in cfg.sandbox.read_only_paths:
        if not Path(path).expanduser().is_absolute():
            fail("sandbox.read_only_paths", f"{path!r}: give an absolute path (or one under ~)")
    if cfg.sandbox.output_cap_kb < 1 or cfg.sandbox.grace_s < 0 or cfg.sandbox.memory_mb < 0:
        fail("sandbox", "output_cap_kb must be >= 1, grace_s and memory_mb >= 0")
    try:
        cfg.metrics.host_port()
    except ConfigError as e:
        fail("metrics.address", str(e))
    if any(price < 0 for price in cfg.metrics.hour_usd.values()):
        fail("metrics.hour_usd", "prices must be >= 0 (USD per hour of training)")
