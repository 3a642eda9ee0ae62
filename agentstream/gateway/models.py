"""The documented request and response bodies of the HTTP API (they make /openapi.json)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from projections.approvals import Approval
from projections.episodic import EpisodicEvent
from projections.run_state import RunState
from projections.run_view import RunView


class ErrorDetail(BaseModel):
    """What went wrong, for people and for programs."""

    code: str = Field(description="unauthorized, forbidden, not_found, conflict, invalid_request, ...")
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorBody(BaseModel):
    """Every error response has this shape."""

    error: ErrorDetail


class RunSubmission(BaseModel):
    """A task for an agent. Send `Idempotency-Key` to make retries safe."""

    model_config = ConfigDict(extra="forbid")

    goal: str = Field(min_length=1, max_length=20_000, description="What the agent must achieve.")
    model: str | None = Field(None, description="Model spec, for example openai:gpt-4o-mini.")
    fallback_model: str | None = None
    max_steps: int | None = Field(10, ge=1, le=1000)
    max_tokens: int | None = Field(None, ge=1)
    max_usd: float | None = Field(None, gt=0)
    timeout_s: float | None = Field(None, gt=0, description="Wall-clock limit of the run.")
    tools: list[str] = Field(default_factory=list, description="Tools allowed; empty means the defaults.")
    labels: dict[str, str] = Field(default_factory=dict)


class RunAccepted(BaseModel):
    """Where a submission went: the run id it has (or already had)."""

    run_id: str
    status: str = Field(description="`accepted` for a new submission, else the run's current status.")
    duplicate: bool = Field(description="True when the Idempotency-Key named a run that already exists.")


class RunSummary(BaseModel):
    """A run as lists show it."""

    run_id: str
    tenant: str
    status: str = Field(description="queued, running, suspended, completed, failed, aborted or cancelled.")
    goal: str
    model: str | None
    steps: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    tool_calls: int
    pending_approval_ids: list[str]
    answer: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime | None

    @classmethod
    def of(cls, state: RunState) -> RunSummary:
        return cls(
            run_id=state.run_id,
            tenant=state.tenant_id,
            status=state.status,
            goal=state.goal,
            model=state.model,
            steps=state.step,
            input_tokens=state.input_tokens,
            output_tokens=state.output_tokens,
            cost_usd=state.cost_usd,
            tool_calls=state.tool_calls,
            pending_approval_ids=list(state.pending_approval_ids),
            answer=state.answer,
            error=state.error,
            created_at=state.created_at,
            updated_at=state.updated_at,
        )


class QueueOut(BaseModel):
    """The caller's tenant: runs waiting for a slot of its concurrency cap, and runs holding one."""

    tenant: str
    queued: int = Field(description="Runs in status `queued` (counted up to 10,000).")
    in_flight: int = Field(description="Runs running or suspended: what the cap bounds (up to 10,000).")
    max_concurrent_runs: int | None = Field(
        None, description="The tenant's cap, when this gateway hosts the workers (`--workers`)."
    )


class RunList(BaseModel):
    """A page of runs, newest first; pass `next_before` as `before` for the next page."""

    runs: list[RunSummary]
    next_before: datetime | None


class CallOut(BaseModel):
    """One tool call of a step, with its arguments and what it returned."""

    tool_call_id: str
    tool: str
    arguments_json: str
    status: str
    ok: bool | None
    data_json: str | None
    error: str | None
    rejection: list[str]


class StepOut(BaseModel):
    """One planner step: the thought summary and the calls it made."""

    step: int
    thought: str
    model: str
    calls: list[CallOut]


class QuestionOut(BaseModel):
    """An `ask_human` question waiting for a person's answer."""

    tool_call_id: str
    question: str


