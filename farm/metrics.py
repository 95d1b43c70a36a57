"""Prometheus metrics, all defined here. Two kinds, never mixed in one series:

- Ledger metrics (`LedgerCollector`): campaigns as the store holds them, read from its running
  aggregates at scrape time (farm/store/stats.py), so a scrape costs the same at 40,000
  trials as at 40. `farm exporter` serves them for every campaign of a store and outlives
  any driver; `farm run` serves them for its own campaign too, for local use. Any server
  gives the same numbers: dashboards and alerts take `max` across instances.
- Role metrics (`RoleMetrics`): what one process knows, served on its own port by
  `farm run|control|work|propose`: its slots and busy slots, claims, lease reclaims,
  interrupted trials and infrastructure retries, queue wait (all read off its store calls),
  its proposer's calls, errors, latency and LLM retries, and its store's latency and errors.

Labels stay few and bounded (campaign, kind, outcome, state, decision, proposer, type,
hardware, role, op): never a trial id, a sha or error text, which would make one series per
trial. Metrics come from long-lived processes only, never from a trial's Ray task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO, cast
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from farm.config import MetricsConfig, stored_config
from farm.errors import ConfigError, StoreError
from farm.figures import sigma_in_force
from farm.merge import Fidelity, fidelity
from farm.progress import ClusterView, keep_threshold
from farm.records import (
    Campaign,
    CandidateState,
    DecisionKind,
    Draft,
    Incumbent,
    Trial,
    TrialKind,
    TrialState,
)
from farm.store import Store
from farm.store.stats import CampaignStats, ProposerTally, llm_spend
from proposer.base import Book, ProposalContext, Proposer

log = logging.getLogger(__name__)

PROPOSER_BUCKETS_S = (0.01, 0.1, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
STORE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30)
QUEUE_WAIT_BUCKETS_S = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200)
# The SDK says so at INFO before each retry (429, 529, 5xx, timeouts): counted, not printed.
LLM_RETRY_LOGGER = "anthropic._base_client"
LLM_RETRY_MESSAGE = "Retrying request"
RESULTS_SLACK = 64  # results a scrape reads beyond its count: any that came in meanwhile


class LedgerCollector(Collector):
    """Campaign metrics from the store's aggregates, on every scrape.

    `campaigns`: the campaigns to export; None for every campaign of the store (the
    exporter), found anew at each scrape. Every label combination a campaign can reach is
    exported from the start, zeros included, so `rate()` sees a counter's first increment.
    """

    def __init__(self, store: Store, campaigns: list[str] | None = None) -> None:
        self.store = store
        self.campaigns = campaigns
        # The rank monitor's trials (finished screens at both budgets) by campaign, and how
        # many results each scrape had read: a result never changes, so a scrape reads only
        # the ones that came in since (the first reads them all).
        self._screens: dict[str, dict[str, Trial]] = {}
        self._read: dict[str, int] = {}
        self._lock = threading.Lock()  # scrapes may overlap

    def collect(self) -> Iterator[Metric]:
        out = _LedgerFamilies()
        up = GaugeMetricFamily(
            "farm_ledger_up", "1 when this scrape read the store; 0 when it failed (see the log)."
        )
        try:
            if self.campaigns is None:
                found = self.store.list_campaigns()
            else:
                found = [c for c in map(self.store.get_campaign, self.campaigns) if c is not None]
            for camp in found:
                stats = self.store.stats(camp.id)
                out.add(camp, self.store.get_incumbent(camp.id), stats)
                m = stored_config(camp.config).merge
                if m.screen_budget_s > 0:  # the one figure read from the trials themselves
                    out.ranks(camp, fidelity(self._screens_of(camp.id, stats), m))
        except StoreError as e:
            log.warning("metrics: cannot read the store: %s", e)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from out.families

    def _screens_of(self, campaign: str, stats: CampaignStats) -> list[Trial]:
        with self._lock:
            screens = self._screens.setdefault(campaign, {})
            done = stats.trials[TrialState.DONE]
            new = done - self._read.get(campaign, 0)
            if new > 0:  # and those that came in since `stats` was read (dropped if seen)
                for t in self.store.recent_results(campaign, new + RESULTS_SLACK):
                    if t.kind in (TrialKind.SHORT, TrialKind.CANDIDATE):
                        screens[t.id] = dataclasses.replace(t, files={})
                self._read[campaign] = done
            return list(screens.values())


class _LedgerFamilies:
    """The ledger's metric families, filled campaign by campaign."""

    def __init__(self) -> None:
        self.families: list[Metric] = []
        counter, gauge = CounterMetricFamily, GaugeMetricFamily
        self.info = self._new(
            gauge,
            "farm_campaign_info",
            "metric",
            "direction",
            doc="The campaign's metric and its direction (value 1).",
        )
        self.trials = self._new(
            counter,
            "farm_trials",
            "kind",
            "outcome",
            doc="Trials finished, by kind and outcome (dead: infrastructure kept failing).",
        )
        self.durations = self._new(
            HistogramMetricFamily,
            "farm_trial_duration_seconds",
            "kind",
            doc="Wall time of finished trials' training; buckets are fractions of budget_s.",
        )
        self.queue = self._new(gauge, "farm_queue_depth", doc="Trials waiting for a slot.")
        self.rank_agreement = self._new(
            gauge,
            "farm_screen_rank_agreement",
            doc="Kendall's τ of short-screen ranks against full-budget screens of the same "
            "candidates ([merge] screen_budget_s); short screens stop below min_rank_agreement.",
        )
        self.rank_pairs = self._new(
            gauge, "farm_screen_rank_pairs", doc="Pairs behind farm_screen_rank_agreement."
        )
        self.running = self._new(
            gauge,
            "farm_trials_running",
            doc="Trials leased to a dispatcher (any process of this campaign).",
        )
        self.candidates = self._new(
            gauge,
            "farm_candidates",
            "state",
            doc="Candidates by state; state=queued is the backlog of validated candidates.",
        )
        self.decisions = self._new(
            counter, "farm_decisions", "decision", doc="Decisions on candidates, by kind."
        )
        self.incumbent = self._new(
            gauge,
            "farm_incumbent_metric",
            doc="The incumbent's metric: measured by its runs (see farm_incumbent_runs).",
        )
        self.incumbent_runs = self._new(
            gauge,
            "farm_incumbent_runs",
            doc="Runs the incumbent's metric stands on; 0 while a keep merged untried is an "
            "estimate its own runs have not measured yet.",
        )
        self.baseline_sigma = self._new(
            gauge, "farm_baseline_sigma", doc="Seed noise σ of the baseline runs."
        )
        self.sigma = self._new(
            gauge,
            "farm_sigma",
            doc="Seed noise σ in force: the latest decision's (the baseline's before any).",
        )
        self.threshold = self._new(
            gauge,
            "farm_keep_threshold",
            doc="Improvement a confirmed candidate must show now to be kept, in metric units.",
        )
        self.budget = self._new(
            gauge, "farm_trial_budget_seconds", doc="The wall-clock budget of one trial (budget_s)."
        )
        self.last_result = self._new(
            gauge,
            "farm_last_result_timestamp_seconds",
            doc="When the latest trial result came in (unix time).",
        )
        self.last_decision = self._new(
            gauge,
            "farm_last_decision_timestamp_seconds",
            doc="When the latest decision was made (unix time).",
        )
        self.proposals = self._new(
            counter,
            "farm_proposals",
            "proposer",
            "result",
            doc="Drafts from the proposer, by validation result (extra: beyond the number "
            "asked for, recorded and never run).",
        )
        self.llm_calls = self._new(
            counter,
            "farm_llm_calls",
            "proposer",
            "result",
            doc="Paid proposer calls settled, by result (ok: answered with drafts; failed: an "
            "error, an answer with no draft, or lost in flight).",
        )
        self.llm_held = self._new(
            gauge,
            "farm_llm_held_usd",
            "proposer",
            doc="Worst-case cost of the proposer calls in flight, held against the spend cap.",
        )
        self.tokens = self._new(
            counter,
            "farm_llm_tokens",
            "proposer",
            "type",
            doc="LLM tokens the proposer used, by type (input, output).",
        )
        self.llm_cost = self._new(
            counter,
            "farm_llm_cost_usd",
            "proposer",
            doc="LLM spend of the proposer's settled calls, in US dollars (a call lost in "
            "flight at its worst case).",
        )
        self.spend_cap = self._new(
            gauge, "farm_llm_spend_cap_usd", doc="[proposer] spend_cap_usd: proposing stops there."
        )
        self.hw_trials = self._new(
            counter,
            "farm_hardware_trials",
            "hardware",
            doc="Trials with a result, by the hardware class they ran on.",
        )
        self.hw_seconds = self._new(
            counter,
            "farm_hardware_seconds",
            "hardware",
            doc="Training time of trials with a result, by hardware class.",
        )
        self.compute_cost = self._new(
            counter,
            "farm_compute_cost_usd",
            doc="Training time priced at [metrics] hour_usd of its hardware class.",
        )
        self.cost_per_kept = self._new(
            gauge,
            "farm_cost_per_kept_usd",
            doc="Compute plus LLM spend per kept change: what one improvement costs.",
        )

    def _new(self, cls: type, name: str, *labels: str, doc: str) -> Any:
        family = cls(name, doc, labels=["campaign", *labels])
        self.families.append(family)
        return family

    def add(self, camp: Campaign, inc: Incumbent, s: CampaignStats) -> None:
        c, cfg = camp.id, stored_config(camp.config)
        self.info.add_metric([c, cfg.metric, str(cfg.direction)], 1)
        for (kind, outcome), n in sorted(s.outcomes.items()):
            self.trials.add_metric([c, kind, outcome], n)
        for kind, hist in sorted(s.durations.items()):
            self.durations.add_metric([c, kind], hist.cumulative(), hist.sum)
        self.queue.add_metric([c], s.trials[TrialState.QUEUED])
        self.running.add_metric([c], s.trials[TrialState.RUNNING])
        for state in CandidateState:
            self.candidates.add_metric([c, state.value], s.candidates[state])
        for decision in DecisionKind:
            self.decisions.add_metric([c, decision.value], s.decisions[decision])
        self.budget.add_metric([c], cfg.budget_s)
        if inc.metric is not None:
            self.incumbent.add_metric([c], inc.metric)
            self.incumbent_runs.add_metric([c], inc.runs)
        if camp.sigma is not None:
            self.baseline_sigma.add_metric([c], camp.sigma)
            sigma = sigma_in_force(camp, s)
            assert sigma is not None  # the baseline's at least
            self.sigma.add_metric([c], sigma)
            self.threshold.add_metric([c], keep_threshold(camp.config, sigma, inc))
        if s.last_result_at is not None:
            self.last_result.add_metric([c], s.last_result_at)
        if s.last_decision_at is not None:
            self.last_decision.add_metric([c], s.last_decision_at)
        self._costs(camp, s)

    def ranks(self, camp: Campaign, found: Fidelity) -> None:
        self.rank_pairs.add_metric([camp.id], found.pairs)
        if found.tau is not None:
            self.rank_agreement.add_metric([camp.id], found.tau)

    def _costs(self, camp: Campaign, s: CampaignStats) -> None:
        c = camp.id
        cfg = stored_config(camp.config)
        # The configured proposer is exported with zeros before its first draft.
        proposers = dict(s.proposers)
        proposers.setdefault(str(cfg.proposer.kind), ProposerTally())
        for name, p in sorted(proposers.items()):
            self.proposals.add_metric([c, name, "valid"], p.valid)
            self.proposals.add_metric([c, name, "rejected"], p.rejected)
            self.proposals.add_metric([c, name, "extra"], p.extra)
            self.llm_calls.add_metric([c, name, "ok"], p.calls - p.failed_calls)
            self.llm_calls.add_metric([c, name, "failed"], p.failed_calls)
            self.tokens.add_metric([c, name, "input"], p.tokens_in)
            self.tokens.add_metric([c, name, "output"], p.tokens_out)
            self.llm_cost.add_metric([c, name], p.cost_usd)
            self.llm_held.add_metric([c, name], max(p.held_usd, 0.0))
        self.spend_cap.add_metric([c], cfg.proposer.spend_cap_usd)
        prices = cfg.metrics.hour_usd
        compute = 0.0
        for hw, tally in sorted(s.hardware.items()):
            self.hw_trials.add_metric([c, hw], tally.trials)
            self.hw_seconds.add_metric([c, hw], tally.seconds)
            compute += tally.seconds / 3600 * float(prices.get(hw, prices.get("default", 0.0)))
        self.compute_cost.add_metric([c], compute)
        kept = s.decisions[DecisionKind.KEPT]
        if kept:
            self.cost_per_kept.add_metric([c], (compute + llm_spend(s).cost_usd) / kept)


