"""Projection stores (SQLite, and Cassandra when a node is given): declared tables,
atomic batches with offsets, tenant-bound reads."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from projections.errors import ProjectionConflict, ProjectionLagging, StoreError
from projections.stores import open_store
from projections.stores.base import MAX_ROWS, Index, ProjectionSchema, Table
from projections.stores.sqlite import SqliteProjectionStore
from streams.errors import ConfigError
from streams.log import TopicPartition

pytestmark = pytest.mark.unit

NOTES = Table(
    "notes",
    columns={
        "tenant_id": "text",
        "note_id": "text",
        "seq": "int",
        "kind": "text",
        "score": "float",
        "done": "bool",
        "at": "time",
        "tags": "json",
    },
    key=("tenant_id", "note_id", "seq"),
    indexes=(Index("by_kind", equal=("kind",), order=("at",)), Index("by_time", order=("at",))),
)
SCHEMA = ProjectionSchema("notes", 1, (NOTES,))
TP = TopicPartition("t.events", 0)


def _note(tenant: str, note_id: str, seq: int, kind: str = "a", minute: int = 0) -> dict[str, object]:
    return {
        "tenant_id": tenant,
        "note_id": note_id,
        "seq": seq,
        "kind": kind,
        "score": seq / 3,
        "done": seq % 2 == 0,
        "at": datetime(2026, 1, 1, 12, minute, seq % 60, 123000, tzinfo=UTC),
        "tags": {"n": [seq, "x"]},
    }


async def _write(store: SqliteProjectionStore, *rows: dict[str, object], offset: int = 0) -> None:
    txn = store.transaction()
    for row in rows:
        txn.put(NOTES, row)
    txn.advance("notes", await store.offsets("notes"), {TP: offset})
    await store.commit(txn)


def test_a_table_key_must_start_with_the_tenant() -> None:
    with pytest.raises(ValueError, match="tenant_id"):
        Table("bad", columns={"run_id": "text", "tenant_id": "text"}, key=("run_id", "tenant_id"))
    with pytest.raises(ValueError, match="lower_snake_case"):
        Table('x"; DROP TABLE y; --', columns={"tenant_id": "text"}, key=("tenant_id",))
    with pytest.raises(ValueError, match="not declared"):
        Table("t", columns={"tenant_id": "text"}, key=("tenant_id",), indexes=(Index("i", order=("nope",)),))
    with pytest.raises(ValueError, match="unknown column type"):
        Table("t", columns={"tenant_id": "text", "x": "blob"}, key=("tenant_id",))  # type: ignore[dict-item]


async def test_values_of_every_column_type_round_trip(store: SqliteProjectionStore) -> None:
    await store.register(SCHEMA)
    row = _note("acme", "n1", 3)
    empty = {"tenant_id": "acme", "note_id": "n2", "seq": 1}
    await _write(store, row, empty, offset=2)
    assert await store.load(NOTES, ("acme", "n1", 3)) == row
    assert await store.load(NOTES, ("acme", "n2", 1)) == {
        **empty,
        **{c: None for c in NOTES.columns if c not in empty},
    }
    assert await store.load(NOTES, ("acme", "n3", 1)) is None
    assert await store.offsets("notes") == {TP: 2}
    assert await store.applied("notes", TP.topic, TP.partition) == 2
    assert await store.applied("notes", TP.topic, 5) == 0


async def test_a_batch_sees_its_own_writes_and_deletes(store: SqliteProjectionStore) -> None:
    await store.register(SCHEMA)
    await _write(store, _note("acme", "n1", 1))
    txn = store.transaction()
    row = await txn.get(NOTES, ("acme", "n1", 1))
    assert row is not None
    row["kind"] = "b"
    assert (await txn.get(NOTES, ("acme", "n1", 1)) or {})["kind"] == "a", "get returns copies"
    txn.put(NOTES, row)
    assert (await txn.get(NOTES, ("acme", "n1", 1)) or {})["kind"] == "b"
    txn.delete(NOTES, ("acme", "n1", 1))
    assert await txn.get(NOTES, ("acme", "n1", 1)) is None
    assert await store.load(NOTES, ("acme", "n1", 1)) is not None, "nothing is written before commit"
    await store.commit(txn)
    assert await store.load(NOTES, ("acme", "n1", 1)) is None


async def test_rows_must_name_declared_columns_and_a_tenant(store: SqliteProjectionStore) -> None:
    txn = store.transaction()
    with pytest.raises(ValueError, match="no columns"):
        txn.put(NOTES, {**_note("acme", "n", 1), "extra": 1})
    with pytest.raises(ValueError, match="tenant_id"):
        txn.put(NOTES, {**_note("acme", "n", 1), "tenant_id": ""})


async def test_a_batch_is_refused_whole_when_offsets_moved(store: SqliteProjectionStore) -> None:
    await store.register(SCHEMA)
    await _write(store, _note("acme", "n1", 1), offset=5)
    stale = store.transaction()
    stale.put(NOTES, _note("acme", "n2", 1))
    stale.advance("notes", {TP: 4}, {TP: 9})
    with pytest.raises(ProjectionConflict) as raised:
        await store.commit(stale)
    assert raised.value.retryable
    assert await store.load(NOTES, ("acme", "n2", 1)) is None
    assert await store.offsets("notes") == {TP: 5}


async def test_a_failing_batch_writes_nothing(store: SqliteProjectionStore, tmp_path: Path) -> None:
    await store.register(SCHEMA)
    txn = store.transaction()
    txn.put(NOTES, _note("acme", "n1", 1))
    txn.put(NOTES, {**_note("acme", "n2", 1), "seq": object()})  # the driver cannot bind this
    txn.advance("notes", {}, {TP: 2})
    with pytest.raises(StoreError):
        await store.commit(txn)
    assert await store.scan(NOTES) == []
    assert await store.offsets("notes") == {}


async def test_select_binds_the_tenant_and_follows_key_or_index(store: SqliteProjectionStore) -> None:
    await store.register(SCHEMA)
    await _write(
        store,
        *[_note("acme", "n1", s, kind="a" if s % 2 else "b", minute=s) for s in range(1, 8)],
        _note("acme", "n2", 1, kind="c"),
        _note("globex", "n1", 1),
    )
    by_key = await store.select(NOTES, "acme", equal={"note_id": "n1"}, limit=100)
    assert [r["seq"] for r in by_key] == [1, 2, 3, 4, 5, 6, 7]
    ranged = await store.select(
        NOTES, "acme", equal={"note_id": "n1"}, start=3, stop=6, descending=True, limit=2
    )
    assert [r["seq"] for r in ranged] == [5, 4]
    kinds = await store.select(NOTES, "acme", index="by_kind", equal={"kind": "a"}, limit=100)
    assert [r["seq"] for r in kinds] == [1, 3, 5, 7]
    since = datetime(2026, 1, 1, 12, 5, tzinfo=UTC)
    recent = await store.select(NOTES, "acme", index="by_time", start=since, descending=True, limit=100)
    assert [(r["note_id"], r["seq"]) for r in recent] == [("n1", 7), ("n1", 6), ("n1", 5)]
    assert len(await store.select(NOTES, "acme", limit=100)) == 8
    assert [r["tenant_id"] for r in await store.select(NOTES, "globex", limit=100)] == ["globex"]


async def test_select_refuses_what_a_wide_column_store_could_not_serve(store: SqliteProjectionStore) -> None:
    await store.register(SCHEMA)
    with pytest.raises(ValueError, match="prefix of the key"):
        await store.select(NOTES, "acme", equal={"seq": 1}, limit=1)
    with pytest.raises(ValueError, match="bind exactly"):
        await store.select(NOTES, "acme", index="by_kind", limit=1)
    with pytest.raises(ValueError, match="no index"):
        await store.select(NOTES, "acme", index="by_nothing", limit=1)
    with pytest.raises(ValueError, match="nothing to range"):
        await store.select(NOTES, "acme", equal={"note_id": "n", "seq": 1}, start=1, limit=1)
    for limit in (0, MAX_ROWS + 1):
        with pytest.raises(ValueError, match="limit"):
            await store.select(NOTES, "acme", limit=limit)
    with pytest.raises(ValueError, match="tenant"):
        await store.select(NOTES, "", limit=1)


async def test_a_changed_schema_resets_the_projection(store: SqliteProjectionStore) -> None:
    assert await store.register(SCHEMA) is True
    await _write(store, _note("acme", "n1", 1), offset=7)
    assert await store.register(SCHEMA) is False, "same fingerprint: keep everything"
    assert await store.offsets("notes") == {TP: 7}
    assert await store.register(ProjectionSchema("notes", 2, (NOTES,))) is True
    assert await store.offsets("notes") == {}
    assert await store.scan(NOTES) == []


async def test_a_table_lost_outside_the_store_resets_the_projection(store: SqliteProjectionStore) -> None:
    await store.register(SCHEMA)
    await _write(store, _note("acme", "n1", 1), offset=7)
    if isinstance(store, SqliteProjectionStore):
        with sqlite3.connect(store.path) as db:
            db.execute("DROP TABLE notes")
    else:
        await store._ddl("DROP TABLE {ks}.notes")  # type: ignore[attr-defined]
    assert await store.register(SCHEMA) is True, "offsets without their rows would be a lie"
    assert await store.offsets("notes") == {}
    assert await store.scan(NOTES) == []


async def test_reset_drops_rows_and_offsets(store: SqliteProjectionStore) -> None:
    await store.register(SCHEMA)
    await _write(store, _note("acme", "n1", 1), offset=3)
    await store.reset(SCHEMA)
    assert await store.scan(NOTES) == []
    assert await store.offsets("notes") == {}


async def test_two_projections_cannot_own_one_table(store: SqliteProjectionStore) -> None:
    await store.register(SCHEMA)
    with pytest.raises(ConfigError, match="belongs to notes"):
        await store.register(ProjectionSchema("other", 1, (NOTES,)))
    reserved = Table("projection_offsets", columns={"tenant_id": "text"}, key=("tenant_id",))
    with pytest.raises(ConfigError, match="store's own"):
        await store.register(ProjectionSchema("sneaky", 1, (reserved,)))


async def test_the_store_schema_is_versioned_and_migrated_once(tmp_path: Path) -> None:
    path = tmp_path / "views.db"
    first = SqliteProjectionStore(path)
    await first.close()
    again = SqliteProjectionStore(path)  # opening twice must not re-run migrations
    await again.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_wait_for_returns_once_the_offset_is_applied(store: SqliteProjectionStore) -> None:
    await store.register(SCHEMA)
    waiting = asyncio.create_task(store.wait_for("notes", TP, 4, timeout_s=5))
    await asyncio.sleep(0.01)
    await _write(store, _note("acme", "n1", 1), offset=4)  # offsets 0..3 applied
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await _write(store, _note("acme", "n1", 2), offset=5)
    await asyncio.wait_for(waiting, 1)
    with pytest.raises(ProjectionLagging):
        await store.wait_for("notes", TP, 5, timeout_s=0.05)


async def test_open_store_picks_the_backend_by_url(tmp_path: Path) -> None:
    store = open_store(f"sqlite://{tmp_path}/v.db?synchronous=full")
    assert isinstance(store, SqliteProjectionStore)
    assert store.url == f"sqlite://{tmp_path}/v.db"
    await store.close()
    for url in ("sqlite://", "cassandra://127.0.0.1:9042", "cassandra://h:port/v", "views.db"):
        with pytest.raises(ConfigError):
            open_store(url)
    with pytest.raises(ConfigError, match="unknown options"):
        open_store("cassandra://127.0.0.1:9042/views?consistency=one")
    with pytest.raises(ConfigError, match="synchronous"):
        open_store(f"sqlite://{tmp_path}/v.db?synchronous=sometimes")