class RunDetail(RunSummary):
    """A run with its timeline of steps and the questions it waits on."""

    goal_history: list[str]
    timeline: list[StepOut]
    questions: list[QuestionOut]
    queue_position: int | None = Field(
        None, description="While the run is `queued`: 1 for the next of the tenant's runs to start."
    )
    queued_reason: str | None = Field(None, description="Why the run waited (or waits) for a slot.")

    @classmethod
    def of_view(
        cls, state: RunState, view: RunView | None, *, queue_position: int | None = None
    ) -> RunDetail:
        steps = view.steps if view is not None else []
        return cls(
            **RunSummary.of(state).model_dump(),
            queue_position=queue_position,
            queued_reason=view.queued_reason if view is not None else None,
            goal_history=list(view.goal_history) if view is not None else [state.goal],
            questions=[
                QuestionOut(tool_call_id=call_id, question=text)
                for call_id, text in (view.questions.items() if view is not None else ())
            ],
            timeline=[
                StepOut(
                    step=s.step,
                    thought=s.thought,
                    model=s.model,
                    calls=[
                        CallOut(
                            tool_call_id=c.tool_call_id,
                            tool=c.tool,
                            arguments_json=c.arguments_json,
                            status=c.status,
                            ok=c.ok,
                            data_json=c.data_json,
                            error=c.error,
                            rejection=list(c.rejection),
                        )
                        for c in s.calls
                    ],
                )
                for s in steps
            ],
        )


class EventOut(BaseModel):
    """One event of a run: its type, log position, envelope (`meta`) and fields."""

    model_config = ConfigDict(extra="allow")

    type: str
    partition: int
    offset: int
    meta: dict[str, Any]

    @classmethod
    def of(cls, event: EpisodicEvent) -> EventOut:
        return cls(type=event.type, partition=event.partition, offset=event.offset, **event.data)


class EventList(BaseModel):
    """A page of a run's events in log order; pass `next_after` as `after` for the next page."""

    events: list[EventOut]
    next_after: int | None


class ApprovalOut(BaseModel):
    """An approval request and, once there is one, its decision."""

    approval_id: str
    run_id: str
    tool_call_id: str
    tool: str | None
    arguments_json: str | None
    arguments_digest: str | None
    risk_tier: str | None
    reason: str | None
    requested_at: datetime
    expires_at: datetime | None
    status: str = Field(description="pending, approved, denied or expired.")
    reviewer: str | None
    comment: str | None
    decided_at: datetime | None

    @classmethod
    def of(cls, approval: Approval) -> ApprovalOut:
        return cls(
            approval_id=approval.approval_id,
            run_id=approval.run_id,
            tool_call_id=approval.tool_call_id,
            tool=approval.tool,
            arguments_json=approval.arguments_json,
            arguments_digest=approval.arguments_digest,
            risk_tier=approval.risk_tier,
            reason=approval.reason,
            requested_at=approval.requested_at,
            expires_at=approval.expires_at,
            status=approval.status,
            reviewer=approval.reviewer,
            comment=approval.comment,
            decided_at=approval.decided_at,
        )


class ApprovalList(BaseModel):
    """A tenant's approvals, the longest-waiting first."""

    approvals: list[ApprovalOut]


class DecisionIn(BaseModel):
    """A reviewer's decision on an approval request."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["approved", "denied"]
    comment: str | None = Field(None, max_length=4000)
    arguments_digest: str | None = Field(
        None, description="The digest the reviewer was shown; refused if the request is for others."
    )


class AnswerIn(BaseModel):
    """A person's answer to an agent's `ask_human` question."""

    model_config = ConfigDict(extra="forbid")

    answer: str = Field(min_length=1, max_length=20_000)
    tool_call_id: str | None = Field(None, description="Which question; optional when only one is open.")


class CancelIn(BaseModel):
    """Why a run is cancelled."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=4000)


class GoalIn(BaseModel):
    """The run's new goal."""

    model_config = ConfigDict(extra="forbid")

    goal: str = Field(min_length=1, max_length=20_000)


class Appended(BaseModel):
    """The event an action appended to the run."""

    run_id: str
    event_id: str
    type: str


class Me(BaseModel):
    """Who the token belongs to."""

    name: str
    tenant: str
    role: str
