"""The embedded event log: one SQLite file in WAL mode.

Offsets are assigned inside write transactions, so several processes may append to the
same file. A consumer group has a fixed number of members, each owning a static share of
the partitions; every owned partition is held by an advisory file lock that the kernel
releases when the process dies, so a restarted worker takes over at once.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import sqlite3
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from streams.errors import ConfigError, EventLogError, TopicNotFound
from streams.log import (
    EventLog,
    GroupConsumer,
    Headers,
    LogRecord,
    OutgoingRecord,
    TopicPartition,
    TopicSpec,
    TopicStats,
)
from streams.partitioning import partition_for
from streams.progress import Progress, decode_done_ahead, encode_done_ahead
from streams.sqlite_tx import write_transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
  name TEXT PRIMARY KEY,
  partitions INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS partitions (
  tp INTEGER PRIMARY KEY,
  topic TEXT NOT NULL,
  partition INTEGER NOT NULL,
  next_offset INTEGER NOT NULL,
  UNIQUE (topic, partition));
CREATE TABLE IF NOT EXISTS records (
  tp INTEGER NOT NULL,
  offset INTEGER NOT NULL,
  key BLOB,
  value BLOB NOT NULL,
  headers TEXT,
  ts INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS records_by_position ON records (tp, offset);
CREATE INDEX IF NOT EXISTS records_by_key ON records (tp, key, offset);
CREATE TABLE IF NOT EXISTS group_offsets (
  group_id TEXT NOT NULL,
  tp INTEGER NOT NULL,
  next_offset INTEGER NOT NULL,
  done_ahead TEXT,
  PRIMARY KEY (group_id, tp)) WITHOUT ROWID;
"""

_SYNC_MODES = {"off": "OFF", "normal": "NORMAL", "full": "FULL", "extra": "EXTRA"}


class _Wakeup:
    """Wakes consumers in this process as soon as records are committed to a file."""

    def __init__(self) -> None:
        self.waiters: weakref.WeakSet[asyncio.Event] = weakref.WeakSet()

    def notify(self) -> None:
        for waiter in list(self.waiters):
            waiter.set()


_wakeups: dict[str, _Wakeup] = {}


def _encode_headers(headers: Headers) -> str | None:
    if not headers:
        return None
    return json.dumps([[k, v.hex()] for k, v in headers])


def _decode_headers(text: str | None) -> Headers:
    if not text:
        return ()
    return tuple((str(k), bytes.fromhex(v)) for k, v in json.loads(text))


