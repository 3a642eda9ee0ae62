"""Run views over the episodic view: a tail starts where the view got to, runs older than
that are read from the view, and a run nobody started is known absent without a scan."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from projections.episodic import EpisodicProjection
from projections.projector import Projector
from projections.run_view import RunViews
from projections.stores.sqlite import SqliteProjectionStore
from streams.codec import EventCodec
from streams.envelope import root_meta
from streams.events import Budget, Event, GoalChanged, TaskSubmitted
from streams.registry import EmbeddedSchemaRegistry
from streams.sqlite_log import SqliteEventLog
from streams.topics import Topics
from tests.support.runs import publish

pytestmark = pytest.mark.unit
TOPICS = Topics("views", 1)


def _task(run_id: str) -> TaskSubmitted:
    return TaskSubmitted(meta=root_meta(run_id, "acme", "test"), goal=f"goal of {run_id}", budget=Budget())


def _goal(run_id: str, goal: str) -> GoalChanged:
    return GoalChanged(meta=root_meta(run_id, "acme", "test"), goal=goal, requested_by="test")


class _CountingLog(SqliteEventLog):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.key_reads = 0

    async def read_key(self, *args: Any, **kwargs: Any) -> Any:
        self.key_reads += 1
        return await super().read_key(*args, **kwargs)


async def test_views_start_from_the_episodic_view_and_never_scan(tmp_path: Path) -> None:
    log = _CountingLog(tmp_path / "log.db")
    codec = EventCodec(EmbeddedSchemaRegistry(tmp_path / "registry.db"))
    store = SqliteProjectionStore(tmp_path / "views.db")
    for spec in TOPICS.specs():
        await log.create_topic(spec)
    projector = Projector(log, codec, store, [EpisodicProjection()], topic=TOPICS.events)
    await projector.start()

    async def publish_events(events: list[Event]) -> None:
        await publish(log, codec, TOPICS.events, events)

    await publish_events([_task("old"), _goal("old", "second goal")])
    while await projector.step():
        pass
    views = RunViews(log, codec, TOPICS, store=store, history_wait_s=5)
    assert await views.events("nobody", tenant="acme") == []  # the tail starts at the view's end
    await publish_events([_goal("old", "third goal"), _task("new")])

    new = await views.events("new", tenant="acme")
    assert [e.type_name for e in new] == ["TaskSubmitted"], "a run that starts after the tail began is cached"
    assert await views.events("never-started", tenant="acme") == [], "absent, without waiting for the view"

    # The old run's third event is past the tail's start and not projected yet: its view
    # is read once the projector has caught up.
    waiting = asyncio.create_task(views.events("old", tenant="acme"))
    await asyncio.sleep(0.05)
    assert not waiting.done(), "it waits for the episodic view to reach the tail"
    while await projector.step():
        pass
    old = await asyncio.wait_for(waiting, 5)
    assert [getattr(e, "goal", None) for e in old] == ["goal of old", "second goal", "third goal"]
    assert log.key_reads == 0, "no run was read back by scanning the log"
    await store.close()
    await log.close()


async def test_without_a_view_store_missing_runs_are_read_back_by_key(tmp_path: Path) -> None:
    log = _CountingLog(tmp_path / "log.db")
    codec = EventCodec(EmbeddedSchemaRegistry(tmp_path / "registry.db"))
    for spec in TOPICS.specs():
        await log.create_topic(spec)
    await publish(log, codec, TOPICS.events, [_task("a"), _goal("a", "g2")])
    views = RunViews(log, codec, TOPICS, cache_runs=1)
    assert len(await views.events("a")) == 2
    await publish(log, codec, TOPICS.events, [_task("b")])
    assert len(await views.events("b")) == 1  # evicts "a"
    assert len(await views.events("a")) == 2, "an evicted run is read back"
    assert log.key_reads == 1
    assert await views.events("absent") == [], "the tail read from offset 0: absent is absent"
    await log.close()
