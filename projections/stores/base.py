"""The projection store interface: declared tables, written in batches, read per tenant.

A store holds the read models (views) that projections fold from the event log, and
the offset up to which each projection has applied each partition. A batch of view
changes commits together with the projection's new offsets (`ProjectionStore.commit`),
so a crash keeps both or neither: no event is skipped and none is applied twice.

Projections do not write SQL. Each declares its `Table`s: columns, a primary key that
starts with `tenant_id`, and the `Index`es its queries use. A backend maps that to what
it has: SQLite creates tables and indexes; a wide-column store (Cassandra) makes the key
a partition key (`tenant_id` and the equality columns) plus clustering columns, and each
index a table of its own. Queries may use only the key or a declared index and always
bind `tenant_id`, so they cost the same on every backend and can never reach another
tenant's rows.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from projections.errors import ProjectionLagging
from streams.log import TopicPartition

ColumnType = Literal["text", "int", "float", "bool", "time", "json"]
"""`time` is a UTC datetime kept to the millisecond; `json` is any JSON-ready value."""
COLUMN_TYPES: frozenset[str] = frozenset({"text", "int", "float", "bool", "time", "json"})

Row = dict[str, Any]
Key = tuple[Any, ...]
Scalar = str | int | float | bool | datetime | None

TENANT = "tenant_id"
MAX_ROWS = 10_000
"""The most rows one `select` may return."""

_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]{0,47}")


def _identifier(what: str, name: str) -> None:
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"{what} {name!r} must be lower_snake_case ASCII, at most 48 characters")


@dataclass(frozen=True)
class Index:
    """A query path: rows of one tenant with equal `equal` columns, sorted by `order`.

    On a wide-column store, `tenant_id` + `equal` is the partition key and `order` the
    clustering columns of the index table, so a query must bind every `equal` column.
    """

    name: str
    equal: tuple[str, ...] = ()
    order: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class Table:
    """A view table: typed columns and a primary key that starts with `tenant_id`."""

    name: str
    columns: Mapping[str, ColumnType]
    key: tuple[str, ...]
    indexes: tuple[Index, ...] = ()

    def __post_init__(self) -> None:
        _identifier("table", self.name)
        for column, kind in self.columns.items():
            _identifier("column", column)
            if kind not in COLUMN_TYPES:
                raise ValueError(f"{self.name}.{column}: unknown column type {kind!r}")
        if not self.key or self.key[0] != TENANT:
            raise ValueError(f"{self.name}: the key must start with {TENANT!r}, so rows belong to a tenant")
        names = set()
        for index in self.indexes:
            _identifier("index", index.name)
            if index.name in names:
                raise ValueError(f"{self.name}: two indexes named {index.name!r}")
            names.add(index.name)
            if TENANT in index.equal + index.order:
                raise ValueError(f"{self.name}.{index.name}: {TENANT} is always bound; do not list it")
        for column in self.key + tuple(c for i in self.indexes for c in i.equal + i.order):
            if column not in self.columns:
                raise ValueError(f"{self.name}: {column!r} is used in a key or index but not declared")

    def key_of(self, row: Mapping[str, Any]) -> Key:
        return tuple([row[c] for c in self.key])

    def index(self, name: str) -> Index:
        for index in self.indexes:
            if index.name == name:
                return index
        raise ValueError(f"table {self.name} has no index {name!r}")

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "columns": dict(self.columns),
            "key": list(self.key),
            "indexes": [[i.name, list(i.equal), list(i.order)] for i in self.indexes],
        }


@dataclass(frozen=True)
class ProjectionSchema:
    """The tables of one projection and the version of its fold.

    A store keeps each projection's fingerprint; when it changes (a table changed, or
    the projection's `version` was bumped because the fold changed), the store drops the
    projection's tables and offsets, and the projector applies the log again from 0.
    Views are derived data: re-applying the log is their migration.
    """

    name: str
    version: int
    tables: tuple[Table, ...]

    @property
    def fingerprint(self) -> str:
        text = json.dumps(
            {"version": self.version, "tables": [t.describe() for t in self.tables]}, sort_keys=True
        )
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class QueryPlan:
    """How a `select` reads: which columns are bound, and the order rows come in."""

    table: Table
    index: Index | None
    equal: tuple[str, ...]
    """Bound columns after tenant_id, in key or index order."""
    order: tuple[str, ...]
    """Sort columns; `start`/`stop` bound the first one."""

    @classmethod
    def make(cls, table: Table, index: str | None, equal: Iterable[str]) -> QueryPlan:
        bound = set(equal)
        if index is None:
            rest = table.key[1:]
            prefix = rest[: len(bound)]
            if set(prefix) != bound:
                raise ValueError(
                    f"{table.name}: without an index, bind a prefix of the key {rest}, not {sorted(bound)}"
                )
            return cls(table, None, prefix, rest[len(prefix) :])
        chosen = table.index(index)
        if bound != set(chosen.equal):
            raise ValueError(f"{table.name}.{index}: bind exactly {list(chosen.equal)}, not {sorted(bound)}")
        tail = tuple(c for c in table.key[1:] if c not in chosen.equal and c not in chosen.order)
        return cls(table, chosen, chosen.equal, chosen.order + tail)


@dataclass
class OffsetAdvance:
    """A projection's offsets as the batch found them, and the offsets it moves to."""

    expected: dict[TopicPartition, int]
    new: dict[TopicPartition, int]


