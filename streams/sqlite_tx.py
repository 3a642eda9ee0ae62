"""One SQLite write transaction, taken the same way by every embedded store.

`BEGIN IMMEDIATE` takes the write lock up front, so two processes never both read and
then collide on commit; any exception rolls the transaction back. SQLite's own errors
become the caller's error type: a busy database, or another operational error, may pass
if tried again (`retryable`); a constraint violation or a corrupt file will not.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from streams.errors import AgentstreamError

Failure = Callable[[str, bool], AgentstreamError]
"""Makes the caller's error from a message and whether trying again may help."""


@contextmanager
def write_transaction(db: sqlite3.Connection, failure: Failure) -> Iterator[sqlite3.Connection]:
    """Run the block in one write transaction on `db`; commit if it returns."""
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise failure(f"busy: {exc}", True) from exc
    try:
        yield db
        db.execute("COMMIT")
    except BaseException as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise failure(str(exc), isinstance(exc, sqlite3.OperationalError)) from exc
        raise
