"""Semantic memory on every MemoryIndex backend: tenancy, grants, TTL, dedup, decay, citations.

Embedded (SQLite + numpy) always runs; Weaviate runs when AGENTSTREAM_TEST_WEAVIATE is
set to host:http_port:grpc_port (and must run under CI).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

pytest.importorskip("numpy", reason="semantic memory needs numpy: install the memory extra")

from projections.embeddings import HashingEmbedder
from projections.memory import (
    Citation,
    MemoryAccessDenied,
    MemoryFilter,
    MemoryIndex,
    MemoryItem,
    MemoryProjection,
    MemorySettings,
    Principal,
    SqliteMemoryIndex,
)
from projections.stores.sqlite import SqliteProjectionStore
from streams.events import EventMeta, MemoryWritten
from tests.conftest import service_address
from tests.support.projections import apply_events

DIM = 8
NOW = 1_800_000_000.0
DAY = 86_400.0


def vec(*head: float) -> tuple[float, ...]:
    return tuple(list(head) + [0.0] * (DIM - len(head)))


def item(
    tenant: str,
    memory_id: str,
    vector: Sequence[float],
    *,
    namespace: str = "default",
    text: str | None = None,
    created: float = NOW - 10,
    tags: Sequence[str] = (),
    metadata: dict[str, str] | None = None,
    expires: float | None = None,
) -> MemoryItem:
    return MemoryItem(
        tenant_id=tenant,
        memory_id=memory_id,
        namespace=namespace,
        text=text or f"text of {memory_id}",
        vector=tuple(vector),
        created_at=created,
        citation=Citation(f"ev-{memory_id}-{created}", f"run-{tenant}"),
        tags=tuple(tags),
        metadata=metadata or {},
        expires_at=expires,
    )


def _weaviate_address() -> tuple[str, int, int]:
    host, http, grpc = service_address("AGENTSTREAM_TEST_WEAVIATE", "a Weaviate server").rsplit(":", 2)
    return host, int(http), int(grpc)


def open_index(kind: str, tmp_path: Path, settings: MemorySettings, dim: int = DIM) -> MemoryIndex:
    if kind == "sqlite":
        return SqliteMemoryIndex(tmp_path / "memory.db", dim, settings)
    from projections.memory_weaviate import WeaviateMemoryIndex

    host, http, grpc = _weaviate_address()
    return WeaviateMemoryIndex(host, http, grpc, collection=f"Mem{uuid.uuid4().hex[:12]}", settings=settings)


@pytest.fixture(
    params=[
        pytest.param("sqlite", marks=pytest.mark.contract),
        pytest.param("weaviate", marks=[pytest.mark.contract, pytest.mark.integration, pytest.mark.weaviate]),
    ]
)
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "weaviate":
        _weaviate_address()
    return str(request.param)


@pytest.fixture
async def index(kind: str, tmp_path: Path) -> AsyncIterator[MemoryIndex]:
    opened = open_index(kind, tmp_path, MemorySettings(half_life_s=None))
    yield opened
    await opened.reset()
    await opened.close()


async def test_tenants_never_see_each_other(index: MemoryIndex) -> None:
    await index.upsert(
        [
            item("acme", "a1", vec(1, 0), tags=["x"], metadata={"k": "v"}),
            item("evil", "e1", vec(1, 0), tags=["x", "evil"], metadata={"k": "v", "owner": "evil"}),
        ]
    )
    acme = Principal("acme", frozenset({"default"}))
    hits = await index.search(acme, vec(1, 0), k=10, now=NOW)
    assert [h.memory_id for h in hits] == ["a1"]
    for filters in (
        MemoryFilter(tags_all=("evil",)),
        MemoryFilter(tags_any=("evil", "x")),
        MemoryFilter(metadata={"owner": "evil"}),
        MemoryFilter(metadata={"k": "v"}),
        MemoryFilter(metadata={"tenant_id": "evil"}),
    ):
        hits = await index.search(acme, vec(1, 0), k=10, filters=filters, now=NOW)
        assert all(h.citation.run_id == "run-acme" for h in hits), filters
    assert [h.memory_id for h in await index.search(Principal("evil"), vec(1, 0), now=NOW)] == ["e1"]
    assert await index.search(Principal("nobody"), vec(1, 0), now=NOW) == []
    assert [i.memory_id for i in await index.items("acme")] == ["a1"]


async def test_namespace_grants(index: MemoryIndex) -> None:
    await index.upsert(
        [
            item("acme", "d", vec(1, 0)),
            item("acme", "alice", vec(1, 0.1), namespace="user:alice"),
            item("acme", "proj", vec(1, 0.2), namespace="project:x"),
        ]
    )
    only_default = Principal("acme")
    assert [h.memory_id for h in await index.search(only_default, vec(1, 0), k=10, now=NOW)] == ["d"]
    with pytest.raises(MemoryAccessDenied):
        await index.search(only_default, vec(1, 0), namespaces=["user:alice"], now=NOW)
    alice = Principal("acme", frozenset({"default", "user:alice"}))
    assert {h.memory_id for h in await index.search(alice, vec(1, 0), k=10, now=NOW)} == {"d", "alice"}
    narrowed = await index.search(alice, vec(1, 0), k=10, namespaces=["user:alice"], now=NOW)
    assert [(h.memory_id, h.namespace) for h in narrowed] == [("alice", "user:alice")]


async def test_filters_on_tags_and_metadata(index: MemoryIndex) -> None:
    await index.upsert(
        [
            item("acme", "m1", vec(1, 0), tags=["a", "b"], metadata={"lang": "en"}),
            item("acme", "m2", vec(1, 0.3), tags=["b"], metadata={"lang": "fr"}),
            item("acme", "m3", vec(1, 0.6), tags=["c"]),
        ]
    )
    p = Principal("acme")

    async def ids(f: MemoryFilter) -> set[str]:
        return {h.memory_id for h in await index.search(p, vec(1, 0), k=10, filters=f, now=NOW)}

    assert await ids(MemoryFilter(tags_all=("a", "b"))) == {"m1"}
    assert await ids(MemoryFilter(tags_any=("b", "c"))) == {"m1", "m2", "m3"}
    assert await ids(MemoryFilter(metadata={"lang": "fr"})) == {"m2"}
    assert await ids(MemoryFilter(tags_all=("b",), metadata={"lang": "en"})) == {"m1"}
    assert await ids(MemoryFilter(metadata={"lang": "de"})) == set()


async def test_expired_memories_are_never_returned(index: MemoryIndex) -> None:
    await index.upsert(
        [
            item("acme", "short", vec(1, 0), expires=NOW + 5),
            item("acme", "long", vec(1, 0.5), expires=NOW + DAY),
            item("acme", "forever", vec(1, 1)),
        ]
    )
    p = Principal("acme")
    assert {h.memory_id for h in await index.search(p, vec(1, 0), k=10, now=NOW)} == {
        "short",
        "long",
        "forever",
    }
    later = {h.memory_id for h in await index.search(p, vec(1, 0), k=10, now=NOW + 10)}
    assert later == {"long", "forever"}
    assert await index.delete_expired(NOW + 10) == 1
    assert {i.memory_id for i in await index.items("acme")} == {"long", "forever"}


async def test_near_duplicates_are_kept_once_and_refreshed(index: MemoryIndex) -> None:
    await index.upsert([item("acme", "first", vec(1, 0, 0), created=NOW - 100, text="old")])
    kept = await index.upsert(
        [item("acme", "again", vec(1, 0.05, 0), created=NOW - 1, text="new", tags=["t"])]
    )
    assert kept == ["first"]
    stored = await index.items("acme")
    assert [(i.memory_id, i.text, i.created_at, i.tags) for i in stored] == [
        ("first", "new", NOW - 1, ("t",))
    ]
    # below the threshold, in another namespace or another tenant: separate memories
    await index.upsert(
        [
            item("acme", "different", vec(1, 0.5, 0)),
            item("acme", "elsewhere", vec(1, 0, 0), namespace="user:bob"),
            item("other", "theirs", vec(1, 0, 0)),
        ]
    )
    assert {i.memory_id for i in await index.items("acme")} == {"first", "different", "elsewhere"}
    assert [i.memory_id for i in await index.items("other")] == ["theirs"]
    # replaying a write changes nothing
    await index.upsert([item("acme", "again", vec(1, 0.05, 0), created=NOW - 1, text="new", tags=["t"])])
    assert {i.memory_id for i in await index.items("acme")} == {"first", "different", "elsewhere"}
    # an older duplicate does not overwrite the newer content
    await index.upsert([item("acme", "stale", vec(1, 0.02, 0), created=NOW - 500, text="stale")])
    first = next(i for i in await index.items("acme") if i.memory_id == "first")
    assert first.text == "new"


async def test_decay_ranks_recent_memories_first(kind: str, tmp_path: Path) -> None:
    decaying = open_index(kind, tmp_path, MemorySettings(half_life_s=DAY))
    try:
        await decaying.upsert(
            [
                item("acme", "old-exact", vec(1, 0), created=NOW - 10 * DAY),
                item("acme", "fresh-close", vec(1, 0.4), created=NOW - 60),
            ]
        )
        hits = await decaying.search(Principal("acme"), vec(1, 0), k=2, now=NOW)
        assert [h.memory_id for h in hits] == ["fresh-close", "old-exact"]
        assert hits[1].similarity == pytest.approx(1.0, abs=1e-4)
        assert hits[1].score == pytest.approx(2**-10, rel=1e-3)
    finally:
        await decaying.reset()
        await decaying.close()
    flat = open_index(kind, tmp_path / "flat", MemorySettings(half_life_s=None))
    try:
        await flat.upsert(
            [
                item("acme", "old-exact", vec(1, 0), created=NOW - 10 * DAY),
                item("acme", "fresh-close", vec(1, 0.4), created=NOW - 60),
            ]
        )
        hits = await flat.search(Principal("acme"), vec(1, 0), k=2, now=NOW)
        assert [h.memory_id for h in hits] == ["old-exact", "fresh-close"]
    finally:
        await flat.reset()
        await flat.close()


async def test_hits_cite_their_event(index: MemoryIndex) -> None:
    await index.upsert([item("acme", "m", vec(0, 1), created=NOW - 30, tags=["t"], metadata={"a": "b"})])
    [hit] = await index.search(Principal("acme"), vec(0, 1), now=NOW)
    assert hit.citation == Citation(f"ev-m-{NOW - 30}", "run-acme")
    assert hit.created_at == datetime.fromtimestamp(NOW - 30, UTC)
    assert (hit.text, hit.tags, dict(hit.metadata)) == ("text of m", ("t",), {"a": "b"})
    assert hit.similarity == pytest.approx(1.0, abs=1e-4)


async def test_search_arguments_are_checked(index: MemoryIndex) -> None:
    with pytest.raises(ValueError):
        await index.search(Principal("acme"), vec(1), k=0)
    with pytest.raises(ValueError):
        await index.search(Principal("acme"), [], k=1)


def written(tenant: str, run: str, memory_id: str, text: str, **fields: object) -> MemoryWritten:
    meta = EventMeta(
        event_id=str(uuid.uuid4()),
        run_id=run,
        tenant_id=tenant,
        correlation_id=run,
        occurred_at=datetime(2026, 11, 1, 12, 0, tzinfo=UTC),
        producer="test",
    )
    return MemoryWritten(meta=meta, memory_id=memory_id, namespace="default", text=text, **fields)  # type: ignore[arg-type]


async def test_projection_rebuild_equals_live(kind: str, tmp_path: Path) -> None:
    embedder = HashingEmbedder(DIM * 4)
    index = open_index(kind, tmp_path, MemorySettings(half_life_s=None), dim=embedder.dim)
    store = SqliteProjectionStore(tmp_path / "views.db")
    projection = MemoryProjection(index, embedder)
    texts = [f"note {i} about topic {i % 5} with detail {i * 7}" for i in range(30)]
    events = [written("acme" if i % 3 else "globex", f"run-{i % 4}", f"m{i}", t) for i, t in enumerate(texts)]
    events.append(written("acme", "run-1", "dup", texts[1]))  # exact duplicate text: merged
    events.append(written("acme", "run-2", "ttl", "expires soon", ttl_s=60))
    try:
        await apply_events(store, [projection], events, batch=7)
        live = {t: await index.items(t) for t in ("acme", "globex")}
        assert len(live["acme"]) + len(live["globex"]) == 31
        await store.reset(projection.schema)
        await index.upsert([item("acme", "stray", [1.0] + [0.0] * (embedder.dim - 1))])
        await apply_events(store, [projection], events, batch=5)
        rebuilt = {t: await index.items(t) for t in ("acme", "globex")}
        assert rebuilt == live
        rows = await store.scan(projection.tables[0])
        assert sorted((r["tenant_id"], r["writes"]) for r in rows) == [("acme", 22), ("globex", 10)]
        [hit] = await index.search(Principal("acme"), embedder.embed_query([texts[4]])[0], k=1)
        assert hit.memory_id == "m4"
        assert hit.citation == Citation(events[4].meta.event_id, "run-0")
    finally:
        await store.close()
        await index.reset()
        await index.close()


def test_changing_the_model_changes_the_projection_version(tmp_path: Path) -> None:
    index = SqliteMemoryIndex(":memory:", 64)
    a = MemoryProjection(index, HashingEmbedder(64))
    b = MemoryProjection(index, HashingEmbedder(32))
    assert a.schema.fingerprint != b.schema.fingerprint
    assert a.schema.fingerprint == MemoryProjection(index, HashingEmbedder(64)).schema.fingerprint
