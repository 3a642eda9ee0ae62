"""Projection stores, chosen by URL: one small registry from URL scheme to store factory.

`sqlite:///path/to/views.db[?synchronous=normal|full]` is the embedded default. A backend's
driver is imported only when its scheme is used. `cassandra://host:port/keyspace[?replication_factor=1]`
is the wide-column one (`pip install 'agentstream[cassandra]'`).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

from projections.stores.base import ProjectionStore
from streams.errors import ConfigError


def _sqlite(url: str) -> ProjectionStore:
    from projections.stores.sqlite import SqliteProjectionStore

    # Everything after "sqlite://" is the path: sqlite:///abs/views.db or sqlite://rel/views.db.
    path = url.removeprefix("sqlite://").split("?", 1)[0]
    if not path or path == "/":
        raise ConfigError(
            f"{url!r}: a SQLite store needs a file path, as in sqlite:///var/agentstream/views.db"
        )
    query = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
    return SqliteProjectionStore(path, synchronous=query.get("synchronous", "normal"))


def _cassandra(url: str) -> ProjectionStore:
    from projections.stores.cassandra import open_cassandra_store

    return open_cassandra_store(url)


STORE_BACKENDS: dict[str, Callable[[str], ProjectionStore]] = {"sqlite": _sqlite, "cassandra": _cassandra}


def open_store(url: str) -> ProjectionStore:
    """A projection store for a URL; raises `ConfigError` for unknown schemes."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    factory = STORE_BACKENDS.get(scheme)
    if factory is None:
        raise ConfigError(
            f"unsupported projection store URL {url!r}: use one of "
            + ", ".join(f"{s}://" for s in sorted(STORE_BACKENDS))
        )
    return factory(url)


__all__ = ["STORE_BACKENDS", "ProjectionStore", "open_store"]
