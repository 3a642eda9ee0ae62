"""Backends the contract suites run against: every EventLog implementation.

The fixtures are registered for every test directory by tests/conftest.py.

Each test gets its own topic prefix, so tests never see each other's records even on a
shared Kafka broker.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams.backends import open_log
from streams.codec import EventCodec
from streams.log import EventLog
from streams.registry import EmbeddedSchemaRegistry
from streams.topics import Topics


@dataclass
class Backend:
    """What a contract test needs: a URL to open logs with, and fresh topic names."""

    name: str
    url: str
    topics: Topics
    registry_path: Path

    def open(self) -> EventLog:
        return open_log(self.url)

    def codec(self) -> EventCodec:
        return EventCodec(EmbeddedSchemaRegistry(self.registry_path))


def _sqlite(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path}/log.db"


@pytest.fixture(
    params=[
        pytest.param("sqlite", marks=pytest.mark.contract),
        pytest.param("kafka", marks=[pytest.mark.contract, pytest.mark.integration, pytest.mark.kafka]),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    topics = Topics(prefix=prefix, partitions=3)
    if request.param == "sqlite":
        url = _sqlite(tmp_path)
    else:
        url = f"kafka://{request.getfixturevalue('kafka_bootstrap')}"
    return Backend(request.param, url, topics, tmp_path / "registry.db")


@pytest.fixture
async def log(backend: Backend) -> AsyncIterator[EventLog]:
    opened = backend.open()
    for spec in backend.topics.specs():
        await opened.create_topic(spec)
    yield opened
    await opened.close()