class RoleMetrics:
    """One role process's own metrics, on a registry of its own.

    Wrap the process's store with `instrument` and its proposer with `measure`: the
    dispatcher's and proposer's signals are read off those calls, in one place, so the
    roles themselves carry no metrics code.
    """

    def __init__(self, *, campaign: str, role: str) -> None:
        self.campaign = campaign
        self.role = role
        self.registry = CollectorRegistry()
        info = self._new(Gauge, "farm_role_info", "role", doc="A farm process (value 1).")
        info.labels(campaign, role).set(1)
        self._store_seconds = self._new(
            Histogram,
            "farm_store_operation_seconds",
            "role",
            "op",
            doc="Latency of store operations (retries of transient failures included).",
            buckets=STORE_BUCKETS_S,
        )
        self._store_errors = self._new(
            Counter,
            "farm_store_errors",
            "role",
            "op",
            doc="Failed attempts at store operations: each one retried through a lost "
            "connection as it happens, and each operation that failed in the end.",
        )
        self._op = threading.local()  # the store operation each thread is inside
        self._dispatch: _DispatchSeries | None = None  # once this process dispatches

    def _new(self, cls: type, name: str, *labels: str, doc: str, **kwargs: Any) -> Any:
        return cls(name, doc, ["campaign", *labels], registry=self.registry, **kwargs)

    def instrument(self, store: Store) -> Store:
        """The store, timed and counted per operation; claims and give-backs observed."""
        store.on_retry = self._retried
        return cast(Store, _InstrumentedStore(store, self))

    def _retried(self, error: Exception) -> None:
        op = getattr(self._op, "name", "") or "unknown"
        self._store_errors.labels(self.campaign, self.role, op).inc()

    def watch_slots(self, *, busy: Callable[[], int], cluster: Callable[[], ClusterView]) -> None:
        """This process dispatches: its slots and the nodes behind them (`cluster`: the
        dispatcher's latest look), and every dispatcher series from zero."""
        c = self.campaign
        self.registry.register(_ClusterCollector(c, cluster))
        self._new(Gauge, "farm_slots_busy", doc="Slots running a trial now.").labels(
            c
        ).set_function(lambda: float(busy()))

        def counter(name: str, doc: str) -> Any:
            return self._new(Counter, name, doc=doc).labels(c)

        self._dispatch = _DispatchSeries(
            claims=counter("farm_dispatcher_claims", "Trials claimed."),
            reclaims=counter(
                "farm_dispatcher_lease_reclaims",
                "Lapsed leases returned to the queue (or to dead) by this process.",
            ),
            retries=counter(
                "farm_dispatcher_infra_retries",
                "Trials given back after an infrastructure failure (a worker or node died).",
            ),
            interrupted=counter(
                "farm_dispatcher_interrupted",
                "Trials given back unrun: this process stopped, or reclaimed a dead one's.",
            ),
            queue_wait=self._new(
                Histogram,
                "farm_queue_wait_seconds",
                doc="Time from a trial's enqueue to its claim.",
                buckets=QUEUE_WAIT_BUCKETS_S,
            ).labels(c),
        )

    def measure(self, proposer: Proposer) -> Proposer:
        """The proposer, with its calls, errors, latency and LLM retries counted."""

        def new(cls: type, name: str, doc: str, **kwargs: Any) -> Any:
            family = self._new(cls, name, "proposer", doc=doc, **kwargs)
            return family.labels(self.campaign, proposer.name)

        _count_llm_retries(
            new(
                Counter,
                "farm_llm_retries",
                "LLM API requests retried (429, 529, 5xx, timeouts) inside proposer calls.",
            )
        )
        return _MeasuredProposer(
            proposer,
            calls=new(Counter, "farm_proposer_calls", "Proposer calls (a batch of drafts each)."),
            errors=new(
                Counter,
                "farm_proposer_errors",
                "Proposer calls that failed (the spend cap is no failure).",
            ),
            latency=new(
                Histogram,
                "farm_proposer_call_seconds",
                "Time of one proposer call.",
                buckets=PROPOSER_BUCKETS_S,
            ),
        )

    def _observe(self, op: str, value: Any, kwargs: dict[str, Any]) -> None:
        d = self._dispatch
        if d is None:
            return
        if op == "claim_trials":
            now = time.time()
            for t in cast(list[Trial], value):
                d.claims.inc()
                d.queue_wait.observe(max(0.0, now - t.created_at))
        elif op == "reap":
            d.reclaims.inc(len(value))
        elif op == "release" and value:
            (d.retries if kwargs.get("failed") else d.interrupted).inc()


