"""The Cassandra store's commit protocol: the fence, its takeover, and the redo log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from projections.errors import ProjectionConflict
from projections.stores.base import Index, ProjectionSchema, Table
from projections.stores.cassandra import CassandraProjectionStore
from streams.log import TopicPartition
from tests.support.stores import CASSANDRA_FENCE_TIMEOUT_S, StoreBackend, cassandra_address

pytestmark = [pytest.mark.integration, pytest.mark.cassandra]

ITEMS = Table(
    "items",
    columns={"tenant_id": "text", "item_id": "text", "n": "int", "kind": "text", "body": "text"},
    key=("tenant_id", "item_id"),
    indexes=(Index("by_kind", equal=("kind",), order=("n",)),),
)
SCHEMA = ProjectionSchema("items", 1, (ITEMS,))
TP = TopicPartition("t.events", 0)


@pytest.fixture
async def stores(tmp_path: Any) -> AsyncIterator[tuple[CassandraProjectionStore, CassandraProjectionStore]]:
    backend = StoreBackend("cassandra", tmp_path, cassandra_address())
    one, two = backend.open(), backend.open()
    assert isinstance(one, CassandraProjectionStore) and isinstance(two, CassandraProjectionStore)
    await one.register(SCHEMA)
    yield one, two
    await one.close()
    await two.close()
    await backend.cleanup()


def _item(i: int, body: str = "x") -> dict[str, object]:
    return {
        "tenant_id": "acme",
        "item_id": f"i{i:05d}",
        "n": i,
        "kind": "even" if i % 2 else "odd",
        "body": body,
    }


async def test_a_fence_left_by_a_dead_projector_is_taken_over(
    stores: tuple[CassandraProjectionStore, CassandraProjectionStore],
) -> None:
    dead, alive = stores
    await dead._fence("items", {})  # fenced, then "killed" before its batch
    txn = alive.transaction()
    txn.put(ITEMS, _item(1))
    txn.advance("items", {}, {TP: 1})
    with pytest.raises(ProjectionConflict, match="another projector is committing"):
        await alive.commit(txn)
    assert await alive.offsets("items") == {} and await alive.scan(ITEMS) == []
    await asyncio.sleep(CASSANDRA_FENCE_TIMEOUT_S)
    await alive.commit(txn)
    assert alive.fence_takeovers == 1
    assert await alive.offsets("items") == {TP: 1}
    assert [r["item_id"] for r in await alive.scan(ITEMS)] == ["i00001"]


async def test_two_fences_on_one_version_let_one_through(
    stores: tuple[CassandraProjectionStore, CassandraProjectionStore],
) -> None:
    one, two = stores
    results = await asyncio.gather(one._fence("items", {}), two._fence("items", {}), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["ProjectionConflict", "int"]


async def test_a_large_batch_killed_half_way_is_finished_from_its_redo_log(
    stores: tuple[CassandraProjectionStore, CassandraProjectionStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dead, alive = stores
    dead.max_batch_bytes = 1024  # every batch takes the redo path
    real_gather = dead._gather
    calls = 0

    async def dies_half_way(statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # the first writes the redo log, the second the views
            await real_gather(statements[: len(statements) // 2])
            raise KeyboardInterrupt("killed")
        await real_gather(statements)

    monkeypatch.setattr(dead, "_gather", dies_half_way)
    txn = dead.transaction()
    for i in range(200):
        txn.put(ITEMS, _item(i, body="y" * 100))
    txn.advance("items", {}, {TP: 200})
    with pytest.raises(KeyboardInterrupt):
        await dead.commit(txn)
    assert await alive.offsets("items") == {}
    assert 0 < len(await alive.scan(ITEMS)) < 200, "half the rows, offsets not moved"

    await asyncio.sleep(CASSANDRA_FENCE_TIMEOUT_S)
    retry = alive.transaction()
    retry.put(ITEMS, _item(999))
    retry.advance("items", {}, {TP: 1})
    with pytest.raises(ProjectionConflict, match="finished a dead projector's batch"):
        await alive.commit(retry)
    assert await alive.offsets("items") == {TP: 200}
    assert len(await alive.scan(ITEMS)) == 200
    evens = await alive.select(ITEMS, "acme", index="by_kind", equal={"kind": "even"}, limit=1000)
    assert [r["n"] for r in evens] == list(range(1, 200, 2))


async def test_a_large_batch_commits_whole(
    stores: tuple[CassandraProjectionStore, CassandraProjectionStore],
) -> None:
    one, two = stores
    txn = one.transaction()
    for i in range(3000):
        txn.put(ITEMS, _item(i, body="z" * 1000))  # ~3 MB: far above one batch message
    txn.advance("items", {}, {TP: 3000})
    await one.commit(txn)
    assert await two.offsets("items") == {TP: 3000}
    assert len(await two.scan(ITEMS)) == 3000
    update = one.transaction()
    update.put(ITEMS, {**_item(1), "kind": "odd"})
    update.delete(ITEMS, ("acme", "i00003"))
    update.advance("items", {TP: 3000}, {TP: 3001})
    await one.commit(update)
    odds = await two.select(ITEMS, "acme", index="by_kind", equal={"kind": "odd"}, limit=10)
    assert [r["n"] for r in odds][:3] == [0, 1, 2]
    evens = await two.select(ITEMS, "acme", index="by_kind", equal={"kind": "even"}, limit=3)
    assert [r["n"] for r in evens] == [5, 7, 9], "moved and deleted rows leave their old index entries"
