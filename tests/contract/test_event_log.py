"""The EventLog contract, run against SQLite and Kafka."""

from __future__ import annotations

import pytest

from streams.errors import ConfigError, TopicNotFound
from streams.log import EventLog, OutgoingRecord, TopicPartition, TopicSpec
from streams.partitioning import partition_for
from tests.support.backends import Backend


async def test_create_topic_is_idempotent_and_checks_partitions(backend: Backend, log: EventLog) -> None:
    spec = TopicSpec(f"{backend.topics.prefix}.extra", 2)
    await log.create_topic(spec)
    await log.create_topic(spec)
    assert await log.partitions(spec.name) == 2
    with pytest.raises(ConfigError):
        await log.create_topic(TopicSpec(spec.name, 5))
    with pytest.raises(ConfigError):
        await log.create_topic(TopicSpec(f"{backend.topics.prefix}.zero", 0))


async def test_unknown_topic_is_a_clear_error(backend: Backend, log: EventLog) -> None:
    with pytest.raises(TopicNotFound):
        await log.partitions(f"{backend.topics.prefix}.missing")


async def test_append_then_read_from_any_offset(backend: Backend, log: EventLog) -> None:
    topic = backend.topics.events
    records = [
        OutgoingRecord(topic, b"run-1", f"v{i}".encode(), (("h", bytes([i])),), partition=1)
        for i in range(10)
    ]
    positions = await log.append(records)
    assert [offset for _, offset in positions] == list(range(10))
    assert {tp for tp, _ in positions} == {TopicPartition(topic, 1)}
    assert await log.end_offset(topic, 1) == 10

    got = await log.read(topic, 1, 0, 100)
    assert [r.value for r in got] == [f"v{i}".encode() for i in range(10)]
    assert [r.offset for r in got] == list(range(10))
    assert got[3].key == b"run-1"
    assert got[3].header("h") == b"\x03"
    assert got[0].timestamp_ms > 0

    middle = await log.read(topic, 1, 4, 3)
    assert [r.value for r in middle] == [b"v4", b"v5", b"v6"]
    assert await log.read(topic, 1, 10, 5) == []
    assert await log.read(topic, 0, 0, 5) == []


async def test_a_key_always_lands_in_the_same_partition(backend: Backend, log: EventLog) -> None:
    topic = backend.topics.events
    keys = [f"run-{i}".encode() for i in range(20)]
    positions = await log.append([OutgoingRecord(topic, k, b"x") for k in keys for _ in range(3)])
    by_key: dict[bytes, set[int]] = {}
    for (tp, _), key in zip(positions, [k for k in keys for _ in range(3)], strict=True):
        by_key.setdefault(key, set()).add(tp.partition)
    for key, partitions in by_key.items():
        assert partitions == {partition_for(key, 3)}, key
    assert len({p for ps in by_key.values() for p in ps}) > 1, "keys should spread"


async def test_order_within_a_partition_follows_append_order(backend: Backend, log: EventLog) -> None:
    topic = backend.topics.events
    for batch in range(5):
        await log.append(
            [OutgoingRecord(topic, b"k", f"{batch}-{i}".encode(), partition=0) for i in range(20)]
        )
    values = [r.value.decode() for r in await log.read(topic, 0, 0, 1000)]
    assert values == [f"{b}-{i}" for b in range(5) for i in range(20)]


async def test_topics_lists_partitions_and_counts(backend: Backend, log: EventLog) -> None:
    await log.append([OutgoingRecord(backend.topics.events, b"k", b"x", partition=2)] * 4)
    stats = {s.name: s for s in await log.topics()}
    events = stats[backend.topics.events]
    assert events.partitions == 3
    assert events.end_offsets[2] == 4
    assert events.records == 4
    assert stats[backend.topics.dlq].partitions == 1


async def test_group_resumes_at_committed_offsets(backend: Backend, log: EventLog) -> None:
    topic = backend.topics.events
    await log.append([OutgoingRecord(topic, b"k", str(i).encode(), partition=0) for i in range(6)])
    group = f"{backend.topics.prefix}.g"
    consumer = log.consumer(group, [topic])
    await consumer.start()
    first = await _poll_until(consumer, 6)
    assert [r.value for r in first] == [str(i).encode() for i in range(6)]
    await consumer.commit([], {TopicPartition(topic, 0): 4})
    await consumer.stop()

    again = log.consumer(group, [topic])
    await again.start()
    rest = await _poll_until(again, 2)
    assert [r.value for r in rest] == [b"4", b"5"]
    assert await again.committed(TopicPartition(topic, 0)) == 4
    await again.stop()


async def test_commit_appends_outputs_and_offsets_atomically(backend: Backend, log: EventLog) -> None:
    topic, out = backend.topics.events, backend.topics.tasks
    await log.append([OutgoingRecord(topic, b"k", b"in", partition=0)])
    group = f"{backend.topics.prefix}.atomic"
    consumer = log.consumer(group, [topic])
    await consumer.start()
    (record,) = await _poll_until(consumer, 1)
    await consumer.commit(
        [OutgoingRecord(out, b"k", b"out-1", partition=0), OutgoingRecord(out, b"k", b"out-2", partition=0)],
        {record.position: record.offset + 1},
    )
    assert [r.value for r in await log.read(out, 0, 0, 10)] == [b"out-1", b"out-2"]
    assert await consumer.committed(record.position) == 1
    await consumer.stop()


async def test_rewind_redelivers_an_uncommitted_batch(backend: Backend, log: EventLog) -> None:
    topic = backend.topics.events
    await log.append([OutgoingRecord(topic, b"k", str(i).encode(), partition=0) for i in range(3)])
    consumer = log.consumer(f"{backend.topics.prefix}.rewind", [topic])
    await consumer.start()
    assert len(await _poll_until(consumer, 3)) == 3
    await consumer.rewind()
    assert [r.value for r in await _poll_until(consumer, 3)] == [b"0", b"1", b"2"]
    await consumer.stop()


async def test_poll_returns_empty_when_idle(backend: Backend, log: EventLog) -> None:
    consumer = log.consumer(f"{backend.topics.prefix}.idle", [backend.topics.tasks])
    await consumer.start()
    await _poll_until(consumer, 0)
    assert await consumer.poll(10, 0.2) == []
    await consumer.stop()


async def _poll_until(consumer, count: int, tries: int = 100):  # type: ignore[no-untyped-def]
    records = []
    for _ in range(tries):
        if len(records) >= count and count > 0:
            break
        records += await consumer.poll(100, 0.2)
        if count == 0 and not records:
            break
    return records