class _ClusterCollector(Collector):
    """A dispatcher's slots and the Ray nodes behind them, as it last looked."""

    def __init__(self, campaign: str, cluster: Callable[[], ClusterView]) -> None:
        self.campaign, self.cluster = campaign, cluster

    def collect(self) -> Iterator[Metric]:
        c, view = self.campaign, self.cluster()
        slots = GaugeMetricFamily(
            "farm_slots",
            "Trial slots this process fills: those asked for, once a node is lost no more "
            "than the live nodes hold.",
            labels=["campaign"],
        )
        slots.add_metric([c], view.slots)
        nodes = GaugeMetricFamily(
            "farm_nodes",
            "Ray nodes that can run the trials: alive, and lost (fewer than the most this "
            "process has seen alive).",
            labels=["campaign", "state"],
        )
        nodes.add_metric([c, "alive"], view.alive)
        nodes.add_metric([c, "lost"], view.lost)
        classes = GaugeMetricFamily(
            "farm_hardware_nodes",
            "Live nodes of each hardware class trials have run on (0: none left).",
            labels=["campaign", "hardware"],
        )
        for hardware, n in sorted(view.classes.items()):
            classes.add_metric([c, hardware], n)
        unplaced = GaugeMetricFamily(
            "farm_trials_unplaced",
            "Trials of this process that have waited longer than a budget for a node.",
            labels=["campaign"],
        )
        unplaced.add_metric([c], view.unplaced)
        wait = GaugeMetricFamily(
            "farm_placement_wait_seconds",
            "The longest of those waits (0: none).",
            labels=["campaign"],
        )
        wait.add_metric([c], view.placement_wait_s)
        yield from (slots, nodes, classes, unplaced, wait)


