"""Stores by URL: `sqlite:///path/farm.db` (embedded default), `redis://host:port/db`
(`redis://:password@host:port/db`, `rediss://` for TLS)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from farm.errors import StoreError
from farm.store.base import Store

__all__ = ["VOLATILE_ENV", "Store", "check_durable", "default_url", "open_store"]

# Set to 1 to run the writing roles on a store that a restart can roll back (for scripts;
# the roles' flag is --volatile-store).
VOLATILE_ENV = "FARM_VOLATILE_STORE"


def default_url(target: Path) -> str:
    return f"sqlite:///{(target / '.farm' / 'farm.db').resolve()}"


def open_store(url: str, *, retries: int | None = None) -> Store:
    """Open the store a URL names. Unknown schemes and unreachable servers raise StoreError.

    `retries`: how often a Redis operation is retried through a lost connection (the
    default rides out a restart of the server; a scrape wants an answer now)."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        from farm.store.sqlite import SQLiteStore

        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
        if not path:
            raise StoreError(
                f"{url!r}: write SQLite URLs as sqlite:///relative/or/absolute/path.db"
            )
        return SQLiteStore(Path(path))
    if scheme in ("redis", "rediss"):
        from farm.store.redis import RedisStore

        return RedisStore(url) if retries is None else RedisStore(url, retries=retries)
    raise StoreError(
        f"unknown store URL scheme {scheme!r} in {url!r}: use sqlite:///path/farm.db "
        "or redis://host:port/db"
    )


def check_durable(store: Store, *, volatile_ok: bool) -> str:
    """Before a role writes: refuse a Redis store whose restart can lose what farm wrote (no
    AOF), unless `volatile_ok` (--volatile-store, or FARM_VOLATILE_STORE=1) accepts it.
    Returns a line to say ("" when there is nothing to say): what was accepted, or where the
    settings were read when CONFIG was refused."""
    if urlparse(store.url).scheme not in ("redis", "rediss"):
        return ""  # SQLite commits every transaction to its file
    from farm.store.redis import DURABLE_FLAGS, RedisStore

    assert isinstance(store, RedisStore)
    volatile_ok = volatile_ok or os.environ.get(VOLATILE_ENV, "") not in ("", "0")
    found = store.persistence()
    read = "" if found.source == "CONFIG GET" else f" (read from {found.source})"
    if found.aof:
        lost = f"; it may lose {found.loses()} (appendfsync no)" if found.loses() else ""
        return f"store {store.url}: append-only file on{read}{lost}" if read or lost else ""
    what = "keeps no append-only file" if found.aof is False else "may keep no append-only file"
    if volatile_ok:
        return (
            f"store {store.url} {what}; accepted (--volatile-store or {VOLATILE_ENV}): a "
            f"restart of it loses {found.loses()}{read}"
        )
    raise StoreError(
        f"the store {store.url} {what}{read}: a restart of that Redis loses {found.loses()}: "
        "results, decisions and candidates gone while git keeps farm's commits. Start "
        f"redis-server with {DURABLE_FLAGS} (as k8s/redis.yaml does), or turn it on now: "
        "redis-cli CONFIG SET appendonly yes (then CONFIG REWRITE to keep it); or accept "
        f"the loss: --volatile-store ({VOLATILE_ENV}=1 in scripts)"
    )
