"""The event log on Apache Kafka, through aiokafka (`kafka://host:port[,host:port]`).

Exactly-once processing uses Kafka transactions: each group member owns a transactional
producer whose id is stable across restarts (`<group>.<member>`), so a restarted member
fences its dead predecessor, aborting whatever transaction that one left open. Output
records and the consumed offsets commit in one transaction; consumers read with
`isolation_level=read_committed`, so aborted outputs are never seen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from streams.errors import ConfigError, EventLogError, TopicNotFound
from streams.log import (
    EventLog,
    GroupConsumer,
    LogRecord,
    OutgoingRecord,
    TopicPartition,
    TopicSpec,
    TopicStats,
)
from streams.partitioning import partition_for
from streams.progress import Progress, decode_done_ahead, encode_done_ahead

try:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
    from aiokafka import TopicPartition as KafkaTP
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError, ProducerFenced, TopicAlreadyExistsError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the Kafka backend needs aiokafka: pip install 'agentstream[kafka]'") from exc

_TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno


def _translate(exc: BaseException, what: str) -> EventLogError:
    if isinstance(exc, ProducerFenced):
        return EventLogError(f"{what}: another member took over this producer ({exc})", retryable=False)
    retryable = bool(getattr(exc, "retriable", False)) or isinstance(exc, asyncio.TimeoutError)
    return EventLogError(f"{what}: {type(exc).__name__}: {exc}", retryable=retryable)


class KafkaEventLog(EventLog):
    """The event log on a Kafka cluster. Records are written with acks=all, idempotently."""

    def __init__(self, bootstrap: str, *, client_id: str = "agentstream", replication_factor: int = 1):
        if not bootstrap:
            raise ConfigError("kafka:// URL needs host:port")
        self.bootstrap = bootstrap
        self.url = f"kafka://{bootstrap}"
        self.client_id = client_id
        self.replication_factor = replication_factor
        self._admin: AIOKafkaAdminClient | None = None
        self._producer: AIOKafkaProducer | None = None
        self._reader: AIOKafkaConsumer | None = None
        self._partition_counts: dict[str, int] = {}
        # One reader consumer serves every read; reads assign and seek it, so they take turns.
        self._read_lock = asyncio.Lock()

    async def _admin_client(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=self.client_id)
            try:
                await admin.start()
            except KafkaError as exc:
                raise _translate(exc, f"cannot reach Kafka at {self.bootstrap}") from exc
            self._admin = admin
        return self._admin

    async def _reader_client(self) -> AIOKafkaConsumer:
        if self._reader is None:
            reader = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                client_id=self.client_id,
                enable_auto_commit=False,
                isolation_level="read_committed",
                auto_offset_reset="earliest",
                fetch_max_wait_ms=5,
                # Every read re-assigns this consumer: its background fetcher must notice at
                # once, not after its default 200 ms idle wait (or 100 ms backoff).
                consumer_timeout_ms=5,
                retry_backoff_ms=5,
            )
            try:
                await reader.start()
            except KafkaError as exc:
                raise _translate(exc, f"cannot reach Kafka at {self.bootstrap}") from exc
            self._reader = reader
        return self._reader

    async def create_topic(self, spec: TopicSpec) -> None:
        if spec.partitions < 1:
            raise ConfigError(f"topic {spec.name!r} needs at least one partition")
        admin = await self._admin_client()
        try:
            response = await admin.create_topics(
                [NewTopic(spec.name, spec.partitions, self.replication_factor)], timeout_ms=30000
            )
        except KafkaError as exc:
            raise _translate(exc, f"creating topic {spec.name}") from exc
        for name, code, *rest in response.topic_errors:
            if code == _TOPIC_ALREADY_EXISTS:
                existing = await self.partitions(name)
                if existing != spec.partitions:
                    raise ConfigError(
                        f"topic {name!r} exists with {existing} partitions, not {spec.partitions}"
                    )
            elif code != 0:
                raise EventLogError(f"creating topic {name} failed: error {code} {rest}")
        # Metadata propagates asynchronously; wait until the topic is visible.
        deadline = time.monotonic() + 30
        while True:
            try:
                if await self.partitions(spec.name) == spec.partitions:
                    return
            except TopicNotFound:
                pass
            if time.monotonic() > deadline:
                raise EventLogError(f"topic {spec.name} did not appear in metadata", retryable=True)
            self._partition_counts.pop(spec.name, None)
            await asyncio.sleep(0.1)

    async def _describe(self, names: list[str]) -> dict[str, int]:
        admin = await self._admin_client()
        try:
            described = await admin.describe_topics(names)
        except KafkaError as exc:
            raise _translate(exc, "describing topics") from exc
        counts: dict[str, int] = {}
        for topic in described:
            if topic.get("error_code", 0) == 0 and topic.get("partitions"):
                counts[topic["topic"]] = len(topic["partitions"])
        return counts

    async def partitions(self, topic: str) -> int:
        count = self._partition_counts.get(topic)
        if count is None:
            counts = await self._describe([topic])
            if topic not in counts:
                raise TopicNotFound(f"topic {topic!r} does not exist on {self.bootstrap}")
            count = self._partition_counts[topic] = counts[topic]
        return count

    async def topics(self) -> list[TopicStats]:
        admin = await self._admin_client()
        names = sorted(n for n in await admin.list_topics() if not n.startswith("__"))
        counts = await self._describe(names) if names else {}
        reader = await self._reader_client()
        stats = []
        for name in names:
            tps = [KafkaTP(name, p) for p in range(counts.get(name, 0))]
            async with self._read_lock:
                begin = await reader.beginning_offsets(tps) if tps else {}
                end = await reader.end_offsets(tps) if tps else {}
            ends = {tp.partition: int(end[tp]) for tp in tps}
            records = sum(int(end[tp]) - int(begin[tp]) for tp in tps)
            stats.append(TopicStats(name, len(tps), ends, records))
        return stats

    async def _producer_client(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                client_id=self.client_id,
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
            )
            try:
                await producer.start()
            except KafkaError as exc:
                raise _translate(exc, f"cannot reach Kafka at {self.bootstrap}") from exc
            self._producer = producer
        return self._producer

    async def _partition_of(self, record: OutgoingRecord) -> int:
        if record.partition is not None:
            return record.partition
        if record.key is None:
            return 0
        return partition_for(record.key, await self.partitions(record.topic))

    async def append(self, records: Sequence[OutgoingRecord]) -> list[tuple[TopicPartition, int]]:
        producer = await self._producer_client()
        try:
            futures = [
                await producer.send(
                    r.topic,
                    r.value,
                    key=r.key,
                    partition=await self._partition_of(r),
                    headers=list(r.headers) or None,
                )
                for r in records
            ]
            results = await asyncio.gather(*futures)
        except KafkaError as exc:
            raise _translate(exc, "appending") from exc
        return [(TopicPartition(m.topic, m.partition), int(m.offset)) for m in results]

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[LogRecord]:
        async with self._read_lock:
            return await self._read(topic, partition, offset, limit)

    async def _read(self, topic: str, partition: int, offset: int, limit: int) -> list[LogRecord]:
        reader = await self._reader_client()
        tp = KafkaTP(topic, partition)
        await self.partitions(topic)
        reader.assign([tp])
        end = (await reader.end_offsets([tp]))[tp]
        if offset >= end:
            return []
        reader.seek(tp, offset)
        out: list[LogRecord] = []
        deadline = time.monotonic() + 30
        # Transaction markers take offsets but are never returned; the position moves past
        # them once their batch is fetched, so wait in short steps until it reaches the end
        # (a read that ends on a marker costs one short broker wait, not a long poll).
        while len(out) < limit and time.monotonic() < deadline:
            batch = await reader.getmany(tp, timeout_ms=5, max_records=limit - len(out))
            out.extend(_to_record(msg) for msg in batch.get(tp, []))
            if await reader.position(tp) >= end:
                break
        return out[:limit]

    async def end_offset(self, topic: str, partition: int) -> int:
        async with self._read_lock:
            reader = await self._reader_client()
            tp = KafkaTP(topic, partition)
            return int((await reader.end_offsets([tp]))[tp])

    def consumer(
        self, group: str, topics: Sequence[str], *, member: str = "0", members: int = 1
    ) -> GroupConsumer:
        # The group coordinator spreads partitions among the members that join: `members` is moot.
        return KafkaGroupConsumer(self, group, list(topics), member)

    async def close(self) -> None:
        for client in (self._producer, self._reader):
            if client is not None:
                await client.stop()
        if self._admin is not None:
            await self._admin.close()
        self._producer = self._reader = self._admin = None


def _with_progress(offset: int, done_ahead: AbstractSet[int] | None) -> tuple[int, str]:
    return offset, encode_done_ahead(offset, done_ahead or ())


def _to_record(msg: Any) -> LogRecord:
    return LogRecord(
        msg.topic,
        msg.partition,
        int(msg.offset),
        msg.key,
        msg.value,
        tuple((str(k), bytes(v)) for k, v in (msg.headers or ())),
        int(msg.timestamp),
    )


class _Revocations(ConsumerRebalanceListener):  # type: ignore[misc]
    """Counts rebalances so a batch polled before one is never committed after it."""

    def __init__(self) -> None:
        self.generation = 0

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.generation += 1

    async def on_partitions_assigned(self, assigned: Any) -> None:
        pass


class KafkaGroupConsumer(GroupConsumer):
    """A consumer-group member with a transactional producer for exactly-once commits."""

    # Progress rides in the offset commit's metadata, which brokers cap at 4 KiB by default;
    # a few bytes per record in flight keeps 500 well inside it.
    max_done_ahead_gaps = 500

    def __init__(self, log: KafkaEventLog, group: str, topics: list[str], member: str) -> None:
        self.log = log
        self.group = group
        self.topics = topics
        self.member = member
        self._listener = _Revocations()
        self._polled_generation = 0
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=log.bootstrap,
            client_id=f"{log.client_id}.{group}.{member}",
            group_id=group,
            group_instance_id=f"{group}.{member}",
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            session_timeout_ms=10000,
            # Outputs become readable when their transaction commits; a broker that parked
            # the fetch does not always answer at once then, so it parks it briefly.
            fetch_max_wait_ms=20,
        )
        self._producer = AIOKafkaProducer(
            bootstrap_servers=log.bootstrap,
            client_id=f"{log.client_id}.{group}.{member}.tx",
            transactional_id=f"{group}.{member}",
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            # A transaction begun right after the last one ended is refused until the
            # broker has written the last one's markers (CONCURRENT_TRANSACTIONS), and
            # retried after this backoff: the default 100 ms would add that to a step.
            retry_backoff_ms=5,
        )

    async def start(self) -> None:
        try:
            await self._producer.start()
            self._consumer.subscribe(self.topics, listener=self._listener)
            await self._consumer.start()
        except KafkaError as exc:
            raise _translate(exc, f"joining group {self.group}") from exc

    async def poll(self, max_records: int, timeout_s: float) -> list[LogRecord]:
        try:
            batches = await self._consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as exc:
            raise _translate(exc, f"polling {self.group}") from exc
        self._polled_generation = self._listener.generation
        return [_to_record(msg) for msgs in batches.values() for msg in msgs]

    async def commit(
        self,
        outputs: Sequence[OutgoingRecord],
        consumed: Mapping[TopicPartition, int],
        done_ahead: Mapping[TopicPartition, AbstractSet[int]] | None = None,
    ) -> None:
        ahead = done_ahead or {}
        if self._listener.generation != self._polled_generation:
            await self.rewind()
            raise EventLogError(f"{self.group}: partitions were reassigned mid-batch", retryable=True)
        try:
            async with self._producer.transaction():
                futures = [
                    await self._producer.send(
                        r.topic,
                        r.value,
                        key=r.key,
                        partition=await self.log._partition_of(r),
                        headers=list(r.headers) or None,
                    )
                    for r in outputs
                ]
                await self._producer.send_offsets_to_transaction(
                    {
                        KafkaTP(tp.topic, tp.partition): _with_progress(offset, ahead.get(tp))
                        for tp, offset in consumed.items()
                    },
                    self.group,
                )
            await asyncio.gather(*futures)
        except KafkaError as exc:
            raise _translate(exc, f"committing {self.group}") from exc

    async def rewind(self) -> None:
        for tp in self._consumer.assignment():
            committed = await self._consumer.committed(tp)
            if committed is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)

    def assigned(self) -> frozenset[TopicPartition]:
        return frozenset(TopicPartition(tp.topic, tp.partition) for tp in self._consumer.assignment())

    async def committed(self, tp: TopicPartition) -> int:
        value = await self._consumer.committed(KafkaTP(tp.topic, tp.partition))
        return int(value or 0)

    async def progress(self, tp: TopicPartition) -> Progress:
        admin = await self.log._admin_client()
        ktp = KafkaTP(tp.topic, tp.partition)
        try:
            found = await admin.list_consumer_group_offsets(self.group, partitions=[ktp])
        except KafkaError as exc:
            raise _translate(exc, f"reading the progress of {self.group}") from exc
        committed = found.get(ktp)
        if committed is None or committed.offset < 0:
            return Progress()
        return Progress(committed.offset, decode_done_ahead(committed.offset, committed.metadata))

    def pause(self, tps: AbstractSet[TopicPartition]) -> None:
        mine = self._consumer.assignment()
        self._consumer.pause(*(k for k in (KafkaTP(tp.topic, tp.partition) for tp in tps) if k in mine))

    def resume(self, tps: AbstractSet[TopicPartition]) -> None:
        mine = self._consumer.assignment()
        self._consumer.resume(*(k for k in (KafkaTP(tp.topic, tp.partition) for tp in tps) if k in mine))

    async def stop(self) -> None:
        await self._consumer.stop()
        await self._producer.stop()