@dataclass
class _DispatchSeries:
    """A dispatching process's series, read off its claims and give-backs."""

    claims: Any
    reclaims: Any
    retries: Any
    interrupted: Any
    queue_wait: Any


class _InstrumentedStore:
    """A Store proxy: every public method timed, its failures counted."""

    def __init__(self, store: Store, metrics: RoleMetrics) -> None:
        self._store = store
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name.startswith("_") or not callable(attr):
            return attr
        m = self._metrics
        seconds = m._store_seconds.labels(m.campaign, m.role, name)
        errors = m._store_errors.labels(m.campaign, m.role, name)

        @functools.wraps(attr)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            outer, m._op.name = getattr(m._op, "name", ""), name
            try:
                value = attr(*args, **kwargs)
            except StoreError:
                errors.inc()
                raise
            finally:
                m._op.name = outer
                seconds.observe(time.perf_counter() - started)
            m._observe(name, value, kwargs)
            return value

        return timed


class _MeasuredProposer(Proposer):
    def __init__(self, inner: Proposer, *, calls: Any, errors: Any, latency: Any) -> None:
        self.inner = inner
        self.name, self.needs_baseline = inner.name, inner.needs_baseline
        self._calls, self._errors, self._latency = calls, errors, latency

    def propose(self, ctx: ProposalContext, n: int) -> list[Draft]:
        with self._call():
            return self.inner.propose(ctx, n)

    def propose_into(self, ctx: ProposalContext, n: int, book: Book) -> None:
        # The inner proposer's own: a paid one holds and records call by call.
        with self._call():
            self.inner.propose_into(ctx, n, book)

    def nothing_to_try(self, ctx: ProposalContext) -> str:
        return self.inner.nothing_to_try(ctx)

    def tell(self, candidate_id: int, *, metric: float | None, ok: bool) -> None:
        self.inner.tell(candidate_id, metric=metric, ok=ok)

    @contextlib.contextmanager
    def _call(self) -> Iterator[None]:
        from farm.errors import SpendCapReached

        self._calls.inc()
        started = time.perf_counter()
        try:
            yield
        except SpendCapReached:
            raise
        except Exception:
            self._errors.inc()
            raise
        finally:
            self._latency.observe(time.perf_counter() - started)


