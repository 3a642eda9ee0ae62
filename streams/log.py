"""The event log interface: topics of partitioned, offset-addressed records.

Two backends implement it, chosen by URL (see `streams.backends`): SQLite for one
machine and Apache Kafka at scale. The contract tests in `tests/contract/` hold both to
the same behaviour.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import NamedTuple

from streams.progress import Progress

Headers = tuple[tuple[str, bytes], ...]


class TopicPartition(NamedTuple):
    """One partition of one topic."""

    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    """A record to append. With `partition` None, the key decides it (Kafka's rule)."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers = ()
    partition: int | None = None


@dataclass(frozen=True, slots=True)
class LogRecord:
    """A record read back from the log, with its position."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers
    timestamp_ms: int

    @property
    def position(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create: its name and number of partitions."""

    name: str
    partitions: int = 1


@dataclass(frozen=True)
class TopicStats:
    """A topic as it is now: partitions and the end offset of each."""

    name: str
    partitions: int
    end_offsets: dict[int, int] = field(default_factory=dict)
    records: int = 0
    """Records in the topic. On Kafka this counts offsets, which transaction markers use too."""


class GroupConsumer(ABC):
    """A member of a consumer group: reads its partitions and commits exactly once.

    `commit` appends the output records and moves the group's committed progress in one
    atomic step (a SQLite transaction; a Kafka transaction), so a crash either keeps
    both or neither: outputs are never lost and never duplicated. Progress may include
    records done out of order (`done_ahead`, see `streams.progress`).
    """

    group: str
    max_done_ahead_gaps: int | None = None
    """How many not-yet-done records a partition's progress can carry past its committed
    offset, or None for no limit. A worker stops reading a partition that reaches it."""

    @abstractmethod
    async def start(self) -> None:
        """Join the group; reading resumes at the group's committed offsets."""

    @abstractmethod
    async def poll(self, max_records: int, timeout_s: float) -> list[LogRecord]:
        """Up to `max_records` records after the current position, waiting up to `timeout_s`."""

    @abstractmethod
    async def commit(
        self,
        outputs: Sequence[OutgoingRecord],
        consumed: Mapping[TopicPartition, int],
        done_ahead: Mapping[TopicPartition, AbstractSet[int]] | None = None,
    ) -> None:
        """Atomically append `outputs` and set committed offsets to `consumed` (next offsets),
        with `done_ahead` the records past them that are done too (none if not given)."""

    @abstractmethod
    async def rewind(self) -> None:
        """Move the read position back to the committed offsets (after a failed batch)."""

    @abstractmethod
    async def committed(self, tp: TopicPartition) -> int:
        """The group's committed offset (the next one to read) for a partition."""

    async def progress(self, tp: TopicPartition) -> Progress:
        """The group's committed progress in a partition, done-ahead records included."""
        return Progress(await self.committed(tp))

    def pause(self, tps: AbstractSet[TopicPartition]) -> None:
        """Stop returning records of these partitions from `poll` until `resume`."""

    def resume(self, tps: AbstractSet[TopicPartition]) -> None:
        """Return records of these partitions from `poll` again."""

    def assigned(self) -> frozenset[TopicPartition] | None:
        """The partitions this member reads now, or None when it reads all of them (the
        only member). Consumers that keep state across polls compare it between polls:
        a change means partitions moved to or from another member."""
        return None

    @abstractmethod
    async def stop(self) -> None:
        """Leave the group; uncommitted work will be redone by whoever takes over."""


class EventLog(ABC):
    """An append-only, partitioned log of records, addressed by (topic, partition, offset)."""

    url: str

    @abstractmethod
    async def create_topic(self, spec: TopicSpec) -> None:
        """Create a topic; creating an existing one with the same partitions is a no-op."""

    @abstractmethod
    async def partitions(self, topic: str) -> int:
        """Partition count of a topic; raises `TopicNotFound`."""

    @abstractmethod
    async def topics(self) -> list[TopicStats]:
        """Every topic with its end offsets and record count."""

    @abstractmethod
    async def append(self, records: Sequence[OutgoingRecord]) -> list[tuple[TopicPartition, int]]:
        """Append records durably, in order per partition; returns each one's position."""

    @abstractmethod
    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[LogRecord]:
        """Up to `limit` committed records of one partition starting at `offset`."""

    async def read_key(self, topic: str, partition: int, key: bytes, from_offset: int = 0) -> list[LogRecord]:
        """Every committed record of one partition with this key, from `from_offset` on.

        The default scans the partition; backends with an index on keys override it.
        """
        end = await self.end_offset(topic, partition)
        found: list[LogRecord] = []
        offset = from_offset
        while offset < end:
            batch = await self.read(topic, partition, offset, 5000)
            if not batch:
                break
            found.extend(r for r in batch if r.key == key)
            offset = batch[-1].offset + 1
        return found

    @abstractmethod
    async def end_offset(self, topic: str, partition: int) -> int:
        """The offset the next record appended to the partition will take."""

    @abstractmethod
    def consumer(
        self, group: str, topics: Sequence[str], *, member: str = "0", members: int = 1
    ) -> GroupConsumer:
        """A group member for `topics`. `member` names it stably across restarts.

        `members` is how many members the deployment runs. A backend without group
        coordination (SQLite) then gives member `i` (its name is its index, "0" to
        "members - 1") the partitions `p` with `p % members == i`; Kafka ignores it and
        spreads partitions among whoever joins."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and files."""

    async def __aenter__(self) -> EventLog:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
