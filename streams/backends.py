"""Backend selection by URL: one small registry from URL scheme to event-log factory.

`sqlite:///path/to/log.db[?synchronous=normal]` is the embedded default;
`kafka://host:port[,host:port]` is Apache Kafka. Importing a backend's driver happens only
when its scheme is used, so the embedded install needs no Kafka client.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

from streams.errors import ConfigError
from streams.log import EventLog


def _sqlite(url: str) -> EventLog:
    from streams.sqlite_log import SqliteEventLog

    # Everything after "sqlite://" is the path: sqlite:///abs/log.db or sqlite://rel/log.db.
    parts = urlsplit(url)
    path = url.removeprefix("sqlite://").split("?", 1)[0]
    if not path or path == "/":
        raise ConfigError(f"{url!r}: a SQLite log needs a file path, as in sqlite:///var/agentstream/log.db")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return SqliteEventLog(path, synchronous=query.get("synchronous", "full"))


def _kafka(url: str) -> EventLog:
    from streams.kafka_log import KafkaEventLog

    parts = urlsplit(url)
    return KafkaEventLog(parts.netloc)


LOG_BACKENDS: dict[str, Callable[[str], EventLog]] = {"sqlite": _sqlite, "kafka": _kafka}


def open_log(url: str) -> EventLog:
    """An event log for a URL; raises `ConfigError` for unknown schemes."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    factory = LOG_BACKENDS.get(scheme)
    if factory is None:
        raise ConfigError(
            f"unsupported event log URL {url!r}: use one of "
            + ", ".join(f"{s}://" for s in sorted(LOG_BACKENDS))
        )
    return factory(url)
