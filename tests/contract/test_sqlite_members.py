"""Consumer groups with several members on a SQLite log: a static share of partitions each."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agentstream.membership import MemberLog, is_leader
from streams.errors import ConfigError, EventLogError
from streams.log import OutgoingRecord, TopicPartition, TopicSpec
from streams.sqlite_log import SqliteEventLog, SqliteGroupConsumer

TOPICS = ["t.events", "t.tasks"]
PARTITIONS = 5


@pytest.fixture
async def log(tmp_path: Path) -> SqliteEventLog:
    opened = SqliteEventLog(tmp_path / "log.db")
    for name in TOPICS:
        await opened.create_topic(TopicSpec(name, PARTITIONS))
    return opened


async def _started(log: SqliteEventLog, member: int, members: int) -> SqliteGroupConsumer:
    consumer = log.consumer("g", TOPICS, member=str(member), members=members)
    assert isinstance(consumer, SqliteGroupConsumer)
    await consumer.start(lock_timeout_s=0.2)
    return consumer


async def test_member_i_of_n_owns_the_partitions_p_mod_n_equal_to_i(log: SqliteEventLog) -> None:
    members = 3
    consumers = [await _started(log, i, members) for i in range(members)]
    shares = [c.assigned() or frozenset() for c in consumers]
    for i, share in enumerate(shares):
        assert share == {TopicPartition(t, p) for t in TOPICS for p in range(PARTITIONS) if p % members == i}
    assert set().union(*shares) == {TopicPartition(t, p) for t in TOPICS for p in range(PARTITIONS)}
    for c in consumers:
        await c.stop()


async def test_each_member_reads_only_its_partitions_and_commits_its_offsets(log: SqliteEventLog) -> None:
    await log.append(
        [OutgoingRecord("t.events", None, f"{p}".encode(), partition=p) for p in range(PARTITIONS)]
    )
    first, second = await _started(log, 0, 2), await _started(log, 1, 2)
    got = {i: await c.poll(100, 0.01) for i, c in enumerate((first, second))}
    assert sorted(r.partition for r in got[0]) == [0, 2, 4]
    assert sorted(r.partition for r in got[1]) == [1, 3]
    await first.commit([], {r.position: r.offset + 1 for r in got[0]})
    await first.stop()
    again = await _started(log, 0, 2)
    assert await again.poll(100, 0.01) == [], "member 0 resumes after what it committed"
    await second.rewind()
    assert sorted(r.partition for r in await second.poll(100, 0.01)) == [1, 3], "member 1 committed nothing"
    await again.stop()
    await second.stop()


async def test_the_only_member_owns_everything_and_reports_no_assignment(log: SqliteEventLog) -> None:
    only = await _started(log, 0, 1)
    assert only.assigned() is None
    with pytest.raises(EventLogError, match="held by another process"):
        await _started(log, 1, 2)
    await only.stop()
    member = await _started(log, 1, 2)
    await member.stop()


async def test_members_of_different_counts_never_share_a_partition(log: SqliteEventLog) -> None:
    # Member 0 of 2 (partitions 0, 2, 4) and member 2 of 4 (partition 2) overlap on 2.
    held = await _started(log, 0, 2)
    with pytest.raises(EventLogError, match="partition 2"):
        await _started(log, 2, 4)
    disjoint = await _started(log, 1, 4)  # partition 1: none of member 0 of 2's
    await held.stop()
    await disjoint.stop()


async def test_a_member_of_more_members_than_partitions_reads_nothing(log: SqliteEventLog) -> None:
    await log.append([OutgoingRecord("t.events", None, b"x", partition=p) for p in range(PARTITIONS)])
    idle = await _started(log, PARTITIONS, PARTITIONS + 1)
    assert idle.assigned() == frozenset()
    assert await idle.poll(10, 0.01) == []
    await idle.stop()


async def test_a_lock_is_released_when_its_holder_stops(log: SqliteEventLog) -> None:
    first = await _started(log, 1, 2)
    waiting = asyncio.create_task(_started(log, 1, 2))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await first.stop()
    await (await waiting).stop()


@pytest.mark.parametrize(("member", "members"), [("2", 2), ("x", 2), ("-1", 3), ("0", 0)])
def test_a_member_that_cannot_be_one_of_members_is_refused(
    log: SqliteEventLog, member: str, members: int
) -> None:
    with pytest.raises(ConfigError):
        log.consumer("g", TOPICS, member=member, members=members)
    with pytest.raises(ConfigError):
        MemberLog(log, member, members)


async def test_member_log_opens_every_consumer_as_its_member(log: SqliteEventLog) -> None:
    wrapped = MemberLog(log, "1", 2)
    consumer = wrapped.consumer("g", TOPICS, member="whatever")
    await consumer.start()
    assert consumer.assigned() == frozenset(TopicPartition(t, p) for t in TOPICS for p in (1, 3))
    await consumer.stop()


def test_the_only_member_or_member_zero_leads() -> None:
    assert is_leader("pod-a", 1)
    assert is_leader("0", 3)
    assert not is_leader("1", 3)
