"""Out-of-order progress: the done set survives its encoding, stays small, and bad text is refused."""

from __future__ import annotations

import random

import pytest

from streams.errors import EventLogError
from streams.progress import Progress, decode_done_ahead, encode_done_ahead

pytestmark = pytest.mark.unit


def test_round_trip_of_runs_and_single_offsets() -> None:
    done = {101, 102, 103, 107, 200, 201, 5_000_000}
    text = encode_done_ahead(100, done)
    assert decode_done_ahead(100, text) == frozenset(done)


def test_nothing_ahead_is_the_empty_string() -> None:
    assert encode_done_ahead(10, []) == ""
    assert encode_done_ahead(10, [3, 9]) == "", "offsets below the committed one are not carried"
    assert decode_done_ahead(10, "") == frozenset()
    assert decode_done_ahead(10, None) == frozenset()


def test_the_kafka_limit_holds_with_500_records_in_flight() -> None:
    """A worker pauses a Kafka partition at 500 unfinished records; the done set around
    them must still fit the brokers' default 4 KiB offset metadata."""
    rng = random.Random(7)
    window = range(1_000_000, 1_000_000 + 200_000)
    unfinished = set(rng.sample(window, 500))
    done = [o for o in window if o not in unfinished]
    text = encode_done_ahead(min(unfinished), done)
    assert len(text) < 4096
    assert decode_done_ahead(min(unfinished), text) == frozenset(o for o in done if o >= min(unfinished))


def test_progress_knows_what_is_done() -> None:
    progress = Progress(10, frozenset({12}))
    assert [progress.done(o) for o in (9, 10, 11, 12, 13)] == [True, False, False, True, False]


@pytest.mark.parametrize("text", ["garbage", "p1:!!!", "p1:" + "QUJD", "p2:AAAA"])
def test_text_it_did_not_write_is_refused(text: str) -> None:
    with pytest.raises(EventLogError):
        decode_done_ahead(0, text)


async def test_a_log_written_before_out_of_order_progress_opens_and_keeps_its_offsets(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    from streams.log import TopicPartition, TopicSpec
    from streams.sqlite_log import SqliteEventLog

    path = tmp_path / "old.db"
    log = SqliteEventLog(path)
    await log.create_topic(TopicSpec("t", 1))
    await log.close()
    db = sqlite3.connect(path)  # the table as older versions made it
    db.executescript(
        "DROP TABLE group_offsets;"
        "CREATE TABLE group_offsets (group_id TEXT NOT NULL, tp INTEGER NOT NULL,"
        " next_offset INTEGER NOT NULL, PRIMARY KEY (group_id, tp)) WITHOUT ROWID;"
        "INSERT INTO group_offsets VALUES ('g', 1, 7);"
    )
    db.commit()
    db.close()

    log = SqliteEventLog(path)
    consumer = log.consumer("g", ["t"])
    await consumer.start()
    try:
        tp = TopicPartition("t", 0)
        assert await consumer.progress(tp) == Progress(7)
        await consumer.commit([], {tp: 9}, {tp: {11, 12}})
        assert await consumer.progress(tp) == Progress(9, frozenset({11, 12}))
    finally:
        await consumer.stop()
        await log.close()
