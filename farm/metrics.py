"""Prometheus metrics of a campaign, all defined here.

Two sources, both served by the driver (`farm run`) on one loopback address by default:

- `LedgerCollector` reads the store at scrape time. The ledger is the source of truth, so
  the counters are exact, survive restarts of the driver, and agree with `farm status`.
- `DriverMetrics` holds what only the running driver knows: its slots, how many are busy
  right now, and how long proposer calls take.

Labels stay few and bounded (campaign, kind, outcome, state, decision, proposer, type):
never a trial id, a sha or error text, which would make one series per trial.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from farm.config import MetricsConfig
from farm.progress import DEAD
from farm.records import Candidate, CandidateState, DecisionKind, Outcome, TrialKind, TrialState
from farm.store import Store

log = logging.getLogger(__name__)

# Trials last from seconds (toy targets) to hours (a real training budget).
TRIAL_BUCKETS_S = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
PROPOSER_BUCKETS_S = (0.01, 0.1, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)


class LedgerCollector(Collector):
    """Campaign metrics computed from the store on every scrape.

    Every label combination a campaign can reach is exported from the start, zeros
    included, so `rate()` sees a counter's first increment.
    """

    def __init__(self, store: Store, campaign: str, *, proposer: str) -> None:
        self.store = store
        self.campaign = campaign
        self.proposer = proposer  # exported with zeros before its first draft

    def collect(self) -> Iterator[Metric]:
        c = self.campaign
        camp = self.store.get_campaign(c)
        if camp is None:
            return
        trials = self.store.list_trials(c)
        cands = self.store.list_candidates(c)

        by_outcome: collections.Counter[tuple[str, str]] = collections.Counter()
        durations: dict[str, list[float]] = {k.value: [] for k in TrialKind}
        for t in trials:
            if t.result is not None:
                by_outcome[t.kind.value, t.result.outcome.value] += 1
                durations[t.kind.value].append(t.result.duration_s)
            elif t.state is TrialState.DEAD:
                by_outcome[t.kind.value, DEAD] += 1
        done = CounterMetricFamily(
            "farm_trials",
            "Trials finished, by kind and outcome (dead: infrastructure kept failing).",
            labels=["campaign", "kind", "outcome"],
        )
        for kind in TrialKind:
            for outcome in [*(o.value for o in Outcome), DEAD]:
                done.add_metric([c, kind.value, outcome], by_outcome[kind.value, outcome])
        yield done

        hist = HistogramMetricFamily(
            "farm_trial_duration_seconds",
            "Wall time of the training process of finished trials.",
            labels=["campaign", "kind"],
        )
        for kind_name, values in durations.items():
            buckets = [(str(float(b)), sum(v <= b for v in values)) for b in TRIAL_BUCKETS_S]
            hist.add_metric([c, kind_name], [*buckets, ("+Inf", len(values))], sum(values))
        yield hist

        states = collections.Counter(t.state for t in trials)
        yield _gauge("farm_queue_depth", "Trials waiting for a slot.", c, states[TrialState.QUEUED])
        yield _gauge(
            "farm_trials_running",
            "Trials leased to a dispatcher (any driver of this campaign).",
            c,
            states[TrialState.RUNNING],
        )

        by_state = collections.Counter(x.state.value for x in cands)
        gauge = GaugeMetricFamily(
            "farm_candidates",
            "Candidates by state; state=queued is the backlog of validated candidates.",
            labels=["campaign", "state"],
        )
        for state in CandidateState:
            gauge.add_metric([c, state.value], by_state[state.value])
        yield gauge

        inc = self.store.get_incumbent(c)
        if inc.metric is not None:
            yield _gauge("farm_incumbent_metric", "The incumbent's metric estimate.", c, inc.metric)
        if camp.sigma is not None:
            yield _gauge("farm_baseline_sigma", "Seed noise σ of the baseline runs.", c, camp.sigma)

        made = collections.Counter(d.kind.value for d in self.store.list_decisions(c))
        decisions = CounterMetricFamily(
            "farm_decisions", "Decisions on candidates, by kind.", labels=["campaign", "decision"]
        )
        for decision in DecisionKind:
            decisions.add_metric([c, decision.value], made[decision.value])
        yield decisions

        yield from self._proposer_metrics(cands)

    def _proposer_metrics(self, cands: list[Candidate]) -> Iterator[Metric]:
        c = self.campaign
        # This driver's proposer is exported with zeros before its first draft.
        tallies: dict[str, dict[str, float]] = {self.proposer: collections.defaultdict(float)}
        for x in cands:
            tally = tallies.setdefault(x.proposer or "unknown", collections.defaultdict(float))
            tally["rejected" if x.state is CandidateState.REJECTED else "valid"] += 1
            tally["input"] += x.tokens_in
            tally["output"] += x.tokens_out
            tally["cost"] += x.cost_usd
        proposals = CounterMetricFamily(
            "farm_proposals",
            "Drafts from the proposer, by validation result.",
            labels=["campaign", "proposer", "result"],
        )
        tokens = CounterMetricFamily(
            "farm_llm_tokens",
            "LLM tokens the proposer used, by type (input, output).",
            labels=["campaign", "proposer", "type"],
        )
        cost = CounterMetricFamily(
            "farm_llm_cost_usd",
            "LLM spend of the proposer, in US dollars.",
            labels=["campaign", "proposer"],
        )
        for name, tally in sorted(tallies.items()):
            for result in ("valid", "rejected"):
                proposals.add_metric([c, name, result], tally[result])
            for kind in ("input", "output"):
                tokens.add_metric([c, name, kind], tally[kind])
            cost.add_metric([c, name], tally["cost"])
        yield from (proposals, tokens, cost)


def _gauge(name: str, doc: str, campaign: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=["campaign"])
    g.add_metric([campaign], value)
    return g


class DriverMetrics(Collector):
    """What only the running driver knows: slots, busy slots, proposer call latency."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        campaign: str,
        slots: int,
        busy: Callable[[], int],
        proposer: str,
    ) -> None:
        self.campaign = campaign
        self.slots = slots
        self.busy = busy
        self._latency = Histogram(
            "farm_proposer_call_seconds",
            "Time of one proposer call (a batch of drafts).",
            ["campaign", "proposer"],
            buckets=PROPOSER_BUCKETS_S,
            registry=registry,
        ).labels(campaign, proposer)
        registry.register(self)

    def observe_proposal(self, seconds: float) -> None:
        self._latency.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        yield _gauge("farm_slots", "Trial slots this driver fills.", self.campaign, self.slots)
        yield _gauge(
            "farm_slots_busy", "Slots running a trial now.", self.campaign, float(self.busy())
        )


@dataclass
class MetricsServer:
    """The driver's /metrics endpoint; `close` stops it."""

    url: str
    driver: DriverMetrics
    _server: WSGIServer

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve(
    cfg: MetricsConfig,
    *,
    store: Store,
    campaign: str,
    slots: int,
    busy: Callable[[], int],
    proposer: str,
    out: TextIO,
) -> MetricsServer | None:
    """Serve the campaign's metrics at `cfg.address`, when enabled.

    A taken address is a note on `out`, not a failure: a campaign runs without its metrics.
    """
    if not cfg.enabled:
        return None
    host, port = cfg.host_port()
    # A registry of its own: the process-global one would refuse a second campaign's metrics.
    registry = CollectorRegistry()
    registry.register(LedgerCollector(store, campaign, proposer=proposer))
    driver = DriverMetrics(registry, campaign=campaign, slots=slots, busy=busy, proposer=proposer)
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        print(f"note: metrics not served at {cfg.address}: {e.strerror or e}", file=out)
        return None
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/metrics"
    print(f"farm: metrics at {url}", file=out, flush=True)
    return MetricsServer(url=url, driver=driver, _server=server)
