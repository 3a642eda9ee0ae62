"""The embedded projection store: every view in one SQLite file, in WAL mode.

A batch's view changes and the projection's new offsets are written in one SQLite
transaction, which first checks that the offsets are still the ones the batch started
from. Readers in other processes see committed batches only, never half of one.

`synchronous=normal` is the default and is safe here: a power cut may lose the last
few commits, but it loses each one whole, rows and offsets together, and the projector
applies those events again from the log.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from projections.errors import ProjectionConflict, StoreError
from projections.stores.base import (
    ColumnType,
    Key,
    ProjectionSchema,
    ProjectionStore,
    QueryPlan,
    Row,
    Scalar,
    Table,
    ViewTransaction,
    check_select,
)
from streams.errors import ConfigError
from streams.log import TopicPartition
from streams.sqlite_tx import write_transaction

_SYNC_MODES = {"off": "OFF", "normal": "NORMAL", "full": "FULL", "extra": "EXTRA"}
_SQL_TYPES: dict[str, str] = {
    "text": "TEXT",
    "int": "INTEGER",
    "float": "REAL",
    "bool": "INTEGER",
    "time": "INTEGER",
    "json": "TEXT",
}
_RESERVED_PREFIX = "projection_"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

# The store's own tables, by schema version (PRAGMA user_version); append, never edit.
_MIGRATIONS = [
    """
    CREATE TABLE projection_offsets (
      projection TEXT NOT NULL,
      topic TEXT NOT NULL,
      partition INTEGER NOT NULL,
      next_offset INTEGER NOT NULL,
      PRIMARY KEY (projection, topic, partition)) WITHOUT ROWID;
    CREATE TABLE projection_schemas (
      projection TEXT PRIMARY KEY,
      fingerprint TEXT NOT NULL,
      tables TEXT NOT NULL,
      registered_at INTEGER NOT NULL);
    """,
]


def _to_ms(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MS


def _from_ms(value: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=value)


def _dump_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


_ENCODERS: dict[str, Callable[[Any], Any] | None] = {
    "text": None,
    "int": None,
    "float": None,
    "bool": int,
    "time": _to_ms,
    "json": _dump_json,
}
_DECODERS: dict[str, Callable[[Any], Any] | None] = {
    "text": None,
    "int": None,
    "float": None,
    "bool": bool,
    "time": _from_ms,
    "json": json.loads,
}


def _encode(kind: ColumnType, value: Any) -> Any:
    encoder = _ENCODERS[kind]
    return value if value is None or encoder is None else encoder(value)


class _TableSql:
    """SQL and value converters of one declared table, built once."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.columns = list(table.columns)
        cols = ", ".join(f'"{c}"' for c in self.columns)
        key_match = " AND ".join(f'"{c}" = ?' for c in table.key)
        self.insert = (
            f'INSERT OR REPLACE INTO "{table.name}" ({cols}) VALUES ({", ".join("?" * len(self.columns))})'
        )
        self.delete = f'DELETE FROM "{table.name}" WHERE {key_match}'
        self.load = f'SELECT {cols} FROM "{table.name}" WHERE {key_match}'
        self.select_all = f'SELECT {cols} FROM "{table.name}"'
        self.encoders = [(c, _ENCODERS[table.columns[c]]) for c in self.columns]
        self.key_encoders = [_ENCODERS[table.columns[c]] for c in table.key]
        self.decoders = [(c, _DECODERS[table.columns[c]]) for c in self.columns]

    def encode_row(self, row: Row) -> tuple[Any, ...]:
        out = []
        for column, encoder in self.encoders:
            value = row.get(column)
            out.append(value if value is None or encoder is None else encoder(value))
        return tuple(out)

    def encode_key(self, key: Key) -> tuple[Any, ...]:
        return tuple(
            v if v is None or e is None else e(v) for v, e in zip(key, self.key_encoders, strict=True)
        )

    def decode_row(self, values: tuple[Any, ...]) -> Row:
        row: Row = {}
        for (column, decoder), value in zip(self.decoders, values, strict=True):
            row[column] = value if value is None or decoder is None else decoder(value)
        return row

    def create(self) -> list[str]:
        table = self.table
        columns = ", ".join(f'"{c}" {_SQL_TYPES[t]}' for c, t in table.columns.items())
        key = ", ".join(f'"{c}"' for c in table.key)
        statements = [f'CREATE TABLE IF NOT EXISTS "{table.name}" ({columns}, PRIMARY KEY ({key}))']
        for index in table.indexes:
            cols = ", ".join(f'"{c}"' for c in ("tenant_id", *index.equal, *index.order))
            statements.append(
                f'CREATE INDEX IF NOT EXISTS "{table.name}__{index.name}" ON "{table.name}" ({cols})'
            )
        return statements


