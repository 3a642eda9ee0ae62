"""Schema registries: the embedded one (SQLite) and a client for the Confluent REST API.

Subjects follow the TopicRecordNameStrategy, `<topic>-<record full name>`, because one
topic carries many event types. Ids are global across subjects, as in Confluent's
registry: the 4-byte id in every record's header names exactly one writer schema.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from avro.schema import parse as parse_avro

from streams.errors import ConfigError, IncompatibleSchema, SchemaRegistryError


class Compatibility(StrEnum):
    """Compatibility levels, with the meaning Confluent's registry gives them."""

    NONE = "NONE"
    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"


@dataclass(frozen=True)
class CompatibilityResult:
    """Whether a schema may be registered under a subject, and why not."""

    compatible: bool
    messages: list[str] = field(default_factory=list)


def subject_for(topic: str, record_fullname: str) -> str:
    """Subject name under the TopicRecordNameStrategy."""
    return f"{topic}-{record_fullname}"


def _reads(reader: str, writer: str) -> list[str]:
    """Problems a reader with schema `reader` has decoding data written with `writer`."""
    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    result = checker.get_compatibility(parse_avro(reader), parse_avro(writer))
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    # The checker keeps messages and locations as unordered sets: report both, sorted.
    kinds = ", ".join(sorted({kind.value for kind in result.incompatibilities}))
    where = ", ".join(sorted(result.locations))
    return [f"{kinds}: {message} (at {where})" for message in sorted(result.messages)]


def check_compatibility(candidate: str, existing: list[str], level: Compatibility) -> CompatibilityResult:
    """Check `candidate` against the `existing` versions (oldest first) at `level`."""
    if level is Compatibility.NONE or not existing:
        return CompatibilityResult(True)
    against = existing if level.name.endswith("TRANSITIVE") else existing[-1:]
    problems: list[str] = []
    for old in against:
        if level.name.startswith(("BACKWARD", "FULL")):
            problems += _reads(candidate, old)
        if level.name.startswith(("FORWARD", "FULL")):
            problems += _reads(old, candidate)
    return CompatibilityResult(not problems, problems)


def canonical(schema_json: str) -> str:
    """A stable text of a schema: the registry deduplicates on it."""
    return json.dumps(json.loads(schema_json), separators=(",", ":"), sort_keys=True)


class SchemaRegistry(ABC):
    """Stores writer schemas under subjects and hands out their global ids."""

    @abstractmethod
    async def register(self, subject: str, schema_json: str) -> int:
        """Register a schema under a subject (idempotent) and return its global id.

        Raises `IncompatibleSchema` if the subject's compatibility level forbids it.
        """

    @abstractmethod
    async def schema_by_id(self, schema_id: int) -> str:
        """The schema text with this id; raises `SchemaRegistryError` if unknown."""

    @abstractmethod
    async def check(self, subject: str, schema_json: str) -> CompatibilityResult:
        """Whether registering the schema under the subject would be allowed."""

    @abstractmethod
    async def set_compatibility(self, subject: str, level: Compatibility) -> None:
        """Set the compatibility level enforced for one subject."""

    async def aclose(self) -> None:
        """Release connections."""


