"""One process's place among the members of a deployment.

`agentstream serve --processes N` (and `--members`) runs several processes, each a member
of every consumer group of the agent loop. A member is named by its index; `MemberLog`
hands that membership to every consumer the hosted workers open, so on SQLite each
process reads only its static share of the partitions (Kafka spreads them itself).
"""

from __future__ import annotations

from collections.abc import Sequence

from streams.errors import ConfigError
from streams.log import (
    EventLog,
    GroupConsumer,
    LogRecord,
    OutgoingRecord,
    TopicPartition,
    TopicSpec,
    TopicStats,
)


def check_membership(member: str, members: int) -> None:
    """Refuse a member name that cannot be member `member` of `members`."""
    if members < 1:
        raise ConfigError(f"--members must be at least 1, not {members}")
    if members > 1 and (not member.isdigit() or int(member) >= members):
        raise ConfigError(f"with {members} members, --member is this process's index, 0 to {members - 1}")


def is_leader(member: str, members: int) -> bool:
    """Whether this member runs what a deployment needs once: the projector and the
    approval timer. The only member does; of several, member 0."""
    return members == 1 or member == "0"


class MemberLog(EventLog):
    """An event log whose consumers are all member `member` of `members` of their groups.

    Everything else goes straight to the wrapped log.
    """

    def __init__(self, log: EventLog, member: str, members: int) -> None:
        check_membership(member, members)
        self.inner = log
        self.url = log.url
        self.member = member
        self.members = members

    def consumer(
        self, group: str, topics: Sequence[str], *, member: str = "0", members: int = 1
    ) -> GroupConsumer:
        return self.inner.consumer(group, topics, member=self.member, members=self.members)

    async def create_topic(self, spec: TopicSpec) -> None:
        await self.inner.create_topic(spec)

    async def partitions(self, topic: str) -> int:
        return await self.inner.partitions(topic)

    async def topics(self) -> list[TopicStats]:
        return await self.inner.topics()

    async def append(self, records: Sequence[OutgoingRecord]) -> list[tuple[TopicPartition, int]]:
        return await self.inner.append(records)

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[LogRecord]:
        return await self.inner.read(topic, partition, offset, limit)

    async def read_key(self, topic: str, partition: int, key: bytes, from_offset: int = 0) -> list[LogRecord]:
        return await self.inner.read_key(topic, partition, key, from_offset)

    async def end_offset(self, topic: str, partition: int) -> int:
        return await self.inner.end_offset(topic, partition)

    async def close(self) -> None:
        await self.inner.close()
