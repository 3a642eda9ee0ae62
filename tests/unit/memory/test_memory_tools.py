"""The memory tools and the writer: a memory_write call becomes one MemoryWritten event."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("numpy", reason="semantic memory needs numpy: install the memory extra")

from handlers.tools.base import ToolContext, ToolError, ToolRegistry, canonical_json
from handlers.tools.memory import MemoryWriter, memory_tools, memory_written_for
from projections.embeddings import HashingEmbedder
from projections.memory import MemoryProjection, SqliteMemoryIndex
from projections.stores.sqlite import SqliteProjectionStore
from streams.envelope import root_meta
from streams.events import MemoryWritten, ObservationRecorded
from streams.log import LogRecord
from streams.worker import HandlerContext
from tests.support.projections import apply_events

pytestmark = pytest.mark.unit


def ctx(tenant: str = "acme", key: str = "k1", run: str = "run-1") -> ToolContext:
    return ToolContext(run_id=run, tenant_id=tenant, tool_call_id="call-1", idempotency_key=key)


def observation(
    data: object, *, tenant: str = "acme", run: str = "run-1", ok: bool = True
) -> ObservationRecorded:
    return ObservationRecorded(
        meta=root_meta(run, tenant, "tool-executor"),
        step=1,
        tool_call_id="call-1",
        tool="memory_write",
        ok=ok,
        data_json=canonical_json(data),  # type: ignore[arg-type]
    )


async def test_tools_validate_and_write_is_deterministic(tmp_path: Path) -> None:
    embedder = HashingEmbedder(64)
    index = SqliteMemoryIndex(tmp_path / "m.db", embedder.dim)
    registry = ToolRegistry(memory_tools(index, embedder))
    assert registry.validate("memory_write", {"text": "x", "tags": ["a"]}) == []
    assert registry.validate("memory_write", {"text": ""})
    assert registry.validate("memory_write", {"text": "x", "tenant": "evil"})
    assert registry.validate("memory_search", {"query": "x", "k": 500})
    write = registry.get("memory_write")
    first = await write.run({"text": " likes tea ", "tags": ["b", "a", "a"]}, ctx())
    again = await write.run({"text": " likes tea ", "tags": ["b", "a", "a"]}, ctx())
    assert first == again
    assert isinstance(first.data, dict)
    assert first.data["text"] == "likes tea" and first.data["tags"] == ["a", "b"]
    assert first.data["namespace"] == "default"
    other = await write.run({"text": "likes tea"}, ctx(key="k2"))
    assert isinstance(other.data, dict) and other.data["memory_id"] != first.data["memory_id"]
    with pytest.raises(ToolError):
        await write.run({"text": "   "}, ctx())
    await index.close()


async def test_a_write_becomes_an_event_and_then_a_searchable_memory(tmp_path: Path) -> None:
    embedder = HashingEmbedder(64)
    index = SqliteMemoryIndex(tmp_path / "m.db", embedder.dim)
    write, search = memory_tools(index, embedder)
    result = await write.run({"text": "the deploy key rotates every monday", "tags": ["ops"]}, ctx())
    obs = observation(result.data)
    record = LogRecord("t.events", 0, 7, b"run-1", b"", (), 0)
    [event] = await MemoryWriter().handle(obs, HandlerContext("memory-writer", record, obs, 1))
    assert isinstance(event, MemoryWritten)
    assert event.meta.causation_id == obs.meta.event_id and event.meta.tenant_id == "acme"
    assert isinstance(result.data, dict) and event.memory_id == result.data["memory_id"]
    # a second delivery of the same observation yields the same event id
    [same] = await MemoryWriter().handle(obs, HandlerContext("memory-writer", record, obs, 2))
    assert same.meta.event_id == event.meta.event_id

    store = SqliteProjectionStore(tmp_path / "views.db")
    await apply_events(store, [MemoryProjection(index, embedder)], [event])
    found = await search.run({"query": "when does the deploy key rotate", "k": 3}, ctx())
    assert isinstance(found.data, list) and len(found.data) == 1
    [hit] = found.data
    assert isinstance(hit, dict)
    assert hit["memory_id"] == event.memory_id
    assert hit["source_event_id"] == event.meta.event_id and hit["source_run_id"] == "run-1"
    # another tenant's run finds nothing
    assert (await search.run({"query": "deploy key"}, ctx(tenant="globex"))).data == []
    await store.close()
    await index.close()


def test_only_successful_memory_writes_become_events() -> None:
    meta = root_meta("r", "acme", "memory-writer")
    assert (
        memory_written_for(
            observation({"memory_id": "m", "namespace": "default", "text": "t"}, ok=False), meta
        )
        is None
    )
    assert memory_written_for(observation({"unexpected": 1}), meta) is None
    bad = observation({"memory_id": "m", "namespace": "default", "text": "t"})
    other_tool = bad.model_copy(update={"tool": "calculator"})
    assert memory_written_for(other_tool, meta) is None
    event = memory_written_for(bad, meta)
    assert event is not None and event.text == "t" and event.tags == []
