"""The task intake: turns TaskSubmitted records on the tasks topic into runs.

Upstream systems (and the HTTP gateway) publish `TaskSubmitted` to `<prefix>.tasks`
without knowing run ids. The intake gives each task its run id and re-emits it as the
run's first event on the events topic. The run id is derived, never chosen by the
submitter, and always within the submitter's tenant:

- with an `upstream_idempotency_key`: `uuid5(RUN_NAMESPACE, "key\\n<tenant>\\n<key>")`, so
  every submission with the same (tenant, key) names the same run;
- without one: `uuid5(RUN_NAMESPACE, "event\\n<tenant>\\n<event_id>")`.

A submission whose run is already on the events topic is a duplicate and creates
nothing. The check is a keyed look-up (the run views' cache, else the episodic view),
never a scan of a topic. Copies of one submission are handled one after another when
producers key them by the idempotency key, as the README asks (one key, one partition,
one worker, in order), so a copy that arrives before the first copy's run has committed
is caught by the worker's not-yet-committed outputs (`HandlerContext.uncommitted`).

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
from streams.errors import HandlerRejected
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
        if any(e.meta.run_id == run_id for e in ctx.uncommitted):
            return []  # an earlier copy of this submission started the run; not yet committed
        if await self.views.events(run_id, tenant=meta.tenant_id):
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
