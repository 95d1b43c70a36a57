"""`farm exporter`: the ledger metrics of every campaign of a store, from a process that
outlives drivers, the way a queue exporter serves a broker.

It only reads the store's running aggregates, so a scrape costs the same at any ledger size,
and its answers stay right across driver restarts and after a campaign ends. Deploy one per
store (k8s/farm-exporter.yaml, the compose `farm-exporter` service) and scrape it.
"""

from __future__ import annotations

import threading
from typing import TextIO

from farm.errors import FarmError
from farm.metrics import LedgerCollector, RoleMetrics, serve
from farm.store import Store


def run_exporter(*, store: Store, address: str, out: TextIO, stop: threading.Event) -> int:
    """Serve until `stop` is set (Ctrl-C and SIGTERM raise KeyboardInterrupt in the CLI)."""
    metrics = RoleMetrics(campaign="", role="exporter")
    # Scrapes read through the instrumented store: its latency is the exporter's own.
    metrics.registry.register(LedgerCollector(metrics.instrument(store)))
    server = serve(address, metrics.registry, out=out, what="exporter")
    if server is None:
        raise FarmError(f"the exporter cannot serve at {address}: pick a free --address")
    known = ", ".join(c.id for c in store.list_campaigns()) or "none yet"
    print(f"farm exporter: every campaign of {store.url} ({known})", file=out, flush=True)
    try:
        stop.wait()
    finally:
        server.close()
    return 0
