"""What people (and the approval timer) may do to running agents, as events on the log.

Every operation validates against the run's latest view (read from the log, never from
a lagging projection) and then appends one event keyed by the run id:

- `decide`: ApprovalDecided (approved or denied); refused for an unknown or already
  decided approval, for other arguments than the request's, or when the run has ended.
- `answer`: HumanAnswered; refused when the run has no open ask_human question.
- `cancel`: RunCancelled; `change_goal`: GoalChanged; refused when the run has ended.
- `submit`: TaskSubmitted on the tasks topic, where the intake admits it like any
  upstream system's task: the tenant's budget ceilings and concurrency cap are applied
  there, in one place for every entry (a run over the cap is queued, never refused).
- `expire_due` (the approval timer): ApprovalDecided (expired, by `system`) for every
  pending request past its expiry.

The CLI and the HTTP gateway both call these. The checks are a courtesy to the person:
the handlers apply the same rules when they fold the events, so a decision that slips
past a check here (two reviewers at once, a replayed event) still settles nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from handlers.intake import run_id_for
from projections.approvals import APPROVALS, PENDING, Approval, ApprovalInbox
from projections.run_view import RunView, RunViews
from projections.stores import ProjectionStore
from streams.codec import EventCodec
from streams.envelope import derived_event_id, now, root_meta
from streams.events import (
    ApprovalDecided,
    Event,
    EventMeta,
    GoalChanged,
    HumanAnswered,
    RunCancelled,
    TaskSubmitted,
)
from streams.log import EventLog, OutgoingRecord
from streams.topics import Topics

ErrorCode = Literal["not_found", "conflict", "invalid"]
SYSTEM_REVIEWER = "system"


class InterventionError(Exception):
    """An operation was refused; `code` says how (a gateway maps it to 404, 409 or 400)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message


@dataclass(frozen=True)
class Question:
    """An ask_human call waiting for a person's answer."""

    run_id: str
    tool_call_id: str
    question: str


