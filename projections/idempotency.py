"""The idempotency ledger: a side effect runs at most once per idempotency key.

Before a tool with effects outside the log runs, its worker records the key as
`started`; after, as `completed` with the result. A worker that finds `completed`
re-emits the recorded result instead of running the tool again; one that finds `started`
knows a predecessor died mid-call and must not repeat a non-idempotent effect.
"""

from __future__ import annotations

import sqlite3
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from streams.errors import ConfigError

ClaimState = Literal["new", "started", "completed"]


@dataclass(frozen=True)
class Claim:
    """What the ledger knew about a key when a worker claimed it."""

    state: ClaimState
    """`new`: first claim; `started`: claimed before, never completed; `completed`: done."""
    result_json: str | None = None
    attempts: int = 1


class IdempotencyLedger(ABC):
    """Records side effects by idempotency key, shared by every tool worker."""

    @abstractmethod
    async def claim(self, key: str, run_id: str, tool: str) -> Claim:
        """Mark the key started (if new) and say what was known before."""

    @abstractmethod
    async def complete(self, key: str, result_json: str) -> None:
        """Record the result of the side effect for the key."""

    async def aclose(self) -> None:
        """Release connections."""


class SqliteIdempotencyLedger(IdempotencyLedger):
    """The ledger in a SQLite file; claims are single statements, safe across processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS idempotency ("
            " key TEXT PRIMARY KEY, run_id TEXT NOT NULL, tool TEXT NOT NULL,"
            " state TEXT NOT NULL, result TEXT, attempts INTEGER NOT NULL,"
            " started_at REAL NOT NULL, completed_at REAL)"
        )

    async def claim(self, key: str, run_id: str, tool: str) -> Claim:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute(
                "SELECT state, result, attempts FROM idempotency WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO idempotency (key, run_id, tool, state, attempts, started_at)"
                    " VALUES (?, ?, ?, 'started', 1, ?)",
                    (key, run_id, tool, time.time()),
                )
                claim = Claim("new")
            elif row[0] == "completed":
                claim = Claim("completed", row[1], int(row[2]))
            else:
                self._db.execute("UPDATE idempotency SET attempts = attempts + 1 WHERE key = ?", (key,))
                claim = Claim("started", None, int(row[2]) + 1)
            self._db.execute("COMMIT")
            return claim
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    async def complete(self, key: str, result_json: str) -> None:
        self._db.execute(
            "UPDATE idempotency SET state = 'completed', result = ?, completed_at = ? WHERE key = ?",
            (result_json, time.time(), key),
        )

    async def aclose(self) -> None:
        self._db.close()


class CassandraLedger(IdempotencyLedger):
    """The ledger in a Cassandra keyspace; claims are `INSERT ... IF NOT EXISTS`.

    `cassandra://host:port/keyspace` (`pip install 'agentstream[cassandra]'`); the driver is
    imported only when such a URL is opened.
    """

    def __init__(self, url: str) -> None:
        from projections.stores.cassandra import open_cassandra_ledger

        self.url = url
        self._ledger = open_cassandra_ledger(url)

    async def claim(self, key: str, run_id: str, tool: str) -> Claim:
        state, result, attempts = await self._ledger.claim(key, run_id, tool)
        if state == "new":
            return Claim("new")
        if state == "completed":
            return Claim("completed", result, attempts)
        return Claim("started", None, attempts)

    async def complete(self, key: str, result_json: str) -> None:
        await self._ledger.complete(key, result_json)

    async def aclose(self) -> None:
        await self._ledger.aclose()


def open_ledger(url: str) -> IdempotencyLedger:
    """A ledger for a URL: `sqlite:///path` or `cassandra://host:port/keyspace`."""
    if url.startswith("sqlite://"):
        return SqliteIdempotencyLedger(url.removeprefix("sqlite://"))
    if url.startswith("cassandra://"):
        return CassandraLedger(url)
    raise ConfigError(
        f"unsupported idempotency ledger URL {url!r}: use sqlite:///PATH or cassandra://HOST:PORT/KEYSPACE"
    )
