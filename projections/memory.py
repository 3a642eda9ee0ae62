"""Semantic memory: a vector index folded from `MemoryWritten` events.

Every memory write is a `MemoryWritten` event on the log; `MemoryProjection` embeds it
and upserts it into a `MemoryIndex`, so the index is a projection and a rebuild (after a
change of embedding model, say) recreates it from offset 0.

Rules every `MemoryIndex` backend keeps (one contract suite checks them all):

- Tenancy: memories live in a tenant and a namespace inside it (`default`, `user:alice`,
  `project:x`). A search runs for a `Principal` (tenant + granted namespaces) and reads
  only those namespaces of that tenant. Filters carry no tenant: nothing a caller passes
  can reach another tenant's memories. Asking for a namespace not granted raises
  `MemoryAccessDenied`.
- TTL: a memory with `expires_at <= now` is never returned; `delete_expired` drops them.
- Near-duplicates: a write whose vector has cosine >= `dedup_threshold` (0.97) with a live
  memory of the same tenant+namespace does not add a memory: the existing one keeps its
  id and is refreshed with the newer write (text, tags, metadata, time, TTL, citation).
  A write with an id already stored replaces it if it is not older. Both make replays
  idempotent.
- Ranking: score = cosine similarity * 0.5 ** (age / half_life_s); no decay when
  `half_life_s` is None.
- Citations: every hit names the event (and run) that wrote it.

`SqliteMemoryIndex` is the embedded backend: one SQLite table (vectors as float32 blobs)
and, per tenant, an in-memory float32 matrix searched exactly with numpy.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from projections.embeddings import Embedder
from projections.projector import Applied, Projection
from projections.stores.base import Table, ViewTransaction
from streams.events import Event, MemoryWritten
from streams.log import LogRecord

__all__ = [
    "DEFAULT_NAMESPACE",
    "Citation",
    "MemoryAccessDenied",
    "MemoryFilter",
    "MemoryHit",
    "MemoryIndex",
    "MemoryItem",
    "MemoryProjection",
    "MemorySettings",
    "Principal",
    "SqliteMemoryIndex",
    "decay",
]

DEFAULT_NAMESPACE = "default"
MAX_K = 100

Vector = npt.NDArray[np.float32]


class MemoryAccessDenied(PermissionError):
    """A search asked for a namespace its principal was not granted."""


@dataclass(frozen=True)
class Principal:
    """Who reads memory: one tenant, and the namespaces granted inside it."""

    tenant_id: str
    namespaces: frozenset[str] = frozenset({DEFAULT_NAMESPACE})

    def __post_init__(self) -> None:
        if not self.tenant_id:
            raise ValueError("a principal needs a tenant id")
        object.__setattr__(self, "namespaces", frozenset(self.namespaces))

    def readable(self, requested: Sequence[str] | None) -> frozenset[str]:
        """The namespaces a search may read: the grants, or the requested subset of them."""
        if requested is None:
            return self.namespaces
        wanted = frozenset(requested)
        denied = wanted - self.namespaces
        if denied:
            raise MemoryAccessDenied(f"namespaces not granted: {sorted(denied)}")
        return wanted


@dataclass(frozen=True)
class Citation:
    """Where a memory came from: the MemoryWritten event and its run."""

    event_id: str
    run_id: str


@dataclass(frozen=True)
class MemoryFilter:
    """Narrows a search: every tag in `tags_all`, one of `tags_any`, equal `metadata`."""

    tags_all: tuple[str, ...] = ()
    tags_any: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)

    def matches(self, tags: Sequence[str], metadata: Mapping[str, str]) -> bool:
        have = set(tags)
        if not have.issuperset(self.tags_all):
            return False
        if self.tags_any and have.isdisjoint(self.tags_any):
            return False
        return all(metadata.get(k) == v for k, v in self.metadata.items())


@dataclass(frozen=True)
class MemoryItem:
    """One memory as stored: its vector, where it lives, and when it was written/expires.

    Times are UTC epoch seconds.
    """

    tenant_id: str
    memory_id: str
    namespace: str
    text: str
    vector: Sequence[float]
    """A tuple when read back from an index; any float sequence (numpy too) on writes."""
    created_at: float
    citation: Citation
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    expires_at: float | None = None

    def newer_than(self, other: MemoryItem) -> bool:
        """Whether this write wins over `other` (later time; ties broken by event id)."""
        return (self.created_at, self.citation.event_id) >= (other.created_at, other.citation.event_id)

    def alive(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now


@dataclass(frozen=True)
class MemoryHit:
    """A search result: the memory, its ranking score and raw similarity, its citation."""

    memory_id: str
    namespace: str
    text: str
    score: float
    similarity: float
    tags: tuple[str, ...]
    metadata: Mapping[str, str]
    citation: Citation
    created_at: datetime
    expires_at: datetime | None = None


@dataclass(frozen=True)
class MemorySettings:
    """Tuning shared by every backend."""

    dedup_threshold: float = 0.97
    half_life_s: float | None = 30 * 24 * 3600.0
    ann_min: int | None = 20_000
    """Embedded: from this many memories in a tenant, search probes an IVF index (k-means
    cells) instead of scanning every vector; None keeps search exact."""
    ann_probe: float = 0.08
    """Embedded: the share of IVF cells a search probes (recall against speed)."""


def decay(age_s: float, half_life_s: float | None) -> float:
    """The ranking weight of a memory `age_s` old: halves every `half_life_s` seconds."""
    if half_life_s is None:
        return 1.0
    return float(0.5 ** (max(0.0, age_s) / half_life_s))


def to_datetime(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def hit_of(item: MemoryItem, similarity: float, now: float, settings: MemorySettings) -> MemoryHit:
    return MemoryHit(
        memory_id=item.memory_id,
        namespace=item.namespace,
        text=item.text,
        score=similarity * decay(now - item.created_at, settings.half_life_s),
        similarity=similarity,
        tags=item.tags,
        metadata=dict(item.metadata),
        citation=item.citation,
        created_at=to_datetime(item.created_at),
        expires_at=None if item.expires_at is None else to_datetime(item.expires_at),
    )


def merge(existing: MemoryItem, new: MemoryItem) -> MemoryItem:
    """A near-duplicate write refreshes `existing`: same id, the newer write's content."""
    if not new.newer_than(existing):
        return existing
    return replace(new, memory_id=existing.memory_id)


