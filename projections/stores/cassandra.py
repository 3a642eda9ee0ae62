"""The wide-column projection store: views and offsets in an Apache Cassandra keyspace.

`cassandra://host[:port][,host2[:port]]/keyspace[?replication_factor=1&fence_timeout_s=10&max_batch_kib=20]`

The keyspace (SimpleStrategy, replication factor 1 unless asked) and the store's own
tables are created by the code; each projection's tables are created when it registers
and dropped and recreated when its fingerprint changes.

Layout of a declared table with key (tenant_id, k1, ..., kn):

* `<table>`: partition key (tenant_id, k1), clustering k2..kn, so one run's (or one
  approval's) rows sit together in a bounded partition; it serves `load` and any `select`
  that binds k1 (and possibly more key columns).
* `<table>__key`: the same rows with partition key (tenant_id) and clustering k1..kn, for a
  `select` that binds only the tenant (there only when n >= 1).
* `<table>__<index>`: one query table per declared index, partition key (tenant_id,
  *equal) and clustering (order columns, then the rest of the key). Clustering columns
  cannot be null, so each order column is preceded by a hidden `n__<column>` flag (false
  for null): null values sort first, as in SQLite, and a `start`/`stop` range skips them.
  Rows whose equality column is null are not indexed (`column = NULL` matches nothing).

All copies of a row, the deletes of its stale index entries, and the projection's new
offsets are written in one LOGGED batch, so they are all applied or none is.

Commit protocol (one projection's offsets live in one partition of `projection_offsets`,
with static columns `version` and `committed`):

1. Read the partition. If the offsets are not the batch's `expected` ones, raise
   `ProjectionConflict`. If `committed != version`, another commit has fenced and not
   finished: conflict, unless that fence is older than `fence_timeout_s`, in which case
   its writer is presumed dead and the fence is taken over.
2. Fence: a lightweight transaction `UPDATE ... SET version = v+1 IF version = v AND
   committed = c`. Only one projector can win it; the loser gets `ProjectionConflict`
   and has written nothing.
3. The LOGGED batch: rows, index entries, offsets, and `committed = v+1`. A batch larger
   than `max_batch_kib` (default 20, well below the server's default 50 KiB
   `batch_size_fail_threshold`) is instead written whole to a redo log, marked, applied
   in pieces, and its offsets moved last (see `CassandraProjectionStore._commit_large`).

Why this is crash-safe: the fence is taken *before* the batch and does not move the
offsets. A crash between fence and batch leaves rows and offsets exactly as they were
(the batch was never sent); after `fence_timeout_s` the next projector takes the fence
over and re-applies the same events from the un-advanced offsets, and its row puts are
keyed by primary key, so they overwrite rather than add. A batch that reached the
coordinator is applied whole (the batch log replays it), with the offsets inside it.

Caveats: a logged batch is atomic but not isolated across partitions, so a reader may
briefly see some rows of a batch before others (and, on the redo path, rows before the
offsets); the takeover assumes that a fenced batch which has not landed within
`fence_timeout_s` never will; a projection's tables dropped and recreated by a schema
change invalidate statements other processes prepared on them until they reconnect.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

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

if TYPE_CHECKING:
    from cassandra.cluster import Cluster, ResponseFuture, Session  # type: ignore[import-untyped]
    from cassandra.query import PreparedStatement  # type: ignore[import-untyped]

INSTALL_HINT = "pip install 'agentstream[cassandra]'"
DEFAULT_PORT = 9042
STORE_SCHEMA_VERSION = 1
_RESERVED_PREFIX = "projection_"
_PENDING = "pending:"
_REDO_CHUNK_BYTES = 1 << 20
_CONCURRENCY = 64
_BUSY_RETRIES = 5
DEFAULT_MAX_BATCH_KIB = 20
"""Below Cassandra's default `batch_size_fail_threshold` (50 KiB); larger batches go
through the redo log (see `CassandraProjectionStore._commit_large`)."""
SCHEMA_CHANGE_TIMEOUT_S = 60.0
"""How long `register` waits for another store's schema change before taking it over."""
_NAME_MAX = 48
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)
_MS = timedelta(milliseconds=1)

_CQL_TYPES: dict[str, str] = {
    "text": "text",
    "int": "bigint",
    "float": "double",
    "bool": "boolean",
    "time": "timestamp",
    "json": "text",
}
_PLACEHOLDERS: dict[str, Any] = {"text": "", "int": 0, "float": 0.0, "bool": False, "time": 0, "json": ""}
"""What a null order column holds in an index table (its `n__` flag says it is null)."""


def _driver() -> Any:
    try:
        import cassandra.cluster  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(f"the Cassandra projection store needs cassandra-driver: {INSTALL_HINT}") from exc
    return cassandra.cluster