class _RetryCounter(logging.Filter):
    """Counts the SDK's retry notes; lets through only what its logger showed before."""

    def __init__(self, counter: Any, *, shown_from: int) -> None:
        super().__init__()
        self.counter = counter
        self.shown_from = shown_from

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(LLM_RETRY_MESSAGE):
            self.counter.inc()
        return record.levelno >= self.shown_from


def _count_llm_retries(counter: Any) -> None:
    logger = logging.getLogger(LLM_RETRY_LOGGER)
    shown_from = logger.getEffectiveLevel()
    for f in [f for f in logger.filters if isinstance(f, _RetryCounter)]:
        shown_from = f.shown_from  # what showed before the first counter lowered the level
        logger.removeFilter(f)  # one proposer per process: the newest counts
    logger.addFilter(_RetryCounter(counter, shown_from=shown_from))
    logger.setLevel(min(shown_from, logging.INFO))


@dataclass
class MetricsServer:
    """A /metrics endpoint; `close` stops it."""

    url: str
    _server: WSGIServer

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve(
    address: str, registry: CollectorRegistry, *, out: TextIO, what: str
) -> MetricsServer | None:
    """Serve `registry` at `address` (host:port). A taken address is a note on `out`, not a
    failure: the process runs without its metrics."""
    try:
        host, port = MetricsConfig(address=address).host_port()
    except ConfigError as e:
        raise ConfigError(f"metrics address of {what}: {e}") from None
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        print(f"note: {what} metrics not served at {address}: {e.strerror or e}", file=out)
        return None
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{server.server_port}/metrics"
    print(f"farm: {what} metrics at {url}", file=out, flush=True)
    return MetricsServer(url=url, _server=server)