def check_query(vector: Sequence[float], k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be between 1 and {MAX_K}, not {k}")
    if not vector:
        raise ValueError("a search needs a query vector")


class MemoryIndex(ABC):
    """Where memories are kept and searched; one implementation per backend."""

    settings: MemorySettings

    @abstractmethod
    async def upsert(self, items: Sequence[MemoryItem]) -> list[str]:
        """Store items in order, deduplicating near-duplicates; returns the id each was kept as."""

    @abstractmethod
    async def search(
        self,
        principal: Principal,
        query_vector: Sequence[float],
        k: int = 5,
        namespaces: Sequence[str] | None = None,
        filters: MemoryFilter | None = None,
        *,
        now: float | None = None,
    ) -> list[MemoryHit]:
        """The `k` best live memories the principal may read, by decayed score."""

    @abstractmethod
    async def delete_expired(self, now: float | None = None) -> int:
        """Drop memories expired at `now`, in every tenant; returns how many."""

    @abstractmethod
    async def reset(self, tenant_id: str | None = None) -> None:
        """Drop one tenant's memories, or every tenant's."""

    @abstractmethod
    async def items(self, tenant_id: str) -> list[MemoryItem]:
        """Every stored memory of a tenant (expired ones too), by id: for audits and tests."""

    async def close(self) -> None:
        """Release connections."""

    async def __aenter__(self) -> MemoryIndex:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# --------------------------------------------------------------------------- embedded backend


def _unit(vector: Sequence[float]) -> Vector:
    array = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(array))
    return array if norm == 0.0 else array / np.float32(norm)


@dataclass
class _Ivf:
    """An inverted file over a tenant's matrix: k-means centroids and each cell's slots.

    Slots written after training go to `pending` and are always scanned; the index is
    retrained when they grow past a quarter of what it was trained on.
    """

    centroids: Vector
    order: npt.NDArray[np.int64]
    bounds: npt.NDArray[np.int64]
    trained_on: int
    pending: list[int] = field(default_factory=list)

    def probe(self, vector: Vector, share: float) -> npt.NDArray[np.int64]:
        cells = len(self.centroids)
        probes = min(cells, max(4, round(cells * share)))
        scores = self.centroids @ vector
        chosen = np.argpartition(-scores, probes - 1)[:probes] if probes < cells else np.arange(cells)
        parts = [self.order[self.bounds[c] : self.bounds[c + 1]] for c in chosen]
        if not self.pending:
            return np.concatenate(parts)  # cells are disjoint
        parts.append(np.asarray(self.pending, dtype=np.int64))
        return np.unique(np.concatenate(parts))