class SqliteProjectionStore(ProjectionStore):
    """Projection views and offsets in a SQLite file (`sqlite:///path/to/views.db`)."""

    def __init__(self, path: str | Path, *, synchronous: str = "normal") -> None:
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
            # A rebuild's big batches grow the WAL; this gives the space back afterwards.
            self._db.execute("PRAGMA journal_size_limit=67108864")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open projection store {self.path}: {exc}") from exc
        self._sql: dict[str, _TableSql] = {}
        self._select_sql: dict[tuple[str, str | None, int, bool, bool, bool], str] = {}
        with self._write() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > len(_MIGRATIONS):
                raise StoreError(
                    f"{self.path} was written by a newer agentstream (store schema {version},"
                    f" this one knows {len(_MIGRATIONS)})"
                )
            for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

    # -- helpers -------------------------------------------------------------------

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction; driver errors become `StoreError`."""
        return write_transaction(self._db, self._failure)

    def _failure(self, detail: str, retryable: bool) -> StoreError:
        return StoreError(f"projection store {self.path}: {detail}", retryable=retryable)

    def _table_sql(self, table: Table) -> _TableSql:
        sql = self._sql.get(table.name)
        if sql is None or sql.table is not table:
            sql = self._sql[table.name] = _TableSql(table)
        return sql

    def _offsets_in(self, db: sqlite3.Connection, projection: str) -> dict[TopicPartition, int]:
        rows = db.execute(
            "SELECT topic, partition, next_offset FROM projection_offsets WHERE projection = ?",
            (projection,),
        )
        return {TopicPartition(t, int(p)): int(o) for t, p, o in rows}

    def _create(self, db: sqlite3.Connection, schema: ProjectionSchema, dropping: list[str]) -> None:
        owners = {
            name: projection
            for projection, tables in db.execute("SELECT projection, tables FROM projection_schemas")
            for name in json.loads(tables)
        }
        for table in schema.tables:
            if table.name.startswith(_RESERVED_PREFIX):
                raise ConfigError(f"table names starting with {_RESERVED_PREFIX!r} are the store's own")
            owner = owners.get(table.name)
            if owner is not None and owner != schema.name:
                raise ConfigError(f"table {table.name!r} of {schema.name} already belongs to {owner}")
        for name in dropping:
            db.execute(f'DROP TABLE IF EXISTS "{name}"')
        for table in schema.tables:
            for statement in _TableSql(table).create():
                db.execute(statement)
        db.execute("DELETE FROM projection_offsets WHERE projection = ?", (schema.name,))
        db.execute(
            "INSERT OR REPLACE INTO projection_schemas (projection, fingerprint, tables, registered_at)"
            " VALUES (?, ?, ?, ?)",
            (
                schema.name,
                schema.fingerprint,
                json.dumps([t.name for t in schema.tables]),
                _to_ms(datetime.now(UTC)),
            ),
        )

    # -- ProjectionStore -----------------------------------------------------------

    async def register(self, schema: ProjectionSchema) -> bool:
        with self._write() as db:
            row = db.execute(
                "SELECT fingerprint, tables FROM projection_schemas WHERE projection = ?", (schema.name,)
            ).fetchone()
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            intact = all(t.name in tables for t in schema.tables)
            if row is not None and row[0] == schema.fingerprint and intact:
                return False
            old = json.loads(row[1]) if row is not None else []
            self._create(db, schema, [*old, *(t.name for t in schema.tables)])
        return True

    async def reset(self, schema: ProjectionSchema) -> None:
        with self._write() as db:
            row = db.execute(
                "SELECT tables FROM projection_schemas WHERE projection = ?", (schema.name,)
            ).fetchone()
            old = json.loads(row[0]) if row is not None else []
            self._create(db, schema, [*old, *(t.name for t in schema.tables)])
        self._notify()

    async def offsets(self, projection: str) -> dict[TopicPartition, int]:
        return self._offsets_in(self._db, projection)

    async def applied(self, projection: str, topic: str, partition: int) -> int:
        row = self._db.execute(
            "SELECT next_offset FROM projection_offsets WHERE projection = ? AND topic = ? AND partition = ?",
            (projection, topic, partition),
        ).fetchone()
        return int(row[0]) if row else 0

    async def load(self, table: Table, key: Key) -> Row | None:
        sql = self._table_sql(table)
        try:
            found = self._db.execute(sql.load, sql.encode_key(key)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"reading {table.name}: {exc}", retryable=True) from exc
        return None if found is None else sql.decode_row(found)

    async def commit(self, txn: ViewTransaction) -> None:
        upserts: dict[str, list[tuple[Any, ...]]] = {}
        deletes: dict[str, list[tuple[Any, ...]]] = {}
        for (name, key), (table, row) in txn.changes.items():
            sql = self._table_sql(table)
            if row is None:
                deletes.setdefault(name, []).append(sql.encode_key(key))
            else:
                upserts.setdefault(name, []).append(sql.encode_row(row))
        with self._write() as db:
            for projection, advance in txn.offsets.items():
                current = self._offsets_in(db, projection)
                if current != advance.expected:
                    raise ProjectionConflict(
                        f"{projection}: offsets moved since the batch was read"
                        " (another projector or a rebuild is running)"
                    )
            for name, keys in deletes.items():
                db.executemany(self._sql[name].delete, keys)
            for name, rows in upserts.items():
                db.executemany(self._sql[name].insert, rows)
            db.executemany(
                "INSERT INTO projection_offsets (projection, topic, partition, next_offset)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (projection, topic, partition)"
                " DO UPDATE SET next_offset = excluded.next_offset",
                [
                    (projection, tp.topic, tp.partition, offset)
                    for projection, advance in txn.offsets.items()
                    for tp, offset in advance.new.items()
                ],
            )
        self._notify()

    async def select(
        self,
        table: Table,
        tenant: str,
        *,
        index: str | None = None,
        equal: Mapping[str, Scalar] | None = None,
        start: Scalar = None,
        stop: Scalar = None,
        descending: bool = False,
        limit: int,
    ) -> list[Row]:
        check_select(tenant, limit)
        equal = equal or {}
        plan = QueryPlan.make(table, index, equal)
        if (start is not None or stop is not None) and not plan.order:
            raise ValueError(f"{table.name}: nothing to range over once {list(plan.equal)} are bound")
        cache_key = (table.name, index, len(plan.equal), start is not None, stop is not None, descending)
        statement = self._select_sql.get(cache_key)
        if statement is None:
            where = ['"tenant_id" = ?', *(f'"{c}" = ?' for c in plan.equal)]
            if start is not None:
                where.append(f'"{plan.order[0]}" >= ?')
            if stop is not None:
                where.append(f'"{plan.order[0]}" < ?')
            direction = " DESC" if descending else ""
            order = ", ".join(f'"{c}"{direction}' for c in plan.order)
            statement = f"{self._table_sql(table).select_all} WHERE {' AND '.join(where)}"
            statement += f" ORDER BY {order} LIMIT ?" if order else " LIMIT ?"
            self._select_sql[cache_key] = statement
        kinds = table.columns
        params: list[Any] = [tenant, *(_encode(kinds[c], equal[c]) for c in plan.equal)]
        if start is not None:
            params.append(_encode(kinds[plan.order[0]], start))
        if stop is not None:
            params.append(_encode(kinds[plan.order[0]], stop))
        params.append(limit)
        sql = self._table_sql(table)
        try:
            return [sql.decode_row(r) for r in self._db.execute(statement, params)]
        except sqlite3.Error as exc:
            raise StoreError(f"querying {table.name}: {exc}", retryable=True) from exc

    async def scan(self, table: Table) -> list[Row]:
        sql = self._table_sql(table)
        order = ", ".join(f'"{c}"' for c in table.key)
        try:
            return [sql.decode_row(r) for r in self._db.execute(f"{sql.select_all} ORDER BY {order}")]
        except sqlite3.Error as exc:
            raise StoreError(f"scanning {table.name}: {exc}", retryable=True) from exc

    async def close(self) -> None:
        self._db.close()