class SqliteEventLog(EventLog):
    """The event log in a SQLite file (`sqlite:///path/to/log.db`).

    `synchronous` picks SQLite's fsync policy: `full` (default) survives power loss after
    every commit; `normal` survives process crashes, not power loss, and is faster.
    """

    def __init__(self, path: str | Path, *, synchronous: str = "full") -> None:
        if synchronous not in _SYNC_MODES:
            raise ConfigError(f"synchronous must be one of {sorted(_SYNC_MODES)}, not {synchronous!r}")
        self.path = Path(path).expanduser().resolve()
        self.url = f"sqlite://{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={_SYNC_MODES[synchronous]}")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(group_offsets)")}
            if "done_ahead" not in columns:  # a log written before out-of-order progress
                self._db.execute("ALTER TABLE group_offsets ADD COLUMN done_ahead TEXT")
        except sqlite3.Error as exc:
            raise EventLogError(f"cannot open event log {self.path}: {exc}") from exc
        self._wakeup = _wakeups.setdefault(str(self.path), _Wakeup())
        self._tp_ids: dict[TopicPartition, int] = {}
        self._partition_counts: dict[str, int] = {}

    # -- helpers -------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; driver errors become `EventLogError`; readers wake after it."""
        with write_transaction(self._db, self._failure) as db:
            yield db
        self._wakeup.notify()

    def _failure(self, detail: str, retryable: bool) -> EventLogError:
        return EventLogError(f"event log {self.path}: {detail}", retryable=retryable)

    def _partition_count(self, topic: str) -> int:
        count = self._partition_counts.get(topic)
        if count is None:
            row = self._db.execute("SELECT partitions FROM topics WHERE name = ?", (topic,)).fetchone()
            if row is None:
                raise TopicNotFound(f"topic {topic!r} does not exist in {self.path}")
            count = self._partition_counts[topic] = int(row[0])
        return count

    def _tp_id(self, tp: TopicPartition) -> int:
        tp_id = self._tp_ids.get(tp)
        if tp_id is None:
            row = self._db.execute(
                "SELECT tp FROM partitions WHERE topic = ? AND partition = ?", tp
            ).fetchone()
            if row is None:
                self._partition_count(tp.topic)
                raise TopicNotFound(f"partition {tp.partition} of {tp.topic!r} does not exist")
            tp_id = self._tp_ids[tp] = int(row[0])
        return tp_id

    def _append_in_txn(self, records: Sequence[OutgoingRecord]) -> list[tuple[TopicPartition, int]]:
        """Append inside the caller's write transaction."""
        next_offsets: dict[int, int] = {}
        positions: list[tuple[TopicPartition, int]] = []
        rows = []
        now = int(time.time() * 1000)
        for record in records:
            partition = record.partition
            if partition is None:
                count = self._partition_count(record.topic)
                partition = partition_for(record.key, count) if record.key is not None else 0
            tp = TopicPartition(record.topic, partition)
            tp_id = self._tp_id(tp)
            offset = next_offsets.get(tp_id)
            if offset is None:
                row = self._db.execute("SELECT next_offset FROM partitions WHERE tp = ?", (tp_id,)).fetchone()
                offset = int(row[0])
            next_offsets[tp_id] = offset + 1
            rows.append((tp_id, offset, record.key, record.value, _encode_headers(record.headers), now))
            positions.append((tp, offset))
        self._db.executemany(
            "INSERT INTO records (tp, offset, key, value, headers, ts) VALUES (?, ?, ?, ?, ?, ?)", rows
        )
        self._db.executemany(
            "UPDATE partitions SET next_offset = ? WHERE tp = ?",
            [(offset, tp_id) for tp_id, offset in next_offsets.items()],
        )
        return positions

    # -- EventLog ------------------------------------------------------------------

    async def create_topic(self, spec: TopicSpec) -> None:
        if spec.partitions < 1:
            raise ConfigError(f"topic {spec.name!r} needs at least one partition")
        with self._write() as db:
            row = db.execute("SELECT partitions FROM topics WHERE name = ?", (spec.name,)).fetchone()
            if row is not None:
                if int(row[0]) != spec.partitions:
                    raise ConfigError(
                        f"topic {spec.name!r} exists with {row[0]} partitions, not {spec.partitions}"
                    )
                return
            db.execute("INSERT INTO topics (name, partitions) VALUES (?, ?)", (spec.name, spec.partitions))
            db.executemany(
                "INSERT INTO partitions (topic, partition, next_offset) VALUES (?, ?, 0)",
                [(spec.name, p) for p in range(spec.partitions)],
            )

    async def partitions(self, topic: str) -> int:
        return self._partition_count(topic)

    async def topics(self) -> list[TopicStats]:
        stats: dict[str, TopicStats] = {}
        for name, partitions in self._db.execute("SELECT name, partitions FROM topics ORDER BY name"):
            stats[name] = TopicStats(name, int(partitions))
        for topic, partition, next_offset in self._db.execute(
            "SELECT topic, partition, next_offset FROM partitions"
        ):
            stats[topic].end_offsets[int(partition)] = int(next_offset)
        return [
            TopicStats(s.name, s.partitions, s.end_offsets, sum(s.end_offsets.values()))
            for s in stats.values()
        ]

    async def append(self, records: Sequence[OutgoingRecord]) -> list[tuple[TopicPartition, int]]:
        if not records:
            return []
        with self._write():
            return self._append_in_txn(records)

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[LogRecord]:
        tp_id = self._tp_id(TopicPartition(topic, partition))
        rows = self._db.execute(
            "SELECT offset, key, value, headers, ts FROM records"
            " WHERE tp = ? AND offset >= ? ORDER BY offset LIMIT ?",
            (tp_id, offset, limit),
        ).fetchall()
        return [
            LogRecord(topic, partition, int(o), k, v, _decode_headers(h), int(ts)) for o, k, v, h, ts in rows
        ]

    async def read_key(self, topic: str, partition: int, key: bytes, from_offset: int = 0) -> list[LogRecord]:
        tp_id = self._tp_id(TopicPartition(topic, partition))
        rows = self._db.execute(
            "SELECT offset, key, value, headers, ts FROM records"
            " WHERE tp = ? AND key = ? AND offset >= ? ORDER BY offset",
            (tp_id, key, from_offset),
        ).fetchall()
        return [
            LogRecord(topic, partition, int(o), k, v, _decode_headers(h), int(ts)) for o, k, v, h, ts in rows
        ]

    async def end_offset(self, topic: str, partition: int) -> int:
        tp_id = self._tp_id(TopicPartition(topic, partition))
        row = self._db.execute("SELECT next_offset FROM partitions WHERE tp = ?", (tp_id,)).fetchone()
        return int(row[0])

    def consumer(
        self, group: str, topics: Sequence[str], *, member: str = "0", members: int = 1
    ) -> GroupConsumer:
        return SqliteGroupConsumer(self, group, list(topics), member=member, members=members)

    async def close(self) -> None:
        self._db.close()

    # -- used by SqliteGroupConsumer -----------------------------------------------

    def _committed(self, group: str, tp_id: int) -> Progress:
        row = self._db.execute(
            "SELECT next_offset, done_ahead FROM group_offsets WHERE group_id = ? AND tp = ?",
            (group, tp_id),
        ).fetchone()
        if row is None:
            return Progress()
        return Progress(int(row[0]), decode_done_ahead(int(row[0]), row[1]))

    def _commit(
        self,
        group: str,
        outputs: Sequence[OutgoingRecord],
        consumed: Mapping[TopicPartition, int],
        done_ahead: Mapping[TopicPartition, AbstractSet[int]],
    ) -> None:
        with self._write() as db:
            if outputs:
                self._append_in_txn(outputs)
            db.executemany(
                "INSERT INTO group_offsets (group_id, tp, next_offset, done_ahead) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (group_id, tp) DO UPDATE"
                " SET next_offset = excluded.next_offset, done_ahead = excluded.done_ahead",
                [
                    (group, self._tp_id(tp), offset, encode_done_ahead(offset, done_ahead.get(tp, ())))
                    for tp, offset in consumed.items()
                ],
            )