def _train_ivf(vectors: Vector, live: npt.NDArray[np.int64], size: int) -> _Ivf:
    """k-means (spherical, 8 rounds on a sample) over the live rows; every row assigned."""
    rng = np.random.default_rng(0)
    cells = max(8, int(math.sqrt(len(live))))
    sample = vectors[rng.choice(live, min(len(live), 40 * cells), replace=False)]
    centroids = sample[rng.choice(len(sample), cells, replace=False)].copy()
    for _ in range(8):
        assign = np.argmax(sample @ centroids.T, axis=1)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, sample)
        filled = np.bincount(assign, minlength=cells) > 0
        centroids[filled] = sums[filled]
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    cell = np.zeros(size, dtype=np.int64)
    for start in range(0, size, 8192):
        cell[start : start + 8192] = np.argmax(vectors[start : min(size, start + 8192)] @ centroids.T, axis=1)
    cell[np.setdiff1d(np.arange(size), live)] = cells  # dead slots: past the last cell
    order = np.argsort(cell, kind="stable").astype(np.int64)
    bounds = np.searchsorted(cell[order], np.arange(cells + 1)).astype(np.int64)
    return _Ivf(centroids, order, bounds, len(live))


class _TenantMatrix:
    """One tenant's memories in memory: a float32 matrix and parallel columns."""

    def __init__(self, dim: int) -> None:
        self.ivf: _Ivf | None = None
        self.dim = dim
        self.size = 0
        self.vectors: Vector = np.zeros((64, dim), dtype=np.float32)
        self.namespace = np.zeros(64, dtype=np.int32)
        self.expires = np.full(64, np.inf, dtype=np.float64)
        self.created = np.zeros(64, dtype=np.float64)
        self.alive = np.zeros(64, dtype=bool)
        self.items: list[MemoryItem | None] = []
        self.row: dict[str, int] = {}
        self.codes: dict[str, int] = {}
        self.free: list[int] = []

    def _grow(self) -> None:
        capacity = len(self.alive) * 2
        self.vectors = np.resize(self.vectors, (capacity, self.dim))
        self.namespace = np.resize(self.namespace, capacity)
        expires = np.full(capacity, np.inf, dtype=np.float64)
        expires[: len(self.expires)] = self.expires
        self.expires = expires
        self.created = np.resize(self.created, capacity)
        alive = np.zeros(capacity, dtype=bool)
        alive[: len(self.alive)] = self.alive
        self.alive = alive

    def code(self, namespace: str) -> int:
        return self.codes.setdefault(namespace, len(self.codes))

    def put(self, item: MemoryItem, unit: Vector) -> None:
        """Keep `item` (without its vector, which lives in the matrix) at its slot."""
        slot = self.row.get(item.memory_id)
        if slot is None:
            if self.free:
                slot = self.free.pop()
            else:
                if self.size == len(self.alive):
                    self._grow()
                slot = self.size
                self.size += 1
                self.items.append(None)
            self.row[item.memory_id] = slot
        self.vectors[slot] = unit
        if self.ivf is not None:
            self.ivf.pending.append(slot)
        self.namespace[slot] = self.code(item.namespace)
        self.expires[slot] = np.inf if item.expires_at is None else item.expires_at
        self.created[slot] = item.created_at
        self.alive[slot] = True
        self.items[slot] = replace(item, vector=())

    def remove(self, memory_id: str) -> None:
        slot = self.row.pop(memory_id, None)
        if slot is not None:
            self.alive[slot] = False
            self.items[slot] = None
            self.free.append(slot)

    def similarities(self, vector: Vector, namespaces: frozenset[str], now: float) -> tuple[Any, Any]:
        """(rows, similarities) of live memories in `namespaces`."""
        codes = [self.codes[n] for n in namespaces if n in self.codes]
        n = self.size
        if not codes or n == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        mask = self.alive[:n] & (self.expires[:n] > now)
        if len(self.codes) > len(codes):
            mask &= np.isin(self.namespace[:n], codes)
        rows = np.flatnonzero(mask)
        if len(rows) == n:
            return rows, self.vectors[:n] @ vector
        return rows, self.vectors[rows] @ vector

    def candidates(
        self, vector: Vector, namespaces: frozenset[str], now: float, need: int, settings: MemorySettings
    ) -> tuple[Any, Any]:
        """Like `similarities`, but through the IVF index for large tenants."""
        live = len(self.row)
        if settings.ann_min is None or live < settings.ann_min:
            self.ivf = None
            return self.similarities(vector, namespaces, now)
        if self.ivf is None or len(self.ivf.pending) > self.ivf.trained_on // 4:
            self.ivf = _train_ivf(self.vectors, np.flatnonzero(self.alive[: self.size]), self.size)
        codes = [self.codes[n] for n in namespaces if n in self.codes]
        if not codes:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        rows = self.ivf.probe(vector, settings.ann_probe)
        mask = self.alive[rows] & (self.expires[rows] > now)
        if len(self.codes) > len(codes):
            mask &= np.isin(self.namespace[rows], codes)
        rows = rows[mask]
        if len(rows) < need:
            return self.similarities(vector, namespaces, now)
        return rows, self.vectors[rows] @ vector


