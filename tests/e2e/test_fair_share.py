"""A fair share per tenant: a tenant with a backlog of a thousand runs does not starve a
tenant with five. Model calls take turns across tenants (deficit round robin over the
model slots), so the small tenant's runs finish while the big one's are still waiting."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentstream.config import Settings
from agentstream.runtime import AgentRuntime
from handlers.intake import run_id_for
from streams.envelope import root_meta
from streams.events import Budget, TaskSubmitted
from streams.log import OutgoingRecord
from streams.topics import Topics
from tests.support.scripted_provider import ConversationalProvider

BACKLOG = 1_000
SMALL = 5
SLOTS = 4

pytestmark = pytest.mark.slow


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConversationalProvider]:
    # Every call answers at once with the final answer, after a short model latency.
    with ConversationalProvider(steps=0, latency_s=0.05) as running:
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.setenv("OPENAI_BASE_URL", running.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        yield running


def _task(tenant: str, i: int) -> TaskSubmitted:
    return TaskSubmitted(
        meta=root_meta("", tenant, "upstream"),
        goal=f"{tenant} task {i}",
        model="openai:gpt-4o-mini",
        budget=Budget(max_steps=3),
        upstream_idempotency_key=f"{tenant}-{i}-{uuid.uuid4().hex[:6]}",
        submitted_by="test",
    )


async def test_a_small_tenant_finishes_while_a_big_backlog_waits(
    tmp_path: Path, provider: ConversationalProvider
) -> None:
    # One backend is enough: the slots sit above the log.
    settings = Settings(
        home=tmp_path / "home",
        log_url=f"sqlite://{tmp_path}/log.db",
        registry_url=f"sqlite://{tmp_path}/registry.db",
        topics=Topics(prefix="fair", partitions=4),
        model_slots=SLOTS,
    )
    runtime = AgentRuntime(settings, memory=False)
    await runtime.start()
    try:
        topic = settings.topics.tasks
        big = [_task("big", i) for i in range(BACKLOG)]
        small = [_task("small", i) for i in range(SMALL)]
        for batch in (big, small):  # the big tenant's whole backlog is in first
            await runtime.log.append(
                [
                    OutgoingRecord(
                        topic, t.upstream_idempotency_key.encode(), await runtime.codec.encode(topic, t)
                    )  # type: ignore[union-attr]
                    for t in batch
                ]
            )

        def run_ids(tasks: list[TaskSubmitted]) -> list[str]:
            return [run_id_for(t.meta.tenant_id, t.upstream_idempotency_key, t.meta.event_id) for t in tasks]

        async def completed(ids: list[str]) -> int:
            return sum([(await runtime.view(r)).status == "completed" for r in ids])

        small_ids, big_ids = run_ids(small), run_ids(big)
        for _ in range(1200):
            if await completed(small_ids) == SMALL:
                break
            await asyncio.sleep(0.05)
        big_done = await completed(big_ids)
        waiting = runtime.model_slots.waiting
        assert await completed(small_ids) == SMALL, "the small tenant's runs all finished"
        assert big_done <= BACKLOG // 2, f"{big_done} of the big tenant's runs finished first"
        assert waiting > 0, "the big tenant's backlog is still waiting for model slots"
    finally:
        await runtime.stop()