class SqliteGroupConsumer(GroupConsumer):
    """A member of a consumer group on a SQLite log, with a static share of the partitions.

    Member `i` of `members` owns the partitions `p` with `p % members == i` (the only
    member owns them all). Each owned partition is held by an advisory file lock per
    (group, topic, partition), so two members whose shares overlap (a second deployment,
    or one started with another member count) can never read the same partition at once.
    """

    def __init__(
        self, log: SqliteEventLog, group: str, topics: list[str], *, member: str = "0", members: int = 1
    ) -> None:
        if members < 1:
            raise ConfigError(f"a consumer group needs at least one member, not {members}")
        index = 0
        if members > 1:
            if not member.isdigit() or int(member) >= members:
                raise ConfigError(
                    f"member {member!r} of group {group!r}: with {members} members, a member is"
                    f" named by its index, 0 to {members - 1}"
                )
            index = int(member)
        self.log = log
        self.group = group
        self.topics = topics
        self.member = index
        self.members = members
        self._positions: dict[TopicPartition, int] = {}
        self._tp_ids: dict[TopicPartition, int] = {}
        self._lock_files: list[IO[bytes]] = []
        self._started = False
        self._waiter = asyncio.Event()
        self._paused: set[TopicPartition] = set()

    def _owned(self) -> list[TopicPartition]:
        return [
            TopicPartition(topic, partition)
            for topic in self.topics
            for partition in range(self.log._partition_count(topic))
            if partition % self.members == self.member
        ]

    def _lock_path(self, tp: TopicPartition) -> Path:
        digest = hashlib.sha256(f"{self.group}\0{tp.topic}".encode()).hexdigest()[:16]
        return self.log.path.with_name(f"{self.log.path.name}.group-{digest}.p{tp.partition}.lock")

    async def start(self, lock_timeout_s: float = 30.0) -> None:
        owned = self._owned()
        deadline = time.monotonic() + lock_timeout_s
        # Taken in one global order, so members with overlapping shares never deadlock.
        for tp in sorted(owned):
            handle = open(self._lock_path(tp), "a+b")  # noqa: SIM115, ASYNC230 - a local lock file, held while the consumer lives
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        handle.close()
                        self._release()
                        raise EventLogError(
                            f"partition {tp.partition} of {tp.topic!r} in consumer group {self.group!r}"
                            f" is held by another process on {self.log.path}"
                        ) from None
                    await asyncio.sleep(0.05)
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()} member {self.member} of {self.members}".encode())
            handle.flush()
            self._lock_files.append(handle)
        self._tp_ids = {tp: self.log._tp_id(tp) for tp in owned}
        await self.rewind()
        self.log._wakeup.waiters.add(self._waiter)
        self._started = True

    def assigned(self) -> frozenset[TopicPartition] | None:
        return None if self.members == 1 else frozenset(self._tp_ids)

    def _release(self) -> None:
        for handle in self._lock_files:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
        self._lock_files = []

    def _fetch(self, max_records: int) -> list[LogRecord]:
        records: list[LogRecord] = []
        share = max(1, -(-max_records // max(1, len(self._positions))))
        for tp, position in self._positions.items():
            if len(records) >= max_records:
                break
            if tp in self._paused:
                continue
            batch = self.log._db.execute(
                "SELECT offset, key, value, headers, ts FROM records"
                " WHERE tp = ? AND offset >= ? ORDER BY offset LIMIT ?",
                (self._tp_ids[tp], position, min(share, max_records - len(records))),
            ).fetchall()
            for o, k, v, h, ts in batch:
                records.append(LogRecord(tp.topic, tp.partition, int(o), k, v, _decode_headers(h), int(ts)))
            if batch:
                self._positions[tp] = int(batch[-1][0]) + 1
        return records

    async def poll(self, max_records: int, timeout_s: float) -> list[LogRecord]:
        if not self._started:
            raise EventLogError("poll() before start()")
        deadline = time.monotonic() + timeout_s
        idle_wait = 0.001
        while True:
            self._waiter.clear()
            records = self._fetch(max_records)
            remaining = deadline - time.monotonic()
            if records or remaining <= 0:
                return records
            # Woken at once by commits in this process; other processes are polled,
            # backing off up to 50 ms while the log is idle.
            try:
                await asyncio.wait_for(self._waiter.wait(), min(idle_wait, remaining))
            except TimeoutError:
                idle_wait = min(idle_wait * 2, 0.05)

    async def commit(
        self,
        outputs: Sequence[OutgoingRecord],
        consumed: Mapping[TopicPartition, int],
        done_ahead: Mapping[TopicPartition, AbstractSet[int]] | None = None,
    ) -> None:
        self.log._commit(self.group, outputs, consumed, done_ahead or {})

    async def rewind(self) -> None:
        self._positions = {
            tp: self.log._committed(self.group, tp_id).next_offset for tp, tp_id in self._tp_ids.items()
        }

    async def committed(self, tp: TopicPartition) -> int:
        return self.log._committed(self.group, self.log._tp_id(tp)).next_offset

    async def progress(self, tp: TopicPartition) -> Progress:
        return self.log._committed(self.group, self.log._tp_id(tp))

    def pause(self, tps: AbstractSet[TopicPartition]) -> None:
        self._paused |= tps

    def resume(self, tps: AbstractSet[TopicPartition]) -> None:
        self._paused -= tps

    async def stop(self) -> None:
        self.log._wakeup.waiters.discard(self._waiter)
        self._release()
        self._started = False