class Interventions:
    """Lists approvals and questions; decides, answers, cancels and changes goals.

    `store` is the projection store holding the approvals inbox; it is needed only to find
    an approval by id without its run (`decide` without `run_id`) and to list approvals.
    """

    def __init__(
        self,
        log: EventLog,
        codec: EventCodec,
        topics: Topics,
        store: ProjectionStore | None = None,
        *,
        producer: str = "cli",
        views: RunViews | None = None,
    ) -> None:
        self.log = log
        self.codec = codec
        self.topics = topics
        self.store = store
        self.producer = producer
        self.views = views or RunViews(log, codec, topics)

    # ------------------------------------------------------------------ reading

    def _inbox(self) -> ApprovalInbox:
        if self.store is None:
            raise InterventionError("invalid", "this operation needs the approvals view (a projection store)")
        return ApprovalInbox(self.store)

    async def approvals(
        self, tenant: str, status: str | None = PENDING, *, limit: int = 100
    ) -> list[Approval]:
        """A tenant's approvals (pending ones by default), the longest-waiting first."""
        return list(await self._inbox().list(tenant, status, limit=limit))

    async def run(self, run_id: str, tenant: str | None = None) -> RunView:
        """The run's latest view; a run of another tenant is reported as unknown."""
        view = await self.views.view(run_id, tenant=tenant)
        if not view.events or (tenant is not None and view.tenant_id != tenant):
            raise InterventionError("not_found", f"no run {run_id}")
        return view

    async def questions(self, run_id: str, tenant: str | None = None) -> list[Question]:
        view = await self.run(run_id, tenant)
        return [Question(run_id, call_id, text) for call_id, text in view.questions.items()]

    # ------------------------------------------------------------------ writing

    async def _append(self, event: Event) -> None:
        topic = self.topics.events
        value = await self.codec.encode(topic, event)
        await self.log.append([OutgoingRecord(topic, event.meta.run_id.encode(), value)])

    def _meta(self, view: RunView) -> EventMeta:
        return root_meta(view.run_id, view.tenant_id, self.producer)

    @staticmethod
    def _running(view: RunView) -> None:
        if view.terminal:
            raise InterventionError("conflict", f"run {view.run_id} has already ended ({view.status})")

    async def submit(self, task: TaskSubmitted) -> TaskSubmitted:
        """Publish a task to the tasks topic, where the intake starts its run under the
        tenant's policy. Returns the task as published: its `meta.run_id` is the run's id
        (derived from the tenant, `upstream_idempotency_key` and `meta.event_id`)."""
        tenant = task.meta.tenant_id
        if not tenant.strip():
            raise InterventionError("invalid", "a task needs a tenant")
        if not task.goal.strip():
            raise InterventionError("invalid", "a task needs a goal")
        key = task.upstream_idempotency_key
        run_id = run_id_for(tenant, key, task.meta.event_id)
        task = task.model_copy(update={"meta": task.meta.model_copy(update={"run_id": run_id})})
        topic = self.topics.tasks
        value = await self.codec.encode(topic, task)
        await self.log.append([OutgoingRecord(topic, (key or run_id).encode(), value)])
        return task

    async def decide(
        self,
        tenant: str,
        approval_id: str,
        decision: Literal["approved", "denied"],
        reviewer: str,
        comment: str | None = None,
        *,
        run_id: str | None = None,
        arguments_digest: str | None = None,
    ) -> ApprovalDecided:
        """Approve or deny a pending request. `arguments_digest`, when given, must be the
        digest the reviewer was shown: it is what the decision authorizes."""
        if decision not in ("approved", "denied"):
            raise InterventionError("invalid", f"a decision is approved or denied, not {decision!r}")
        if not reviewer:
            raise InterventionError("invalid", "a decision needs a reviewer")
        if run_id is None:
            found = await self._inbox().get(tenant, approval_id)
            if found is None:
                raise InterventionError("not_found", f"no approval {approval_id}")
            run_id = found.run_id
        view = await self.run(run_id, tenant)
        request = view.approvals.get(approval_id)
        if request is None:
            raise InterventionError("not_found", f"no approval {approval_id} in run {run_id}")
        self._running(view)
        if not request.pending:
            decided = f"{request.status} by {request.reviewer}"
            raise InterventionError("conflict", f"approval {approval_id} was already decided: {decided}")
        if arguments_digest is not None and arguments_digest != request.arguments_digest:
            raise InterventionError(
                "conflict", f"approval {approval_id} is for other arguments than the ones reviewed"
            )
        event = ApprovalDecided(
            meta=self._meta(view),
            approval_id=approval_id,
            tool_call_id=request.tool_call_id,
            arguments_digest=request.arguments_digest,
            decision=decision,
            reviewer=reviewer,
            comment=comment,
        )
        await self._append(event)
        return event

    async def answer(
        self,
        run_id: str,
        answer: str,
        answered_by: str,
        *,
        tool_call_id: str | None = None,
        tenant: str | None = None,
    ) -> HumanAnswered:
        """Answer the run's open question (the given one, when it has several)."""
        view = await self.run(run_id, tenant)
        self._running(view)
        if tool_call_id is None:
            if len(view.questions) != 1:
                detail = "none" if not view.questions else f"{len(view.questions)}; name one"
                raise InterventionError("conflict", f"run {run_id} has no single open question ({detail})")
            tool_call_id = next(iter(view.questions))
        elif tool_call_id not in view.questions:
            raise InterventionError("conflict", f"run {run_id} has no open question {tool_call_id}")
        event = HumanAnswered(
            meta=self._meta(view), tool_call_id=tool_call_id, answer=answer, answered_by=answered_by
        )
        await self._append(event)
        return event

    async def cancel(
        self, run_id: str, requested_by: str, reason: str | None = None, *, tenant: str | None = None
    ) -> RunCancelled:
        view = await self.run(run_id, tenant)
        self._running(view)
        event = RunCancelled(meta=self._meta(view), reason=reason, requested_by=requested_by)
        await self._append(event)
        return event

    async def change_goal(
        self, run_id: str, goal: str, requested_by: str, *, tenant: str | None = None
    ) -> GoalChanged:
        if not goal.strip():
            raise InterventionError("invalid", "the new goal is empty")
        view = await self.run(run_id, tenant)
        self._running(view)
        event = GoalChanged(meta=self._meta(view), goal=goal, requested_by=requested_by)
        await self._append(event)
        return event

    # ------------------------------------------------------------------ the approval timer

    async def expire_due(self, at: datetime | None = None) -> Sequence[ApprovalDecided]:
        """Decide every pending request past its expiry as `expired` (reviewer `system`).

        Candidates come from the approvals view, which may lag; each is checked against the
        run's view from the log right before the append. The event id is derived from the
        request, so two timers racing append the same event, and the second settles nothing.
        """
        at = at or now()
        assert self.store is not None, "the approval timer needs the approvals view"
        expired: list[ApprovalDecided] = []
        for row in await self.store.scan(APPROVALS):
            if row["status"] != PENDING or row["expires_at"] is None or row["expires_at"] > at:
                continue
            view = await self.views.view(row["run_id"], tenant=row["tenant_id"])
            request = view.approvals.get(row["approval_id"])
            if request is None or not request.pending:
                continue
            meta = self._meta(view).model_copy(
                update={
                    "event_id": derived_event_id(f"{view.run_id}/{request.approval_id}", "approval-timer", 0),
                    "producer": "approval-timer",
                }
            )
            event = ApprovalDecided(
                meta=meta,
                approval_id=request.approval_id,
                tool_call_id=request.tool_call_id,
                arguments_digest=request.arguments_digest,
                decision="expired",
                reviewer=SYSTEM_REVIEWER,
                comment=f"no decision by {request.expires_at.isoformat() if request.expires_at else at}",
            )
            await self._append(event)
            expired.append(event)
        return expired


__all__ = ["SYSTEM_REVIEWER", "InterventionError", "Interventions", "Question"]
