"""The task intake: turns TaskSubmitted records on the tasks topic into runs.

Upstream systems (and the HTTP gateway) publish `TaskSubmitted` to `<prefix>.tasks`
without knowing run ids. The intake gives each task its run id and re-emits it as the
run's first event on the events topic. The run id is derived, never chosen by the
submitter, and always within the submitter's tenant:

- with an `upstream_idempotency_key`: `uuid5(RUN_NAMESPACE, "key\\n<tenant>\\n<key>")`, so
  every submission with the same (tenant, key) names the same run;
- without one: `uuid5(RUN_NAMESPACE, "event\\n<tenant>\\n<event_id>")`.

A submission whose (tenant, key) an earlier record of the same tasks partition already
carried is a duplicate and creates nothing, and neither does one whose run is already on
the events topic. The first rule depends only on the tasks log, which never changes, so a
worker redoing a batch after a crash decides the same way; records of one key land in one
partition when producers key them by the idempotency key, as the README asks.

The intake is also the one admission point of every run, whatever its entry (CLI,
gateway, an upstream system): it lowers the task's budget to the tenant's ceilings
(`ToolPolicy.capped`), and a run of a tenant with `max_concurrent_runs` starts queued
(`RunQueued`, in the same transaction as its TaskSubmitted). The admission timer admits
queued runs in submission order as the cap allows (`agentstream.admission`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from handlers.policy import TenantPolicies
from projections.run_view import RunViews
from streams.codec import EventCodec
from streams.envelope import derived_event_id, now
from streams.errors import HandlerRejected, PoisonEvent
from streams.events import Event, EventMeta, RunQueued, TaskSubmitted
from streams.log import EventLog
from streams.topics import Topics
from streams.worker import Handler, HandlerContext

RUN_NAMESPACE = uuid.UUID("3b0d6f8e-1c2a-5e4f-9a7b-6c5d4e3f2a10")
"""Namespace of derived run ids; part of the contract with upstream systems."""


def run_id_for(tenant_id: str, upstream_key: str | None, event_id: str) -> str:
    """The run id a submission gets: from (tenant, key) when a key is given."""
    name = f"key\n{tenant_id}\n{upstream_key}" if upstream_key else f"event\n{tenant_id}\n{event_id}"
    return str(uuid.uuid5(RUN_NAMESPACE, name))


class TaskIntake(Handler):
    """Consumes the tasks topic and starts one run per distinct submission, under its
    tenant's policy: budget ceilings applied, queued when the tenant has a concurrency cap."""

    name = "intake"
    consumes = frozenset({"TaskSubmitted"})

    def __init__(
        self,
        log: EventLog,
        codec: EventCodec,
        topics: Topics,
        views: RunViews,
        policies: TenantPolicies | None = None,
    ) -> None:
        self.log = log
        self.codec = codec
        self.topics = topics
        self.views = views
        self.policies = policies or TenantPolicies()

    async def handle(self, event: Event, ctx: HandlerContext) -> Sequence[Event]:
        if not isinstance(event, TaskSubmitted):
            return []
        meta = event.meta
        if not meta.tenant_id.strip():
            raise HandlerRejected("a task needs a tenant_id")
        if not event.goal.strip():
            raise HandlerRejected("a task needs a goal")
        run_id = run_id_for(meta.tenant_id, event.upstream_idempotency_key, meta.event_id)
        if event.upstream_idempotency_key and await self._submitted_before(event, ctx):
            return []
        if await self.views.events(run_id):
            return []
        policy = self.policies.for_tenant(meta.tenant_id)
        run_meta = EventMeta(
            event_id=derived_event_id(meta.event_id, self.name, 0),
            run_id=run_id,
            tenant_id=meta.tenant_id,
            causation_id=meta.event_id,
            correlation_id=run_id,
            trace_id=meta.trace_id,
            occurred_at=now(),
            producer=self.name,
        )
        started: list[Event] = [
            event.model_copy(update={"meta": run_meta, "budget": policy.capped(event.budget)})
        ]
        cap = policy.max_concurrent_runs
        if cap is not None:
            queued_meta = run_meta.model_copy(
                update={
                    "event_id": derived_event_id(meta.event_id, self.name, 1),
                    "causation_id": run_meta.event_id,
                }
            )
            reason = f"tenant {meta.tenant_id} runs at most {cap} at a time; runs start in submission order"
            started.append(RunQueued(meta=queued_meta, reason=reason, max_concurrent_runs=cap))
        return started

    async def _submitted_before(self, event: TaskSubmitted, ctx: HandlerContext) -> bool:
        """Whether an earlier record of this tasks partition carried the same (tenant, key)."""
        record = ctx.record
        if record.key is not None:
            same_key = await self.log.read_key(record.topic, record.partition, record.key)
        else:
            same_key = []
            offset = 0
            while offset < record.offset:
                batch = await self.log.read(record.topic, record.partition, offset, 1000)
                if not batch:
                    break
                same_key.extend(r for r in batch if r.key is None)
                offset = batch[-1].offset + 1
        for previous in (r for r in same_key if r.offset < record.offset):
            try:
                if await self.codec.type_of(previous.value) != "TaskSubmitted":
                    continue
                task = await self.codec.decode(previous.value)
            except PoisonEvent:
                continue  # dead-lettered when it was consumed: it started no run
            assert isinstance(task, TaskSubmitted)
            if (
                task.meta.tenant_id == event.meta.tenant_id
                and task.upstream_idempotency_key == event.upstream_idempotency_key
                and task.goal.strip()
            ):
                return True
        return False
