"""Projection stores the store and projection suites run against: SQLite and Cassandra.

`store_backend` is parametrized; a suite opens stores through it, so one test body runs
on every backend. On Cassandra each test gets keyspaces of its own (dropped afterwards),
so tests never see each other's views even on a shared node.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from projections.stores import open_store
from projections.stores.base import ProjectionStore
from tests.conftest import service_address

CASSANDRA_FENCE_TIMEOUT_S = 2.0
"""Short in tests: a SIGKILLed projector's fence is taken over quickly."""

STORE_PARAMS = [
    pytest.param("sqlite"),
    pytest.param("cassandra", marks=[pytest.mark.integration, pytest.mark.cassandra]),
]


@dataclass
class StoreBackend:
    """Opens stores of one backend by label: the same label is the same storage."""

    name: str
    tmp_path: Path
    address: str = ""
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    labels: set[str] = field(default_factory=set)

    def url(self, label: str = "views") -> str:
        self.labels.add(label)
        if self.name == "sqlite":
            return f"sqlite://{self.tmp_path}/{label}.db"
        return f"cassandra://{self.address}/{self.prefix}_{label}?fence_timeout_s={CASSANDRA_FENCE_TIMEOUT_S}"

    def open(self, label: str = "views") -> ProjectionStore:
        return open_store(self.url(label))

    async def cleanup(self) -> None:
        if self.name != "cassandra":
            return
        from projections.stores.cassandra import CassandraProjectionStore

        for label in self.labels:
            store = open_store(self.url(label))
            assert isinstance(store, CassandraProjectionStore)
            try:
                await store.drop_keyspace()
            finally:
                await store.close()


def cassandra_address() -> str:
    return service_address("AGENTSTREAM_TEST_CASSANDRA", "a Cassandra node")


@pytest.fixture(params=STORE_PARAMS)
async def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreBackend]:
    address = cassandra_address() if request.param == "cassandra" else ""
    backend = StoreBackend(request.param, tmp_path, address)
    yield backend
    await backend.cleanup()


@pytest.fixture
async def store(store_backend: StoreBackend) -> AsyncIterator[ProjectionStore]:
    opened = store_backend.open()
    yield opened
    await opened.close()