class EmbeddedSchemaRegistry(SchemaRegistry):
    """A registry in a SQLite file: the single-machine default.

    Several processes may share the file; ids are assigned inside write transactions.
    The default level is BACKWARD, as in Confluent's registry.
    """

    def __init__(self, path: str | Path, default_level: Compatibility = Compatibility.BACKWARD):
        self.path = str(path)
        self.default_level = default_level
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS schemas (
              id INTEGER PRIMARY KEY AUTOINCREMENT,
              fingerprint TEXT NOT NULL UNIQUE,
              schema TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS subject_versions (
              subject TEXT NOT NULL, version INTEGER NOT NULL, schema_id INTEGER NOT NULL,
              PRIMARY KEY (subject, version));
            CREATE TABLE IF NOT EXISTS subject_config (
              subject TEXT PRIMARY KEY, level TEXT NOT NULL);
            """
        )
        self._lock = asyncio.Lock()

    def _versions(self, subject: str) -> list[tuple[int, str]]:
        rows = self._db.execute(
            "SELECT s.id, s.schema FROM subject_versions v JOIN schemas s ON s.id = v.schema_id"
            " WHERE v.subject = ? ORDER BY v.version",
            (subject,),
        ).fetchall()
        return [(int(r[0]), str(r[1])) for r in rows]

    def _level(self, subject: str) -> Compatibility:
        row = self._db.execute("SELECT level FROM subject_config WHERE subject = ?", (subject,)).fetchone()
        return Compatibility(row[0]) if row else self.default_level

    async def register(self, subject: str, schema_json: str) -> int:
        text = canonical(schema_json)
        fingerprint = hashlib.sha256(text.encode()).hexdigest()
        async with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                versions = self._versions(subject)
                row = self._db.execute(
                    "SELECT id FROM schemas WHERE fingerprint = ?", (fingerprint,)
                ).fetchone()
                if row and any(schema_id == row[0] for schema_id, _ in versions):
                    self._db.execute("COMMIT")
                    return int(row[0])
                result = check_compatibility(text, [s for _, s in versions], self._level(subject))
                if not result.compatible:
                    raise IncompatibleSchema(subject, result.messages)
                if row:
                    schema_id = int(row[0])
                else:
                    cur = self._db.execute(
                        "INSERT INTO schemas (fingerprint, schema) VALUES (?, ?)", (fingerprint, text)
                    )
                    schema_id = int(cur.lastrowid or 0)
                self._db.execute(
                    "INSERT INTO subject_versions (subject, version, schema_id) VALUES (?, ?, ?)",
                    (subject, len(versions) + 1, schema_id),
                )
                self._db.execute("COMMIT")
                return schema_id
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    async def schema_by_id(self, schema_id: int) -> str:
        row = self._db.execute("SELECT schema FROM schemas WHERE id = ?", (schema_id,)).fetchone()
        if row is None:
            raise SchemaRegistryError(f"schema id {schema_id} is not in the registry at {self.path}")
        return str(row[0])

    async def check(self, subject: str, schema_json: str) -> CompatibilityResult:
        versions = [s for _, s in self._versions(subject)]
        return check_compatibility(canonical(schema_json), versions, self._level(subject))

    async def set_compatibility(self, subject: str, level: Compatibility) -> None:
        self._db.execute(
            "INSERT INTO subject_config (subject, level) VALUES (?, ?)"
            " ON CONFLICT (subject) DO UPDATE SET level = excluded.level",
            (subject, level.value),
        )

    async def aclose(self) -> None:
        self._db.close()


class ConfluentSchemaRegistry(SchemaRegistry):
    """Client for any registry that speaks Confluent's Schema Registry REST API.

    `base_url` is the API root, for example `http://127.0.0.1:8081` for Confluent or
    `http://127.0.0.1:8080/apis/ccompat/v7` for Apicurio.
    """

    _CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"

    def __init__(self, base_url: str, *, timeout_s: float = 10.0, auth: tuple[str, str] | None = None):
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout_s,
            auth=auth,
            headers={"Accept": self._CONTENT_TYPE, "Content-Type": self._CONTENT_TYPE},
        )

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        try:
            return await self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise SchemaRegistryError(
                f"schema registry at {self.base_url} unreachable: {exc!r}", retryable=True
            ) from exc

    @staticmethod
    def _error(response: httpx.Response, what: str) -> SchemaRegistryError:
        try:
            detail = response.json().get("message", response.text)
        except ValueError:
            detail = response.text
        return SchemaRegistryError(
            f"{what} failed with HTTP {response.status_code}: {detail}",
            retryable=response.status_code >= 500 or response.status_code == 429,
        )

    async def register(self, subject: str, schema_json: str) -> int:
        response = await self._call(
            "POST",
            f"/subjects/{quote(subject, safe='')}/versions",
            {"schema": schema_json, "schemaType": "AVRO"},
        )
        if response.status_code == 409:
            result = await self.check(subject, schema_json)
            raise IncompatibleSchema(subject, result.messages or [response.text])
        if response.status_code != 200:
            raise self._error(response, f"registering {subject}")
        return int(response.json()["id"])

    async def schema_by_id(self, schema_id: int) -> str:
        response = await self._call("GET", f"/schemas/ids/{schema_id}")
        if response.status_code != 200:
            raise self._error(response, f"fetching schema id {schema_id}")
        return str(response.json()["schema"])

    async def check(self, subject: str, schema_json: str) -> CompatibilityResult:
        response = await self._call(
            "POST",
            f"/compatibility/subjects/{quote(subject, safe='')}/versions/latest?verbose=true",
            {"schema": schema_json, "schemaType": "AVRO"},
        )
        if response.status_code == 404:
            return CompatibilityResult(True)  # no version yet: anything goes
        if response.status_code != 200:
            raise self._error(response, f"checking {subject}")
        body = response.json()
        return CompatibilityResult(bool(body["is_compatible"]), list(body.get("messages") or []))

    async def set_compatibility(self, subject: str, level: Compatibility) -> None:
        response = await self._call(
            "PUT", f"/config/{quote(subject, safe='')}", {"compatibility": level.value}
        )
        if response.status_code != 200:
            raise self._error(response, f"setting compatibility of {subject}")

    async def aclose(self) -> None:
        await self._http.aclose()


def open_registry(url: str) -> SchemaRegistry:
    """A registry for a URL: `sqlite:///path` (embedded) or `http(s)://...` (Confluent API)."""
    if url.startswith("sqlite://"):
        return EmbeddedSchemaRegistry(url.removeprefix("sqlite://") or ":memory:")
    if url.startswith(("http://", "https://")):
        return ConfluentSchemaRegistry(url)
    raise ConfigError(f"unsupported schema registry URL {url!r}: use sqlite:///PATH or http(s)://HOST")
