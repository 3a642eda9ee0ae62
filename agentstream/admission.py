"""The admission timer: admits queued runs as their tenants' concurrency caps allow.

The intake starts every run of a tenant with `max_concurrent_runs` as `queued`
(`RunQueued`); this is the one place that lets such runs start. Every serving process
runs it every `admission_scan_s` seconds (see `AgentRuntime`): for each tenant with
queued runs (the run-state view's directory), it counts the tenant's runs in flight
(running or suspended) in the run-state view and appends `RunAdmitted` for as many of
the oldest queued runs as the cap leaves room for.

The view lags the log, so each candidate is brought up to the log right before the append
(its stored view plus the records after the view's last offset): a run this or another
timer admitted a moment ago is counted as in flight, not admitted again. Two timers
racing append the same event (its id derives from the run), and a second `RunAdmitted`
is a no-op in the fold. The cap is still a soft bound: a run that ended but is not yet
projected keeps its slot a little longer (fewer runs start, never more), and two timers
reading the view at different moments may, in a narrow window, each see one free slot
that is really the same one (see docs/design/001-admission.md). Queued runs live only in
the log and the view; nothing here grows with the backlog.
"""

from __future__ import annotations

from collections.abc import Sequence

from handlers.policy import TenantPolicies
from projections.run_state import IN_FLIGHT, RunState, RunStates
from projections.run_view import RunView
from projections.stores import ProjectionStore
from projections.stores.base import MAX_ROWS
from streams.codec import EventCodec
from streams.envelope import derived_event_id, root_meta
from streams.errors import PoisonEvent
from streams.events import RunAdmitted
from streams.log import EventLog, OutgoingRecord
from streams.topics import Topics

PRODUCER = "admission"
UNCAPPED_PAGE = 100
"""Runs admitted per tenant and scan when its policy no longer has a cap."""


class Admissions:
    """Admits queued runs, oldest first, within each tenant's `max_concurrent_runs`."""

    def __init__(
        self,
        log: EventLog,
        codec: EventCodec,
        topics: Topics,
        store: ProjectionStore,
        policies: TenantPolicies,
    ) -> None:
        self.log = log
        self.codec = codec
        self.topics = topics
        self.states = RunStates(store)
        self.policies = policies

    async def admit_due(self) -> Sequence[RunAdmitted]:
        """Admit what every tenant's cap allows now; returns the events appended."""
        admitted: list[RunAdmitted] = []
        for tenant in await self.states.queued_tenants():
            admitted.extend(await self.admit(tenant))
        return admitted

    async def admit(self, tenant: str) -> Sequence[RunAdmitted]:
        """Admit the tenant's oldest queued runs into the free slots of its cap."""
        cap = self.policies.for_tenant(tenant).max_concurrent_runs
        # Admitted runs the view still shows queued come first in the queue: read past them.
        candidates = await self.states.queued(
            tenant, limit=UNCAPPED_PAGE if cap is None else min(MAX_ROWS, 2 * cap)
        )
        if not candidates:
            return []
        holding = await self.states.in_flight(tenant, limit=cap if cap is not None else MAX_ROWS)
        free = UNCAPPED_PAGE if cap is None else cap - holding
        admitted: list[RunAdmitted] = []
        for candidate in candidates:
            if free <= 0:
                break
            view = await self._current(candidate)
            if view.status in IN_FLIGHT:
                holding, free = holding + 1, free - 1
                continue
            if view.status != "queued":
                continue  # cancelled while it waited
            meta = root_meta(view.run_id, tenant, PRODUCER).model_copy(
                update={"event_id": derived_event_id(f"{view.run_id}/admission", PRODUCER, 0)}
            )
            event = RunAdmitted(meta=meta, in_flight=holding, max_concurrent_runs=cap)
            value = await self.codec.encode(self.topics.events, event)
            await self.log.append([OutgoingRecord(self.topics.events, view.run_id.encode(), value)])
            admitted.append(event)
            holding, free = holding + 1, free - 1
        return admitted

    async def _current(self, state: RunState) -> RunView:
        """The run as of the end of the log: its stored view and the events after it."""
        view = await self.states.view(state.tenant_id, state.run_id) or RunView(state.run_id)
        # The stored view may have moved on since `state` was listed: skip what it has folded.
        folded = max(0, view.events - state.events)
        key = state.run_id.encode()
        tail = await self.log.read_key(self.topics.events, state.last_partition, key, state.last_offset + 1)
        for record in tail:
            try:
                event = await self.codec.decode(record.value)
            except PoisonEvent:
                continue  # dead-lettered by the workers; the view skips it too
            if folded:
                folded -= 1
                continue
            view.apply(event)
        return view


__all__ = ["Admissions"]