def _to_ms(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MS


def _from_driver_time(value: datetime) -> datetime:
    """The driver returns naive UTC datetimes; keep exact milliseconds, aware."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    ms = round((value - _NAIVE_EPOCH) / _MS)
    return _EPOCH + timedelta(milliseconds=ms)


def _dump_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


_ENCODERS: dict[str, Callable[[Any], Any] | None] = {
    "text": None,
    "int": None,
    "float": float,
    "bool": bool,
    "time": _to_ms,
    "json": _dump_json,
}
_DECODERS: dict[str, Callable[[Any], Any] | None] = {
    "text": None,
    "int": None,
    "float": None,
    "bool": None,
    "time": _from_driver_time,
    "json": json.loads,
}


def _encode(kind: ColumnType, value: Any) -> Any:
    encoder = _ENCODERS[kind]
    return value if value is None or encoder is None else encoder(value)


def _name(*parts: str) -> str:
    """A Cassandra table name (at most 48 characters) for a declared table or its index."""
    name = "__".join(parts)
    if len(name) <= _NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: _NAME_MAX - 12]}__{digest}"


def _quote(column: str) -> str:
    return f'"{column}"'


@dataclass
class _QueryTable:
    """One Cassandra table holding a copy of a declared table's rows."""

    name: str
    partition: tuple[str, ...]
    clustering: tuple[str, ...]
    """Clustering columns, including hidden `n__` null flags."""
    flags: tuple[str, ...] = ()
    """Order columns that carry a null flag."""
    index_equal: tuple[str, ...] = ()
    """Equality columns of an index: rows with a null one are not indexed."""

    @property
    def primary(self) -> tuple[str, ...]:
        return self.partition + self.clustering


def _flag(column: str) -> str:
    return f"n__{column}"


class _TableCql:
    """CQL of one declared table and its query tables, built once."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.columns = list(table.columns)
        key = table.key
        self.main = _QueryTable(table.name, key[:2], key[2:])
        self.by_key = _QueryTable(_name(table.name, "key"), key[:1], key[1:]) if len(key) > 1 else None
        self.indexes: dict[str, _QueryTable] = {}
        for index in table.indexes:
            tail = tuple(c for c in key[1:] if c not in index.equal and c not in index.order)
            clustering: list[str] = []
            for column in index.order:
                clustering += [_flag(column), column]
            self.indexes[index.name] = _QueryTable(
                _name(table.name, index.name),
                ("tenant_id", *index.equal),
                (*clustering, *tail),
                flags=index.order,
                index_equal=index.equal,
            )
        self.index_names = {qt.name for qt in self.indexes.values()}
        self.encoders = [(c, _ENCODERS[table.columns[c]]) for c in self.columns]
        self.decoders = [(c, _DECODERS[table.columns[c]]) for c in self.columns]
        cols = ", ".join(_quote(c) for c in self.columns)
        self.select_cols = cols
        where = " AND ".join(f"{_quote(c)} = ?" for c in key)
        self.load = f"SELECT {cols} FROM {{ks}}.{_quote(self.main.name)} WHERE {where}"

    @property
    def query_tables(self) -> list[_QueryTable]:
        return [self.main, *([self.by_key] if self.by_key else []), *self.indexes.values()]

    def create(self, keyspace: str) -> list[str]:
        out = []
        for qt in self.query_tables:
            columns = [f"{_quote(c)} {_CQL_TYPES[t]}" for c, t in self.table.columns.items()]
            columns += [f"{_quote(_flag(c))} boolean" for c in qt.flags]
            partition = ", ".join(_quote(c) for c in qt.partition)
            clustering = "".join(f", {_quote(c)}" for c in qt.clustering)
            out.append(
                f"CREATE TABLE IF NOT EXISTS {keyspace}.{_quote(qt.name)} ({', '.join(columns)},"
                f" PRIMARY KEY (({partition}){clustering}))"
            )
        return out

    def encode_row(self, row: Row) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for column, encoder in self.encoders:
            value = row.get(column)
            out[column] = value if value is None or encoder is None else encoder(value)
        return out

    def encode_key(self, key: Key) -> list[Any]:
        kinds = self.table.columns
        return [_encode(kinds[c], v) for c, v in zip(self.table.key, key, strict=True)]

    def decode_row(self, values: Sequence[Any]) -> Row:
        row: Row = {}
        for (column, decoder), value in zip(self.decoders, values, strict=True):
            row[column] = value if value is None or decoder is None else decoder(value)
        return row

    def index_values(self, qt: _QueryTable, encoded: Mapping[str, Any]) -> dict[str, Any] | None:
        """The row as the index table stores it, or None if the row is not indexed there."""
        if any(encoded.get(c) is None for c in qt.index_equal):
            return None
        out = dict(encoded)
        for column in qt.flags:
            value = encoded.get(column)
            out[_flag(column)] = value is not None
            if value is None:
                out[column] = _PLACEHOLDERS[self.table.columns[column]]
        return out


class _Pager:
    """Collects every page of a driver response into an asyncio future."""

    def __init__(self, loop: asyncio.AbstractEventLoop, response: ResponseFuture) -> None:
        self.loop = loop
        self.response = response
        self.rows: list[Any] = []
        self.future: asyncio.Future[list[Any]] = loop.create_future()
        response.add_callbacks(self._page, self._error)

    def _page(self, rows: Any) -> None:
        if rows:
            self.rows.extend(rows)
        if self.response.has_more_pages:
            self.response.start_fetching_next_page()
        else:
            self.loop.call_soon_threadsafe(self._resolve, self.rows, None)

    def _error(self, exc: BaseException) -> None:
        self.loop.call_soon_threadsafe(self._resolve, None, exc)

    def _resolve(self, rows: list[Any] | None, exc: BaseException | None) -> None:
        if self.future.done():
            return
        if exc is not None:
            self.future.set_exception(exc)
        else:
            self.future.set_result(rows or [])


def _retryable(exc: BaseException) -> bool:
    import cassandra
    from cassandra import cluster

    transient: tuple[type[BaseException], ...] = (
        cassandra.Unavailable,
        cassandra.Timeout,
        cassandra.OperationTimedOut,
        cassandra.CoordinationFailure,
        cluster.NoHostAvailable,
        ConnectionError,
    )
    overloaded = getattr(cassandra, "OverloadedErrorMessage", None)
    if overloaded is not None:
        transient += (overloaded,)
    return isinstance(exc, transient)


def _never_sent(exc: BaseException) -> bool:
    """Every host refused the request because its connections were busy (large writes
    still in flight): nothing reached Cassandra, so sending it again is safe."""
    from cassandra import cluster
    from cassandra.connection import ConnectionBusy  # type: ignore[import-untyped]

    if not isinstance(exc, cluster.NoHostAvailable) or not isinstance(exc.errors, dict):
        return False
    return bool(exc.errors) and all(isinstance(e, ConnectionBusy) for e in exc.errors.values())


def _store_error(what: str, exc: BaseException) -> StoreError:
    return StoreError(f"{what}: {type(exc).__name__}: {exc}", retryable=_retryable(exc))


class CassandraProjectionStore(ProjectionStore):
    """Projection views and offsets in a Cassandra keyspace (`cassandra://host:port/keyspace`).

    See the module docstring for the table layout and the fenced, logged-batch commit.
    The driver's calls run through `execute_async`, bridged to asyncio futures, so the
    event loop never blocks on the network.
    """

    def __init__(
        self,
        contact_points: Sequence[tuple[str, int]],
        keyspace: str,
        *,
        replication_factor: int = 1,
        fence_timeout_s: float = 10.0,
        max_batch_kib: int = DEFAULT_MAX_BATCH_KIB,
        url: str | None = None,
    ) -> None:
        if not keyspace or not keyspace.replace("_", "a").isalnum() or not keyspace[0].isalpha():
            raise ConfigError(f"keyspace {keyspace!r} must be letters, digits and underscores")
        if len(keyspace) > _NAME_MAX:
            raise ConfigError(f"keyspace {keyspace!r} is longer than {_NAME_MAX} characters")
        if replication_factor < 1:
            raise ConfigError("replication_factor must be at least 1")
        self.contact_points = list(contact_points)
        self.keyspace = keyspace.lower()
        self.replication_factor = replication_factor
        self.fence_timeout_s = fence_timeout_s
        self.max_batch_bytes = max_batch_kib * 1024
        hosts = ",".join(f"{h}:{p}" for h, p in self.contact_points)
        self.url = url or f"cassandra://{hosts}/{self.keyspace}"
        self._driver = _driver()
        self._cluster: Cluster | None = None
        self._session: Session | None = None
        self._opening: asyncio.Lock | None = None
        self._inflight: asyncio.Semaphore | None = None
        self._prepared: dict[str, PreparedStatement] = {}
        self._cql: dict[str, _TableCql] = {}
        self._known_tables: set[str] = set()
        self.fence_takeovers = 0
        """Fences taken over from a writer presumed dead (for tests and metrics)."""

    # -- driver plumbing -------------------------------------------------------------

    async def _connect(self) -> Session:
        if self._session is not None:
            return self._session
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            connected = self._connected()
            if connected is not None:  # another task connected while this one waited
                return connected
            from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy  # type: ignore[import-untyped]
            from cassandra.query import tuple_factory

            def connect() -> tuple[Cluster, Session]:
                profile = self._driver.ExecutionProfile(
                    load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
                    row_factory=tuple_factory,
                    request_timeout=30,
                )
                cluster = self._driver.Cluster(
                    contact_points=[h for h, _ in self.contact_points],
                    port=self.contact_points[0][1],
                    protocol_version=5,
                    connect_timeout=10,
                    execution_profiles={self._driver.EXEC_PROFILE_DEFAULT: profile},
                )
                session = cluster.connect()
                session.default_fetch_size = 5000
                return cluster, session

            try:
                cluster, session = await asyncio.to_thread(connect)
            except Exception as exc:
                raise _store_error(f"cannot connect to Cassandra at {self.url}", exc) from exc
            self._cluster, self._session = cluster, session
            try:
                await self._migrate()
            except BaseException:
                await self.close()
                raise
            return session

    def _connected(self) -> Session | None:
        return self._session

    async def _prepare(self, cql: str) -> PreparedStatement:
        prepared = self._prepared.get(cql)
        if prepared is None:
            session = await self._connect()
            try:
                prepared = await asyncio.to_thread(session.prepare, cql)
            except Exception as exc:
                raise _store_error(f"preparing {cql[:80]!r}", exc) from exc
            self._prepared[cql] = prepared
        return prepared

    async def _execute(
        self, statement: Any, params: Sequence[Any] | None = None, what: str = ""
    ) -> list[Any]:
        session = await self._connect()
        if self._inflight is None:
            self._inflight = asyncio.Semaphore(_CONCURRENCY)
        async with self._inflight:  # the driver refuses requests past a connection's limit
            for attempt in range(_BUSY_RETRIES + 1):
                try:
                    response = session.execute_async(statement, params)
                except Exception as exc:  # binding errors are raised here, before anything is sent
                    raise _store_error(what or "executing a statement", exc) from exc
                try:
                    return await _Pager(asyncio.get_running_loop(), response).future
                except Exception as exc:
                    if attempt < _BUSY_RETRIES and _never_sent(exc):
                        await asyncio.sleep(0.02 * 2**attempt)
                        continue
                    raise _store_error(what or "executing a statement", exc) from exc
            raise AssertionError("unreachable")

    async def _run(self, cql: str, params: Sequence[Any] = (), what: str = "") -> list[Any]:
        prepared = await self._prepare(cql.replace("{ks}", self.keyspace))
        return await self._execute(prepared, list(params), what)

    async def _ddl(self, cql: str) -> None:
        await self._execute(cql.replace("{ks}", self.keyspace), None, f"schema change {cql[:60]!r}")

    async def _migrate(self) -> None:
        await self._ddl(
            "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication ="
            f" {{'class': 'SimpleStrategy', 'replication_factor': {self.replication_factor}}}"
        )
        await self._ddl(
            "CREATE TABLE IF NOT EXISTS {ks}.projection_store (name text PRIMARY KEY, version int)"
        )
        rows = await self._execute(
            f"SELECT version FROM {self.keyspace}.projection_store WHERE name = 'schema'", None
        )
        version = int(rows[0][0]) if rows and rows[0][0] is not None else 0
        if version > STORE_SCHEMA_VERSION:
            raise StoreError(
                f"keyspace {self.keyspace} was written by a newer agentstream (store schema {version},"
                f" this one knows {STORE_SCHEMA_VERSION})"
            )
        if version < 1:
            await self._ddl(
                "CREATE TABLE IF NOT EXISTS {ks}.projection_offsets (projection text, topic text,"
                " partition int, next_offset bigint, version bigint static, committed bigint static,"
                " fenced_at timestamp static, redo text static, PRIMARY KEY ((projection), topic, partition))"
            )
            await self._ddl(
                "CREATE TABLE IF NOT EXISTS {ks}.projection_redo (projection text, version bigint,"
                " seq int, body text, PRIMARY KEY ((projection, version), seq))"
            )
            await self._ddl(
                "CREATE TABLE IF NOT EXISTS {ks}.projection_schemas (projection text PRIMARY KEY,"
                " fingerprint text, tables text, registered_at timestamp)"
            )
            await self._execute(
                f"INSERT INTO {self.keyspace}.projection_store (name, version) VALUES ('schema', 1)", None
            )

    def _table_cql(self, table: Table) -> _TableCql:
        cql = self._cql.get(table.name)
        if cql is None or cql.table is not table:
            cql = self._cql[table.name] = _TableCql(table)
        return cql

    async def _existing_tables(self) -> set[str]:
        rows = await self._run(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?", [self.keyspace]
        )
        return {r[0] for r in rows}

    async def _fence_state(self, projection: str) -> _FenceState:
        rows = await self._run(
            "SELECT topic, partition, next_offset, version, committed, fenced_at, redo"
            " FROM {ks}.projection_offsets WHERE projection = ?",
            [projection],
            "reading offsets",
        )
        state = _FenceState()
        for topic, partition, next_offset, v, c, at, redo in rows:
            state.version, state.committed, state.redo = int(v or 0), int(c or 0), redo
            if at is not None:
                state.fenced_at = _to_ms(at) / 1000
            if topic is not None and next_offset is not None:
                state.offsets[TopicPartition(topic, int(partition))] = int(next_offset)
        return state

    async def _create(self, schema: ProjectionSchema, dropping: Iterable[str], claim: str) -> None:
        owners: dict[str, str] = {}
        for projection, tables in await self._run(
            "SELECT projection, tables FROM {ks}.projection_schemas", [], "reading schemas"
        ):
            for name in json.loads(tables or "[]"):
                owners[name] = projection
        for table in schema.tables:
            if table.name.startswith(_RESERVED_PREFIX):
                raise ConfigError(f"table names starting with {_RESERVED_PREFIX!r} are the store's own")
            owner = owners.get(table.name)
            if owner is not None and owner != schema.name:
                raise ConfigError(f"table {table.name!r} of {schema.name} already belongs to {owner}")
        existing = await self._existing_tables()
        for name in set(dropping):
            for qt_name in existing:
                if qt_name == name or qt_name.startswith(f"{name}__"):
                    await self._ddl(f"DROP TABLE IF EXISTS {{ks}}.{_quote(qt_name)}")
        for table in schema.tables:
            for statement in _TableCql(table).create(self.keyspace):
                await self._ddl(statement)
        self._prepared.clear()  # tables were recreated: statements prepared on them are stale
        await self._forget_offsets(schema.name)
        await self._run(
            "UPDATE {ks}.projection_schemas SET fingerprint = ?, tables = ?, registered_at = ?"
            " WHERE projection = ? IF fingerprint = ?",
            [schema.fingerprint, json.dumps([t.name for t in schema.tables]), _now_ms(), schema.name, claim],
            "recording a schema",
        )

    async def _forget_offsets(self, projection: str) -> None:
        """Drop the offsets rows and mark any fence finished, so the projection starts at 0."""
        state = await self._fence_state(projection)
        version, offsets = state.version, state.offsets
        statements = [
            (
                "DELETE FROM {ks}.projection_offsets WHERE projection = ? AND topic = ? AND partition = ?",
                [projection, tp.topic, tp.partition],
            )
            for tp in offsets
        ]
        statements.append(
            (
                "UPDATE {ks}.projection_offsets SET version = ?, committed = ?, redo = null"
                " WHERE projection = ?",
                [version + 1, version + 1, projection],
            )
        )
        await self._batch(statements, "resetting offsets")

    async def _batch(self, statements: Sequence[tuple[str, Sequence[Any]]], what: str) -> None:
        from cassandra.query import BatchStatement, BatchType

        batch = BatchStatement(batch_type=BatchType.LOGGED)
        try:
            for cql, params in statements:
                batch.add(await self._prepare(cql.replace("{ks}", self.keyspace)), list(params))
        except StoreError:
            raise
        except Exception as exc:  # a value the driver cannot bind: nothing was sent
            raise _store_error(what, exc) from exc
        await self._execute(batch, None, what)

    # -- ProjectionStore -------------------------------------------------------------

    async def register(self, schema: ProjectionSchema) -> bool:
        await self._connect()
        needed = [qt.name for t in schema.tables for qt in _TableCql(t).query_tables]
        deadline = time.monotonic() + SCHEMA_CHANGE_TIMEOUT_S
        while True:
            row = await self._schema_row(schema.name)
            existing = await self._existing_tables()
            intact = all(name in existing for name in needed)
            if row is not None and row[0] == schema.fingerprint and intact:
                return False
            fingerprint = row[0] if row is not None else None
            if fingerprint is not None and fingerprint.startswith(_PENDING) and time.monotonic() < deadline:
                # Another store is creating or migrating this projection's tables: let it finish.
                await asyncio.sleep(0.1)
                continue
            claim = await self._claim_schema(schema.name, fingerprint)
            if claim is None:
                continue  # lost the race: look again
            old = json.loads(row[1] or "[]") if row is not None else []
            await self._create(schema, [*old, *(t.name for t in schema.tables)], claim)
            return True

    async def _schema_row(self, projection: str) -> tuple[str | None, str | None] | None:
        rows = await self._run(
            "SELECT fingerprint, tables FROM {ks}.projection_schemas WHERE projection = ?",
            [projection],
            "reading a schema",
        )
        return (rows[0][0], rows[0][1]) if rows else None

    async def _claim_schema(self, projection: str, fingerprint: str | None) -> str | None:
        """Mark the projection's schema as being changed by this store; None if another did first.

        Schema rows are written by lightweight transactions only, so two stores that
        register one projection at once never drop each other's fresh tables.
        """
        claim = f"{_PENDING}{uuid.uuid4().hex}"
        if fingerprint is None:
            rows = await self._run(
                "INSERT INTO {ks}.projection_schemas (projection, fingerprint, tables, registered_at)"
                " VALUES (?, ?, '[]', ?) IF NOT EXISTS",
                [projection, claim, _now_ms()],
                "claiming a schema change",
            )
        else:
            rows = await self._run(
                "UPDATE {ks}.projection_schemas SET fingerprint = ?, registered_at = ?"
                " WHERE projection = ? IF fingerprint = ?",
                [claim, _now_ms(), projection, fingerprint],
                "claiming a schema change",
            )
        return claim if rows and rows[0][0] else None

    async def reset(self, schema: ProjectionSchema) -> None:
        await self._connect()
        rows = await self._run(
            "SELECT tables FROM {ks}.projection_schemas WHERE projection = ?", [schema.name], "reading"
        )
        old = set(json.loads(rows[0][0] or "[]")) if rows else set()
        existing = await self._existing_tables()
        if (
            rows
            and old == {t.name for t in schema.tables}
            and all(qt.name in existing for t in schema.tables for qt in _TableCql(t).query_tables)
        ):
            # Same tables: empty them (TRUNCATE is far cheaper than DROP + CREATE).
            await self._forget_offsets(schema.name)
            for table in schema.tables:
                for qt in _TableCql(table).query_tables:
                    await self._ddl(f"TRUNCATE TABLE {{ks}}.{_quote(qt.name)}")
            await self._forget_offsets(schema.name)
        else:
            row = await self._schema_row(schema.name)
            claim = await self._claim_schema(schema.name, row[0] if row is not None else None)
            if claim is None:
                raise StoreError(f"{schema.name}: another store is changing its tables", retryable=True)
            await self._create(schema, [*old, *(t.name for t in schema.tables)], claim)
        self._notify()

    async def offsets(self, projection: str) -> dict[TopicPartition, int]:
        return (await self._fence_state(projection)).offsets

    async def applied(self, projection: str, topic: str, partition: int) -> int:
        rows = await self._run(
            "SELECT next_offset FROM {ks}.projection_offsets"
            " WHERE projection = ? AND topic = ? AND partition = ?",
            [projection, topic, partition],
            "reading an offset",
        )
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    async def load(self, table: Table, key: Key) -> Row | None:
        cql = self._table_cql(table)
        rows = await self._run(cql.load, cql.encode_key(key), f"reading {table.name}")
        return cql.decode_row(rows[0]) if rows else None

    async def _fence(self, projection: str, expected: Mapping[TopicPartition, int]) -> int:
        """Take the projection's fence; returns the version the batch must mark committed."""
        state = await self._fence_state(projection)
        version, committed, fenced_at, current = (
            state.version,
            state.committed,
            state.fenced_at,
            state.offsets,
        )
        if current != dict(expected):
            raise ProjectionConflict(
                f"{projection}: offsets moved since the batch was read"
                " (another projector or a rebuild is running)"
            )
        if committed != version:
            age = time.time() - (fenced_at or 0.0)
            if age < self.fence_timeout_s:
                raise ProjectionConflict(
                    f"{projection}: another projector is committing a batch (fenced {age:.1f}s ago)"
                )
            self.fence_takeovers += 1
            if state.redo:
                # The dead writer had logged its whole batch: finish it, then the batch at
                # hand (built on the state before it) must be read again.
                await self._replay(state.redo)
                raise ProjectionConflict(f"{projection}: finished a dead projector's batch; read again")
        rows = await self._run(
            "UPDATE {ks}.projection_offsets SET version = ?, fenced_at = ? WHERE projection = ?"
            " IF version = ? AND committed = ?",
            [version + 1, _now_ms(), projection, version or None, committed or None],
            f"fencing {projection}",
        )
        if not rows or not rows[0][0]:
            raise ProjectionConflict(f"{projection}: another projector took the fence first")
        return version + 1

    async def _release(self, fenced: Mapping[str, int]) -> None:
        """Finish fences taken for a batch that will not be written (rows and offsets unchanged)."""
        for projection, version in fenced.items():
            await self._run(
                "UPDATE {ks}.projection_offsets SET committed = ? WHERE projection = ?",
                [version, projection],
                f"releasing the fence of {projection}",
            )

    async def commit(self, txn: ViewTransaction) -> None:
        await self._connect()
        # Encode first: a row the driver cannot take fails here, before any fence is taken.
        changes: list[tuple[_TableCql, Key, dict[str, Any] | None]] = []
        for (_, key), (table, row) in txn.changes.items():
            cql = self._table_cql(table)
            changes.append((cql, key, None if row is None else cql.encode_row(row)))
        fenced: dict[str, int] = {}
        logged = False
        try:
            for projection, advance in txn.offsets.items():
                fenced[projection] = await self._fence(projection, advance.expected)
            views = await self._statements(changes)
            final: list[tuple[str, Sequence[Any]]] = []
            for projection, advance in txn.offsets.items():
                for tp, offset in advance.new.items():
                    final.append(
                        (
                            "UPDATE {ks}.projection_offsets SET next_offset = ?"
                            " WHERE projection = ? AND topic = ? AND partition = ?",
                            [offset, projection, tp.topic, tp.partition],
                        )
                    )
                final.append(
                    (
                        "UPDATE {ks}.projection_offsets SET committed = ?, redo = null WHERE projection = ?",
                        [fenced[projection], projection],
                    )
                )
            if _size(views) + _size(final) <= self.max_batch_bytes:
                if views or final:
                    await self._batch([*views, *final], "committing a projection batch")
            else:
                logged = True
                await self._commit_large(fenced, views, final)
        except ProjectionConflict:
            await self._release(fenced)
            raise
        except StoreError as exc:
            if not exc.retryable and not logged:
                # The batch was refused as a whole (a bad value): nothing was written.
                await self._release(fenced)
            raise
        self._notify()

    async def _commit_large(
        self,
        fenced: Mapping[str, int],
        views: Sequence[tuple[str, Sequence[Any]]],
        final: Sequence[tuple[str, Sequence[Any]]],
    ) -> None:
        """A batch too large for one message: log it whole first, then apply it in pieces.

        The redo log (`projection_redo`) holds every statement; one logged batch then marks
        each fenced projection with its address. Only after that are view rows written,
        so a crash leaves either no view change at all (no mark: the fence is taken over
        and the events applied again) or a complete redo log (the mark: whoever takes the
        fence over replays it, puts and deletes by primary key, so replaying twice is
        harmless). The offsets and `committed` move last, in one logged batch.
        """
        lead = min(fenced)
        address = f"{lead}:{fenced[lead]}"
        chunks: list[list[Any]] = [[]]
        size = 0
        entries = [("view", c, p) for c, p in views] + [("final", c, p) for c, p in final]
        for kind, cql, params in entries:
            chunks[-1].append([kind, cql, list(params)])
            size += _size([(cql, params)])
            if size > _REDO_CHUNK_BYTES:
                chunks.append([])
                size = 0
        await self._gather(
            [
                (
                    "INSERT INTO {ks}.projection_redo (projection, version, seq, body) VALUES (?, ?, ?, ?)",
                    [lead, fenced[lead], seq, json.dumps(chunk)],
                )
                for seq, chunk in enumerate(chunks)
            ]
        )
        await self._batch(
            [
                ("UPDATE {ks}.projection_offsets SET redo = ? WHERE projection = ?", [address, projection])
                for projection in fenced
            ],
            "marking a logged batch",
        )
        await self._apply_logged(views, final, address)

    async def _apply_logged(
        self,
        views: Sequence[tuple[str, Sequence[Any]]],
        final: Sequence[tuple[str, Sequence[Any]]],
        address: str,
    ) -> None:
        await self._gather(views)
        await self._batch(final, "committing offsets of a logged batch")
        lead, _, version = address.rpartition(":")
        await self._run(
            "DELETE FROM {ks}.projection_redo WHERE projection = ? AND version = ?",
            [lead, int(version)],
            "dropping a redo log",
        )

    async def _replay(self, address: str) -> None:
        """Finish a logged batch whose writer died: apply its redo log again."""
        lead, _, version = address.rpartition(":")
        rows = await self._run(
            "SELECT body FROM {ks}.projection_redo WHERE projection = ? AND version = ?",
            [lead, int(version)],
            "reading a redo log",
        )
        views: list[tuple[str, Sequence[Any]]] = []
        final: list[tuple[str, Sequence[Any]]] = []
        for (body,) in rows:
            for kind, cql, params in json.loads(body):
                (views if kind == "view" else final).append((cql, params))
        if not final:
            raise StoreError(f"the redo log {address} is incomplete", retryable=False)
        await self._apply_logged(views, final, address)

    async def _gather(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Run statements concurrently (`_execute` bounds how many are in flight)."""
        await asyncio.gather(*(self._run(c, p, "writing a logged batch") for c, p in statements))

    async def _statements(
        self, changes: Sequence[tuple[_TableCql, Key, dict[str, Any] | None]]
    ) -> list[tuple[str, Sequence[Any]]]:
        """Deletes of old copies and index entries, and puts of new ones, for the batch."""
        indexed = [(cql, key) for cql, key, _ in changes if cql.indexes]
        olds = await asyncio.gather(
            *(self._run(c.load, c.encode_key(k), "reading a row") for c, k in indexed)
        )
        old_rows: dict[tuple[str, Key], dict[str, Any]] = {}
        for (cql, key), rows in zip(indexed, olds, strict=True):
            if rows:
                old_rows[(cql.table.name, key)] = cql.encode_row(cql.decode_row(rows[0]))
        statements: list[tuple[str, Sequence[Any]]] = []
        for cql, key, row in changes:
            old = old_rows.get((cql.table.name, key))
            for qt in cql.query_tables:
                is_index = qt.name in cql.index_names
                new_values = None if row is None else (cql.index_values(qt, row) if is_index else row)
                if is_index and old is not None:
                    old_values = cql.index_values(qt, old)
                    if old_values is not None and (
                        new_values is None or any(old_values[c] != new_values[c] for c in qt.primary)
                    ):
                        where = " AND ".join(f"{_quote(c)} = ?" for c in qt.primary)
                        statements.append(
                            (
                                f"DELETE FROM {{ks}}.{_quote(qt.name)} WHERE {where}",
                                [old_values[c] for c in qt.primary],
                            )
                        )
                if row is None:
                    if not is_index:
                        where = " AND ".join(f"{_quote(c)} = ?" for c in qt.primary)
                        encoded_key = dict(zip(cql.table.key, cql.encode_key(key), strict=True))
                        statements.append(
                            (
                                f"DELETE FROM {{ks}}.{_quote(qt.name)} WHERE {where}",
                                [encoded_key[c] for c in qt.primary],
                            )
                        )
                elif new_values is not None:
                    columns = list(new_values)
                    statements.append(
                        (
                            f"INSERT INTO {{ks}}.{_quote(qt.name)} ({', '.join(_quote(c) for c in columns)})"
                            f" VALUES ({', '.join('?' * len(columns))})",
                            [new_values[c] for c in columns],
                        )
                    )
        return statements

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
        if any(equal[c] is None for c in plan.equal):
            return []  # `column = NULL` matches nothing, as in SQL
        cql = self._table_cql(table)
        kinds = table.columns
        if index is not None:
            qt = cql.indexes[index]
        elif plan.equal or cql.by_key is None:
            qt = cql.main
        else:
            qt = cql.by_key
        where = ['"tenant_id" = ?', *(f"{_quote(c)} = ?" for c in plan.equal)]
        params: list[Any] = [tenant, *(_encode(kinds[c], equal[c]) for c in plan.equal)]
        if start is not None or stop is not None:
            first = plan.order[0]
            if first in qt.flags:
                where.append(f"{_quote(_flag(first))} = ?")
                params.append(True)
            if start is not None:
                where.append(f"{_quote(first)} >= ?")
                params.append(_encode(kinds[first], start))
            if stop is not None:
                where.append(f"{_quote(first)} < ?")
                params.append(_encode(kinds[first], stop))
        flags = "".join(f", {_quote(_flag(c))}" for c in qt.flags)
        statement = (
            f"SELECT {cql.select_cols}{flags} FROM {{ks}}.{_quote(qt.name)} WHERE {' AND '.join(where)}"
        )
        if descending and qt.clustering:
            statement += " ORDER BY " + ", ".join(f"{_quote(c)} DESC" for c in qt.clustering)
        statement += f" LIMIT {int(limit)}"
        rows = await self._run(statement, params, f"querying {table.name}")
        width = len(cql.columns)
        out = []
        for values in rows:
            row = cql.decode_row(values[:width])
            for column, present in zip(qt.flags, values[width:], strict=True):
                if not present:
                    row[column] = None
            out.append(row)
        return out

    async def scan(self, table: Table) -> list[Row]:
        cql = self._table_cql(table)
        rows = await self._run(
            f"SELECT {cql.select_cols} FROM {{ks}}.{_quote(cql.main.name)}", [], f"scanning {table.name}"
        )
        decoded = [cql.decode_row(r) for r in rows]
        decoded.sort(key=lambda r: tuple(_sortable(r[c]) for c in table.key))
        return decoded

    async def drop_keyspace(self) -> None:
        """Drop the whole keyspace: every view and offset (for tests and tools)."""
        await self._connect()
        await self._ddl("DROP KEYSPACE IF EXISTS {ks}")

    async def close(self) -> None:
        cluster, self._cluster, self._session = self._cluster, None, None
        self._prepared.clear()
        if cluster is not None:
            await asyncio.to_thread(cluster.shutdown)


@dataclass
class _FenceState:
    """A projection's offsets partition: offsets, fence version and commit mark."""

    version: int = 0
    committed: int = 0
    fenced_at: float | None = None
    redo: str | None = None
    offsets: dict[TopicPartition, int] = field(default_factory=dict)


def _size(statements: Sequence[tuple[str, Sequence[Any]]]) -> int:
    """About how many bytes the statements' values take on the wire."""
    total = 0
    for _, params in statements:
        for value in params:
            total += 8 + (len(value.encode()) if isinstance(value, str) else 8)
    return total


def _sortable(value: Any) -> Any:
    return (value is not None, value if value is not None else 0)


def _now_ms() -> int:
    return int(time.time() * 1000)


def parse_url(url: str) -> tuple[list[tuple[str, int]], str, dict[str, str]]:
    """Contact points, keyspace and query options of a `cassandra://` URL."""
    parts = urlsplit(url)
    if parts.scheme != "cassandra":
        raise ConfigError(f"{url!r} is not a cassandra:// URL")
    keyspace = parts.path.strip("/")
    if not parts.netloc or not keyspace:
        raise ConfigError(f"{url!r}: use cassandra://host:port/keyspace")
    hosts = []
    for item in parts.netloc.split(","):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
        try:
            hosts.append((host or item, int(port) if port else DEFAULT_PORT))
        except ValueError as exc:
            raise ConfigError(f"{url!r}: bad port in {item!r}") from exc
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return hosts, keyspace, query


def open_cassandra_store(url: str) -> CassandraProjectionStore:
    """A store for `cassandra://host:port/keyspace[?replication_factor=N&fence_timeout_s=S]`."""
    hosts, keyspace, query = parse_url(url)
    unknown = query.keys() - {"replication_factor", "fence_timeout_s", "max_batch_kib"}
    if unknown:
        raise ConfigError(f"{url!r}: unknown options {sorted(unknown)}")
    try:
        replication = int(query.get("replication_factor", "1"))
        fence_timeout = float(query.get("fence_timeout_s", "10"))
        max_batch_kib = int(query.get("max_batch_kib", str(DEFAULT_MAX_BATCH_KIB)))
    except ValueError as exc:
        raise ConfigError(f"{url!r}: {exc}") from exc
    return CassandraProjectionStore(
        hosts,
        keyspace,
        replication_factor=replication,
        fence_timeout_s=fence_timeout,
        max_batch_kib=max_batch_kib,
    )


class CassandraIdempotencyLedger:
    """The idempotency ledger in a Cassandra keyspace: claims are lightweight transactions.

    `claim` inserts the key with `IF NOT EXISTS`, so of any number of workers claiming a
    key at once exactly one is told `new` and runs the side effect; the others learn
    `started` (and count an attempt, by compare-and-set) or `completed`. Every write of a
    ledger row is a lightweight transaction, so LWT and plain writes never mix on a cell.
    """

    def __init__(self, store: CassandraProjectionStore) -> None:
        self._store = store
        self._ready = False

    async def _table(self) -> None:
        if not self._ready:
            await self._store._connect()
            await self._store._ddl(
                "CREATE TABLE IF NOT EXISTS {ks}.idempotency (key text PRIMARY KEY, run_id text,"
                " tool text, state text, result text, attempts int, started_at timestamp,"
                " completed_at timestamp)"
            )
            self._ready = True

    async def claim(self, key: str, run_id: str, tool: str) -> tuple[str, str | None, int]:
        """(state, result_json, attempts) as the `Claim` of `projections.idempotency` holds them."""
        await self._table()
        rows = await self._store._run(
            "INSERT INTO {ks}.idempotency (key, run_id, tool, state, attempts, started_at)"
            " VALUES (?, ?, ?, 'started', 1, ?) IF NOT EXISTS",
            [key, run_id, tool, _now_ms()],
            "claiming an idempotency key",
        )
        for _ in range(100):
            if rows[0][0]:
                return "new", None, 1
            current = await self._store._run(
                "SELECT state, result, attempts FROM {ks}.idempotency WHERE key = ?",
                [key],
                "reading an idempotency key",
            )
            state, result, attempts = current[0]
            if state == "completed":
                return "completed", result, int(attempts)
            rows = await self._store._run(
                "UPDATE {ks}.idempotency SET attempts = ? WHERE key = ?"
                " IF state = 'started' AND attempts = ?",
                [int(attempts) + 1, key, int(attempts)],
                "counting an attempt",
            )
            if rows[0][0]:
                return "started", None, int(attempts) + 1
            rows = [(False,)]
        raise StoreError(f"idempotency key {key!r}: too much contention", retryable=True)

    async def complete(self, key: str, result_json: str) -> None:
        """Record the result of the side effect for the key."""
        await self._table()
        await self._store._run(
            "UPDATE {ks}.idempotency SET state = 'completed', result = ?, completed_at = ?"
            " WHERE key = ? IF EXISTS",
            [result_json, _now_ms(), key],
            "completing an idempotency key",
        )

    async def aclose(self) -> None:
        await self._store.close()


def open_cassandra_ledger(url: str) -> CassandraIdempotencyLedger:
    """A ledger for `cassandra://host:port/keyspace[?replication_factor=N]`."""
    return CassandraIdempotencyLedger(open_cassandra_store(url))
