"""Fixtures of the projection unit tests: a fresh SQLite projection store each."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from projections.stores.sqlite import SqliteProjectionStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteProjectionStore]:
    opened = SqliteProjectionStore(tmp_path / "views.db")
    yield opened
    await opened.close()
