"""Stores by URL: `sqlite:///path/farm.db` (embedded default), `redis://host:port/db`
(`redis://:password@host:port/db`, `rediss://` for TLS)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from farm.errors import StoreError
from farm.store.base import Store

__all__ = ["Store", "default_url", "open_store"]


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