class ViewTransaction:
    """The view changes of one batch, buffered until the store commits them.

    Reads see the batch's own writes first. A projection must `put` every row it
    changes: rows returned by `get` are copies.
    """

    def __init__(self, store: ProjectionStore) -> None:
        self.store = store
        self.changes: dict[tuple[str, Key], tuple[Table, Row | None]] = {}
        """(table, key) -> the row's final state in this batch; None deletes it."""
        self.offsets: dict[str, OffsetAdvance] = {}

    async def get(self, table: Table, key: Key) -> Row | None:
        change = self.changes.get((table.name, key))
        if change is not None:
            row = change[1]
            return None if row is None else dict(row)
        return await self.store.load(table, key)

    def put(self, table: Table, row: Row) -> None:
        unknown = row.keys() - table.columns.keys()
        if unknown:
            raise ValueError(f"{table.name} has no columns {sorted(unknown)}")
        if not row.get(TENANT):
            raise ValueError(f"a {table.name} row needs a tenant_id")
        self.changes[(table.name, table.key_of(row))] = (table, row)

    def delete(self, table: Table, key: Key) -> None:
        self.changes[(table.name, key)] = (table, None)

    def advance(
        self, projection: str, expected: Mapping[TopicPartition, int], new: Mapping[TopicPartition, int]
    ) -> None:
        """Move `projection` from `expected` (all its offsets, as read) to `new` on commit."""
        self.offsets[projection] = OffsetAdvance(dict(expected), dict(new))


@dataclass
class _Waiters:
    events: weakref.WeakSet[asyncio.Event] = field(default_factory=weakref.WeakSet)

    def notify(self) -> None:
        for waiter in list(self.events):
            waiter.set()


_waiters: dict[str, _Waiters] = {}


class ProjectionStore(ABC):
    """Where projections keep their views and offsets. One module per backend."""

    url: str

    @abstractmethod
    async def register(self, schema: ProjectionSchema) -> bool:
        """Create the projection's tables if missing; reset them if its fingerprint changed.

        Returns True when the projection starts empty (new, or reset by a schema change).
        """

    @abstractmethod
    async def reset(self, schema: ProjectionSchema) -> None:
        """Drop the projection's rows and offsets, in one step, and create empty tables."""

    @abstractmethod
    async def offsets(self, projection: str) -> dict[TopicPartition, int]:
        """The next offset to apply, per partition the projection has applied."""

    async def applied(self, projection: str, topic: str, partition: int) -> int:
        """The next offset `projection` will apply in a partition (0 if none yet)."""
        return (await self.offsets(projection)).get(TopicPartition(topic, partition), 0)

    async def wait_for(
        self, projection: str, position: TopicPartition, offset: int, timeout_s: float = 10.0
    ) -> None:
        """Return once `projection` has applied the record at `offset` of `position`.

        Handlers call this before reading a view, with the position of the event they are
        reacting to, so they never act on a view older than that event. Raises
        `ProjectionLagging` after `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        waiter = asyncio.Event()
        self._waiters().events.add(waiter)
        idle = 0.001
        try:
            while True:
                waiter.clear()
                if await self.applied(projection, position.topic, position.partition) > offset:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ProjectionLagging(
                        f"{projection} has not applied {position.topic}[{position.partition}]@{offset}"
                        f" after {timeout_s:g}s"
                    )
                # Commits in this process wake us at once; other processes' are polled.
                try:
                    await asyncio.wait_for(waiter.wait(), min(idle, remaining))
                except TimeoutError:
                    idle = min(idle * 2, 0.05)
        finally:
            self._waiters().events.discard(waiter)

    def _waiters(self) -> _Waiters:
        return _waiters.setdefault(self.url, _Waiters())

    def _notify(self) -> None:
        """Wake `wait_for` callers in this process; backends call it after each commit."""
        self._waiters().notify()

    def transaction(self) -> ViewTransaction:
        return ViewTransaction(self)

    @abstractmethod
    async def load(self, table: Table, key: Key) -> Row | None:
        """One committed row by its full key."""

    @abstractmethod
    async def commit(self, txn: ViewTransaction) -> None:
        """Write the batch's changes and offsets atomically.

        Raises `ProjectionConflict`, writing nothing, when a projection's offsets are not
        what `txn.offsets[...].expected` says: another projector got there first.
        """

    @abstractmethod
    async def select(
        self,
        table: Table,
        tenant: str,
        *,
        index: str | None = None,
        equal: Mapping[str, Scalar] | None = None,
        start: Scalar = None,
        stop: Scalar = None,
        descending: bool = False,
        limit: int,
    ) -> list[Row]:
        """Rows of one tenant through the key or a declared index (see `QueryPlan`).

        `start` (inclusive) and `stop` (exclusive) bound the first sort column; rows come
        sorted by the sort columns, descending if asked; at most `limit` (<= MAX_ROWS).
        """

    @abstractmethod
    async def scan(self, table: Table) -> list[Row]:
        """Every row of a table, every tenant, in key order: for audits, tests and tools."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and files."""

    async def __aenter__(self) -> ProjectionStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def check_select(tenant: str, limit: int) -> None:
    """Arguments every backend refuses the same way."""
    if not isinstance(tenant, str) or not tenant:
        raise ValueError("a query needs a tenant id")
    if not 1 <= limit <= MAX_ROWS:
        raise ValueError(f"limit must be between 1 and {MAX_ROWS}, not {limit}")
