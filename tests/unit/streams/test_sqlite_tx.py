"""The shared SQLite write transaction: commit, roll back, and which failures may be retried."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from streams.errors import EventLogError
from streams.sqlite_tx import write_transaction

pytestmark = pytest.mark.unit


def failure(detail: str, retryable: bool) -> EventLogError:
    return EventLogError(f"test db: {detail}", retryable=retryable)


def open_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=0.05)
    db.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY)")
    return db


def rows(db: sqlite3.Connection) -> list[int]:
    return [k for (k,) in db.execute("SELECT k FROM t ORDER BY k")]


def test_a_block_that_returns_is_committed(tmp_path: Path) -> None:
    db = open_db(tmp_path / "a.db")
    with write_transaction(db, failure) as tx:
        tx.execute("INSERT INTO t VALUES (1)")
    assert rows(open_db(tmp_path / "a.db")) == [1]


def test_any_exception_rolls_back_and_passes_through(tmp_path: Path) -> None:
    db = open_db(tmp_path / "a.db")

    def insert_then_fail() -> None:
        with write_transaction(db, failure) as tx:
            tx.execute("INSERT INTO t VALUES (1)")
            raise KeyError("not a database error")

    with pytest.raises(KeyError):
        insert_then_fail()
    assert rows(db) == [] and not db.in_transaction


def test_a_constraint_violation_is_not_retryable(tmp_path: Path) -> None:
    db = open_db(tmp_path / "a.db")
    db.execute("INSERT INTO t VALUES (1)")

    def insert_a_duplicate() -> None:
        with write_transaction(db, failure) as tx:
            tx.execute("INSERT INTO t VALUES (2)")
            tx.execute("INSERT INTO t VALUES (1)")

    with pytest.raises(EventLogError, match="UNIQUE") as caught:
        insert_a_duplicate()
    assert caught.value.retryable is False
    assert rows(db) == [1], "the whole block was undone"


def test_a_database_another_process_is_writing_is_busy_and_retryable(tmp_path: Path) -> None:
    holder = open_db(tmp_path / "a.db")
    holder.execute("BEGIN IMMEDIATE")
    db = open_db(tmp_path / "a.db")
    with pytest.raises(EventLogError, match="busy") as caught, write_transaction(db, failure):
        pass
    assert caught.value.retryable is True
    holder.execute("ROLLBACK")