_SCHEMA = """
CREATE TABLE IF NOT EXISTS memories (
  tenant_id TEXT NOT NULL,
  memory_id TEXT NOT NULL,
  namespace TEXT NOT NULL,
  text TEXT NOT NULL,
  tags TEXT NOT NULL,
  metadata TEXT NOT NULL,
  created_at REAL NOT NULL,
  expires_at REAL,
  event_id TEXT NOT NULL,
  run_id TEXT NOT NULL,
  vector BLOB NOT NULL,
  PRIMARY KEY (tenant_id, memory_id)
);
CREATE INDEX IF NOT EXISTS memories_expiry ON memories (expires_at) WHERE expires_at IS NOT NULL;
"""


class SqliteMemoryIndex(MemoryIndex):
    """The embedded backend: SQLite for durability, exact numpy search per tenant.

    Each tenant's vectors are loaded into a float32 matrix on first use and kept in step
    with every write; search multiplies it by the query (brute force, exact). `path` may
    be ":memory:" for a throwaway index.
    """

    def __init__(self, path: str | Path, dim: int, settings: MemorySettings | None = None) -> None:
        self.path = str(path)
        self.dim = dim
        self.settings = settings or MemorySettings()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._tenants: dict[str, _TenantMatrix] = {}

    # -- rows

    def _item(self, row: Sequence[Any], with_vector: bool = True) -> MemoryItem:
        (tenant, memory_id, namespace, text, tags, metadata, created, expires, event_id, run_id, blob) = row
        return MemoryItem(
            tenant_id=tenant,
            memory_id=memory_id,
            namespace=namespace,
            text=text,
            vector=tuple(float(x) for x in np.frombuffer(blob, dtype=np.float32)) if with_vector else (),
            created_at=created,
            citation=Citation(event_id, run_id),
            tags=tuple(json.loads(tags)),
            metadata=json.loads(metadata),
            expires_at=expires,
        )

    def _matrix(self, tenant: str) -> _TenantMatrix:
        matrix = self._tenants.get(tenant)
        if matrix is None:
            matrix = _TenantMatrix(self.dim)
            for row in self._db.execute("SELECT * FROM memories WHERE tenant_id = ?", (tenant,)):
                item = self._item(row, with_vector=False)
                matrix.put(item, np.frombuffer(row[-1], dtype=np.float32))
            self._tenants[tenant] = matrix
        return matrix

    def _write(self, item: MemoryItem, unit: Vector) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO memories VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                item.tenant_id,
                item.memory_id,
                item.namespace,
                item.text,
                json.dumps(list(item.tags)),
                json.dumps(dict(item.metadata), sort_keys=True),
                item.created_at,
                item.expires_at,
                item.citation.event_id,
                item.citation.run_id,
                unit.tobytes(),
            ),
        )

    def _check(self, item: MemoryItem) -> tuple[MemoryItem, Vector]:
        if len(item.vector) != self.dim:
            raise ValueError(f"memory {item.memory_id}: vector has {len(item.vector)} dims, not {self.dim}")
        return item, _unit(item.vector)

    def _put(self, matrix: _TenantMatrix, item: MemoryItem, unit: Vector) -> None:
        matrix.put(item, unit)
        self._write(item, unit)

    def _upsert_one(self, item: MemoryItem, unit: Vector) -> str:
        matrix = self._matrix(item.tenant_id)
        slot = matrix.row.get(item.memory_id)
        if slot is not None:
            existing = matrix.items[slot]
            assert existing is not None
            if item.newer_than(existing):
                self._put(matrix, item, unit)
            return item.memory_id
        rows, sims = matrix.similarities(unit, frozenset({item.namespace}), item.created_at)
        if len(rows):
            best = int(np.argmax(sims))
            if float(sims[best]) >= self.settings.dedup_threshold:
                existing = matrix.items[int(rows[best])]
                assert existing is not None
                if item.newer_than(existing):
                    self._put(matrix, replace(item, memory_id=existing.memory_id), unit)
                return existing.memory_id
        self._put(matrix, item, unit)
        return item.memory_id

    # -- interface

    async def upsert(self, items: Sequence[MemoryItem]) -> list[str]:
        checked = [self._check(item) for item in items]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                kept = [self._upsert_one(item, unit) for item, unit in checked]
            except BaseException:
                self._db.execute("ROLLBACK")
                for tenant in {item.tenant_id for item, _ in checked}:
                    self._tenants.pop(tenant, None)
                raise
            self._db.execute("COMMIT")
        return kept

    def bulk_load(self, items: Sequence[MemoryItem]) -> None:
        """Store items without near-duplicate checks (restores and benchmarks only)."""
        checked = [self._check(item) for item in items]
        with self._lock:
            self._db.execute("BEGIN")
            for item, unit in checked:
                self._put(self._matrix(item.tenant_id), item, unit)
            self._db.execute("COMMIT")

    def search_sync(
        self,
        principal: Principal,
        query_vector: Sequence[float],
        k: int = 5,
        namespaces: Sequence[str] | None = None,
        filters: MemoryFilter | None = None,
        *,
        now: float | None = None,
    ) -> list[MemoryHit]:
        """`search` without the event loop (for benchmarks and thread pools)."""
        check_query(query_vector, k)
        readable = principal.readable(namespaces)
        now = time.time() if now is None else now
        unit = _unit(query_vector)
        with self._lock:
            matrix = self._matrix(principal.tenant_id)
            want = k if filters is None else max(4 * k, 64)
            rows, sims = matrix.candidates(unit, readable, now, want, self.settings)
            hits = self._rank(matrix, rows, sims, k, filters, now)
            if len(hits) < k and matrix.ivf is not None and filters is not None:
                # The probed cells held too few matches: scan everything.
                rows, sims = matrix.similarities(unit, readable, now)
                hits = self._rank(matrix, rows, sims, k, filters, now)
            return hits

    def _rank(
        self, matrix: _TenantMatrix, rows: Any, sims: Any, k: int, filters: MemoryFilter | None, now: float
    ) -> list[MemoryHit]:
        if not len(rows):
            return []
        half_life = self.settings.half_life_s
        if half_life is None:
            scores = sims
        else:
            created = matrix.created[rows]
            scores = sims * np.power(0.5, np.maximum(0.0, now - created) / half_life)
        want = k if filters is None else min(len(rows), max(4 * k, 64))
        while True:
            top = np.argpartition(-scores, want - 1)[:want] if want < len(rows) else np.arange(len(rows))
            top = top[np.argsort(-scores[top], kind="stable")]
            hits = []
            for position in top:
                item = matrix.items[int(rows[position])]
                assert item is not None
                if filters is not None and not filters.matches(item.tags, item.metadata):
                    continue
                hits.append(hit_of(item, float(sims[position]), now, self.settings))
                if len(hits) == k:
                    return hits
            if want >= len(rows):
                return hits
            want = min(len(rows), want * 4)

    async def search(
        self,
        principal: Principal,
        query_vector: Sequence[float],
        k: int = 5,
        namespaces: Sequence[str] | None = None,
        filters: MemoryFilter | None = None,
        *,
        now: float | None = None,
    ) -> list[MemoryHit]:
        return self.search_sync(principal, query_vector, k, namespaces, filters, now=now)

    async def delete_expired(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self._lock:
            gone = self._db.execute(
                "SELECT tenant_id, memory_id FROM memories WHERE expires_at IS NOT NULL AND expires_at <= ?",
                (now,),
            ).fetchall()
            self._db.execute("DELETE FROM memories WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
            for tenant, memory_id in gone:
                matrix = self._tenants.get(tenant)
                if matrix is not None:
                    matrix.remove(memory_id)
        return len(gone)

    async def reset(self, tenant_id: str | None = None) -> None:
        with self._lock:
            if tenant_id is None:
                self._db.execute("DELETE FROM memories")
                self._tenants.clear()
            else:
                self._db.execute("DELETE FROM memories WHERE tenant_id = ?", (tenant_id,))
                self._tenants.pop(tenant_id, None)

    async def items(self, tenant_id: str) -> list[MemoryItem]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM memories WHERE tenant_id = ? ORDER BY memory_id", (tenant_id,)
            ).fetchall()
        return [self._item(row) for row in rows]

    async def close(self) -> None:
        with self._lock:
            self._db.close()
            self._tenants.clear()


# --------------------------------------------------------------------------- the projection

MEMORY_TENANTS = Table(
    "memory_tenants",
    {"tenant_id": "text", "model": "text", "writes": "int"},
    key=("tenant_id",),
)

_FOLD_VERSION = 1


def item_of(event: MemoryWritten, vector: Sequence[float]) -> MemoryItem:
    """The memory a MemoryWritten event writes, with its text's vector."""
    created = event.meta.occurred_at.timestamp()
    return MemoryItem(
        tenant_id=event.meta.tenant_id,
        memory_id=event.memory_id,
        namespace=event.namespace or DEFAULT_NAMESPACE,
        text=event.text,
        vector=tuple(vector),
        created_at=created,
        citation=Citation(event.meta.event_id, event.meta.run_id),
        tags=tuple(event.tags),
        metadata=dict(event.metadata),
        expires_at=None if event.ttl_s is None else created + event.ttl_s,
    )


class MemoryProjection(Projection):
    """Folds MemoryWritten events into a `MemoryIndex`, embedding each text.

    The index lives outside the projection store, so its writes cannot join the store's
    transaction; they are idempotent instead (ids come from the events, duplicates merge
    by event time), and a batch re-applied after a crash leaves the same index. The store
    keeps one `memory_tenants` row per tenant: a tenant without one (new, or after a
    rebuild or reset) has its memories dropped from the index before its first event is
    applied, so a rebuild recreates the index rather than adding to it.

    The embedding model is part of the projection's version: changing the model changes
    the schema fingerprint, and the store rebuilds the projection from offset 0.
    """

    consumes = frozenset({"MemoryWritten"})
    tables = (MEMORY_TENANTS,)

    def __init__(self, index: MemoryIndex, embedder: Embedder, *, name: str = "memory") -> None:
        self.index = index
        self.embedder = embedder
        self.name = name
        digest = hashlib.sha256(embedder.model_id.encode()).hexdigest()
        self.version = _FOLD_VERSION * 10**9 + int(digest[:7], 16)

    async def apply(self, event: Event, record: LogRecord, txn: ViewTransaction) -> None:
        await self.apply_batch([(event, record)], txn)

    async def apply_batch(self, items: Sequence[Applied], txn: ViewTransaction) -> None:
        events = [e for e, _ in items if isinstance(e, MemoryWritten)]
        if not events:
            return
        writes: dict[str, int] = {}
        rows: dict[str, dict[str, Any]] = {}
        for event in events:
            tenant = event.meta.tenant_id
            if tenant not in rows:
                row = await txn.get(MEMORY_TENANTS, (tenant,))
                if row is None:
                    await self.index.reset(tenant)
                    row = {"tenant_id": tenant, "model": self.embedder.model_id, "writes": 0}
                rows[tenant] = row
            writes[tenant] = writes.get(tenant, 0) + 1
        vectors = await asyncio.to_thread(self.embedder.embed, [e.text for e in events])
        await self.index.upsert([item_of(e, v) for e, v in zip(events, vectors, strict=True)])
        for tenant, row in rows.items():
            row["writes"] = int(row["writes"]) + writes[tenant]
            txn.put(MEMORY_TENANTS, row)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two vectors (0 if either is zero)."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return 0.0 if norm == 0.0 else dot / norm
