"""Typed event models, generated from schemas/avro by `python -m streams.codegen`.

Do not edit by hand: change the `.avsc` files and regenerate.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


class Record(BaseModel):
    """Base of every generated model: immutable, and strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Budget(Record):
    """Limits a run must stay within; null means unlimited."""

    max_steps: int | None = None
    """Most planner steps the run may take."""
    max_tokens: int | None = None
    """Most model tokens (input + output) the run may use."""
    max_usd: float | None = None
    """Most money the run may spend, in US dollars."""
    deadline: datetime | None = None
    """Wall-clock time by which the run must end."""


class EventMeta(Record):
    """Envelope fields carried by every event."""

    event_id: str
    """Unique id of this event (UUID)."""
    run_id: str
    """The run this event belongs to; the partitioning key."""
    tenant_id: str
    """Tenant that owns the run."""
    causation_id: str | None = None
    """event_id of the event that caused this one."""
    correlation_id: str
    """Id shared by all events of one causal chain (usually the root run's id)."""
    trace_id: str | None = None
    """W3C trace id, when the producer traces."""
    occurred_at: datetime
    """When the event happened (UTC, milliseconds)."""
    producer: str
    """Component that produced the event, for example 'planner' or 'gateway'."""


class Usage(Record):
    """Resources consumed by one step or a whole run."""

    input_tokens: int = 0
    """Model input tokens."""
    output_tokens: int = 0
    """Model output tokens."""
    cost_usd: float = 0.0
    """Cost in US dollars."""


class Event(Record):
    """Base of every event: an envelope (`meta`) plus the fields of its type."""

    type_name: ClassVar[str]
    fullname: ClassVar[str]
    meta: EventMeta


class AgentMessage(Event):
    """One agent sent a message to another."""

    type_name: ClassVar[str] = "AgentMessage"
    fullname: ClassVar[str] = "agentstream.events.AgentMessage"

    from_agent: str
    """Sender."""
    to_agent: str
    """Recipient."""
    content: str
    """Message text."""


class ApprovalDecided(Event):
    """A person (or the expiry timer) decided an approval request."""

    type_name: ClassVar[str] = "ApprovalDecided"
    fullname: ClassVar[str] = "agentstream.events.ApprovalDecided"

    approval_id: str
    """The request decided."""
    tool_call_id: str
    """The call the decision applies to."""
    arguments_digest: str
    """Digest of the arguments the decision authorizes."""
    decision: str
    """approved, denied or expired."""
    reviewer: str
    """Identity of the reviewer, or 'system' for expiry."""
    comment: str | None = None
    """Reviewer's comment."""


class ApprovalDecisionIgnored(Event):
    """A decision that settled nothing (wrong call or arguments, decided or expired); nothing ran."""

    type_name: ClassVar[str] = "ApprovalDecisionIgnored"
    fullname: ClassVar[str] = "agentstream.events.ApprovalDecisionIgnored"

    approval_id: str
    """The approval the decision named."""
    tool_call_id: str
    """The call the decision named."""
    decision_event_id: str
    """event_id of the ignored ApprovalDecided."""
    reason: str
    """Why it was ignored, for example 'digest_mismatch' or 'already_approved'."""


class ApprovalRequested(Event):
    """A call needs a person's approval before it may run."""

    type_name: ClassVar[str] = "ApprovalRequested"
    fullname: ClassVar[str] = "agentstream.events.ApprovalRequested"

    approval_id: str
    """Id of the approval request."""
    tool_call_id: str
    """The call awaiting approval."""
    tool: str
    """Tool name."""
    arguments_json: str
    """Canonical JSON of the exact arguments."""
    arguments_digest: str
    """sha256 of arguments_json; an approval authorizes only this digest."""
    risk_tier: str
    """Risk tier of the tool: low, medium or high."""
    reason: str
    """Why approval is needed."""
    expires_at: datetime | None = None
    """When the request expires unanswered."""


class BudgetCharged(Event):
    """Resources were charged against the run's budget."""

    type_name: ClassVar[str] = "BudgetCharged"
    fullname: ClassVar[str] = "agentstream.events.BudgetCharged"

    step: int
    """Step charged."""
    usage: Usage
    """Tokens and cost charged."""
    tool_calls: int = 0
    """Tool calls charged."""
    source: str
    """What was charged: 'model' or 'tool'."""


class GoalChanged(Event):
    """The run's goal was changed mid-flight; the planner replans from here."""

    type_name: ClassVar[str] = "GoalChanged"
    fullname: ClassVar[str] = "agentstream.events.GoalChanged"

    goal: str
    """The new goal."""
    requested_by: str
    """Who changed it."""


class HumanAnswered(Event):
    """A person answered a question the agent asked with the ask_human tool."""

    type_name: ClassVar[str] = "HumanAnswered"
    fullname: ClassVar[str] = "agentstream.events.HumanAnswered"

    tool_call_id: str
    """The ask_human call this answers."""
    answer: str
    """The person's answer, as they wrote it."""
    answered_by: str
    """Identity of the person who answered."""


class MemoryWritten(Event):
    """Something was written to an agent's semantic memory."""

    type_name: ClassVar[str] = "MemoryWritten"
    fullname: ClassVar[str] = "agentstream.events.MemoryWritten"

    memory_id: str
    """Id of the memory."""
    namespace: str
    """Namespace inside the tenant, for example 'default' or 'user:alice'."""
    text: str
    """The remembered text."""
    tags: list[str] = Field(default_factory=list)
    """Tags for filtering."""
    metadata: dict[str, str] = Field(default_factory=dict)
    """Metadata for filtering."""
    ttl_s: int | None = None
    """Seconds after occurred_at when the memory expires."""


class ObservationRecorded(Event):
    """The result of a tool call (or of a rejected one), fed back to the planner."""

    type_name: ClassVar[str] = "ObservationRecorded"
    fullname: ClassVar[str] = "agentstream.events.ObservationRecorded"

    step: int
    """Planner step that requested the call."""
    tool_call_id: str
    """The call observed."""
    tool: str
    """Tool name."""
    ok: bool
    """Whether the tool succeeded."""
    data_json: str | None = None
    """Result as JSON text, bounded in size."""
    error: str | None = None
    """Error message when ok is false."""
    truncated: bool = False
    """Whether data_json was cut to the size bound."""
    blob_handle: str | None = None
    """Handle of the full result when it was too large for the event."""
    duration_ms: int = 0
    """How long the tool ran."""


class PlanProposed(Event):
    """The planner reasoned over the run's view and decided what to do next."""

    type_name: ClassVar[str] = "PlanProposed"
    fullname: ClassVar[str] = "agentstream.events.PlanProposed"

    step: int
    """Planner step number, starting at 1."""
    thought: str
    """Short summary of the reasoning behind the decision."""
    model: str
    """Model that produced the plan."""
    usage: Usage
    """Tokens and cost of this planning call."""
    tool_call_ids: list[str] = Field(default_factory=list)
    """Tool calls requested in this step."""
    based_on_event_id: str
    """Latest event of the run the planner had seen; plans on older views are discarded."""
    recalled: list[str] = Field(default_factory=list)
    """Event ids of earlier runs recalled into this step's prompt (episodic recall), as cited there."""


class RateLimitSet(Event):
    """An operator set the rate limit of a model provider or model spec (control topic)."""

    type_name: ClassVar[str] = "RateLimitSet"
    fullname: ClassVar[str] = "agentstream.events.RateLimitSet"

    provider: str
    """A provider ('openai') or a model spec ('openai:gpt-4o-mini'); the record key."""
    requests_per_minute: int | None = None
    """Model calls per minute (null: no limit), enforced by each worker process."""
    tokens_per_minute: int | None = None
    """Input plus output tokens per minute (null: no limit)."""
    by: str
    """Who set it."""


class RunAborted(Event):
    """The run was stopped by a limit: a budget or a stop rule."""

    type_name: ClassVar[str] = "RunAborted"
    fullname: ClassVar[str] = "agentstream.events.RunAborted"

    reason: str
    """Which limit was hit and by how much."""
    limit: str
    """Name of the limit: max_steps, max_tokens, max_usd, deadline or loop."""


class RunAdmitted(Event):
    """A queued run got a slot of its tenant's concurrency cap; for a run not queued, a no-op."""

    type_name: ClassVar[str] = "RunAdmitted"
    fullname: ClassVar[str] = "agentstream.events.RunAdmitted"

    in_flight: int
    """The tenant's runs in flight (running or suspended) as the admitter saw them, this one not included."""
    max_concurrent_runs: int | None = None
    """The tenant's cap at admission; null when the tenant no longer has one."""


class RunCancelled(Event):
    """A person or system cancelled the run."""

    type_name: ClassVar[str] = "RunCancelled"
    fullname: ClassVar[str] = "agentstream.events.RunCancelled"

    reason: str | None = None
    """Why it was cancelled."""
    requested_by: str
    """Who cancelled it."""


class RunCompleted(Event):
    """The run reached its goal."""

    type_name: ClassVar[str] = "RunCompleted"
    fullname: ClassVar[str] = "agentstream.events.RunCompleted"

    answer: str
    """Final answer."""
    steps: int
    """Planner steps taken."""
    usage: Usage
    """Total usage of the run."""


class RunFailed(Event):
    """The run ended with an error it could not recover from."""

    type_name: ClassVar[str] = "RunFailed"
    fullname: ClassVar[str] = "agentstream.events.RunFailed"

    error: str
    """What went wrong."""
    steps: int = 0
    """Planner steps taken."""


class RunQueued(Event):
    """The run waits for a slot of its tenant's concurrency cap; nothing plans it until RunAdmitted."""

    type_name: ClassVar[str] = "RunQueued"
    fullname: ClassVar[str] = "agentstream.events.RunQueued"

    reason: str
    """Why the run waits, for people."""
    max_concurrent_runs: int
    """The tenant's cap when the run was queued."""


class RunResumed(Event):
    """A suspended run continues."""

    type_name: ClassVar[str] = "RunResumed"
    fullname: ClassVar[str] = "agentstream.events.RunResumed"

    reason: str
    """What ended the wait."""


class RunSuspended(Event):
    """The run waits for something outside it (an approval, a person's answer); no worker is held."""

    type_name: ClassVar[str] = "RunSuspended"
    fullname: ClassVar[str] = "agentstream.events.RunSuspended"

    reason: str
    """What the run waits for: 'approval' or 'ask_human'."""
    approval_id: str | None = None
    """The approval it waits for, if any."""
    tool_call_id: str | None = None
    """The call the run waits on (the call awaiting approval, or the ask_human call), if any."""


class SandboxJobLaunched(Event):
    """A sandboxed job was launched for a tool call."""

    type_name: ClassVar[str] = "SandboxJobLaunched"
    fullname: ClassVar[str] = "agentstream.events.SandboxJobLaunched"

    tool_call_id: str
    """The call the job serves."""
    job_id: str
    """Job id, derived from the idempotency key so a retry never launches twice."""
    launcher: str
    """Launcher URL scheme, for example 'local' or 'k8s'."""
    idempotency_key: str
    """Idempotency key of the call."""


class ScratchpadSummarized(Event):
    """Older steps of the run's working memory were condensed into a summary."""

    type_name: ClassVar[str] = "ScratchpadSummarized"
    fullname: ClassVar[str] = "agentstream.events.ScratchpadSummarized"

    up_to_step: int
    """Last step the summary covers."""
    summary: str
    """The summary."""
    method: str
    """'model' or 'truncation'."""


class SubtaskCompleted(Event):
    """A subtask run ended."""

    type_name: ClassVar[str] = "SubtaskCompleted"
    fullname: ClassVar[str] = "agentstream.events.SubtaskCompleted"

    subtask_run_id: str
    """Run id of the subtask."""
    status: str
    """completed, failed, aborted or cancelled."""
    answer: str | None = None
    """Answer of the subtask when it completed."""


class SubtaskPlanned(Event):
    """A supervisor split work into a subtask run."""

    type_name: ClassVar[str] = "SubtaskPlanned"
    fullname: ClassVar[str] = "agentstream.events.SubtaskPlanned"

    subtask_run_id: str
    """Run id of the subtask."""
    goal: str
    """Goal of the subtask."""
    depends_on: list[str] = Field(default_factory=list)
    """Subtask run ids that must complete first."""


class TaskSubmitted(Event):
    """A task was submitted: the first event of every run."""

    type_name: ClassVar[str] = "TaskSubmitted"
    fullname: ClassVar[str] = "agentstream.events.TaskSubmitted"

    goal: str
    """What the agent must achieve, in natural language."""
    model: str | None = None
    """Model spec, for example 'openai:gpt-4o-mini'; null means the deployment default."""
    fallback_model: str | None = None
    """Model spec used when the primary model keeps failing."""
    budget: Budget
    """Limits of the run."""
    tools: list[str] = Field(default_factory=list)
    """Tools the run may use; empty means the tenant's defaults."""
    policy: str | None = None
    """Name of the tenant policy that governs the run."""
    parent_run_id: str | None = None
    """Run that spawned this one as a subtask."""
    upstream_idempotency_key: str | None = None
    """Key chosen by the submitter; submissions with the same key create one run."""
    submitted_by: str = "anonymous"
    """Principal that submitted the task."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Free-form labels for routing and search."""


class ToolCallDispatched(Event):
    """The router accepted a call and handed it to a tool worker."""

    type_name: ClassVar[str] = "ToolCallDispatched"
    fullname: ClassVar[str] = "agentstream.events.ToolCallDispatched"

    step: int
    """Planner step that requested the call."""
    tool_call_id: str
    """The call."""
    tool: str
    """Tool name."""
    arguments_json: str
    """Canonical JSON of the validated arguments."""
    idempotency_key: str
    """sha256(run_id, step, tool, canonical args); side effects are deduplicated on it."""
    attempt: int = 1
    """Attempt number, starting at 1."""
    timeout_ms: int
    """How long the tool may run."""


class ToolCallRejected(Event):
    """The tool router refused a requested call; the planner sees the reason."""

    type_name: ClassVar[str] = "ToolCallRejected"
    fullname: ClassVar[str] = "agentstream.events.ToolCallRejected"

    step: int
    """Planner step that requested the call."""
    tool_call_id: str
    """The rejected call."""
    tool: str
    """Tool name as requested."""
    reason: str
    """Why it was rejected, for example 'unknown_tool', 'invalid_arguments', 'policy', 'budget'."""
    errors: list[str] = Field(default_factory=list)
    """Human-readable details, one per problem."""


class ToolCallRequested(Event):
    """The planner asked for one tool call."""

    type_name: ClassVar[str] = "ToolCallRequested"
    fullname: ClassVar[str] = "agentstream.events.ToolCallRequested"

    step: int
    """Planner step that requested the call."""
    tool_call_id: str
    """Id that correlates request, dispatch and observation."""
    tool: str
    """Tool name."""
    arguments_json: str
    """Arguments exactly as the model produced them (JSON text, possibly malformed)."""


class ToolSwitched(Event):
    """An operator turned a tool off or back on for every tenant (control topic, key: tool)."""

    type_name: ClassVar[str] = "ToolSwitched"
    fullname: ClassVar[str] = "agentstream.events.ToolSwitched"

    tool: str
    """The tool's name."""
    enabled: bool
    """False: calls of the tool are rejected ('tool_disabled') and not run; true: allowed again."""
    reason: str | None = None
    """Why, shown to the model in the rejection."""
    by: str
    """Who switched it."""


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type_name: cls
    for cls in (
        AgentMessage,
        ApprovalDecided,
        ApprovalDecisionIgnored,
        ApprovalRequested,
        BudgetCharged,
        GoalChanged,
        HumanAnswered,
        MemoryWritten,
        ObservationRecorded,
        PlanProposed,
        RateLimitSet,
        RunAborted,
        RunAdmitted,
        RunCancelled,
        RunCompleted,
        RunFailed,
        RunQueued,
        RunResumed,
        RunSuspended,
        SandboxJobLaunched,
        ScratchpadSummarized,
        SubtaskCompleted,
        SubtaskPlanned,
        TaskSubmitted,
        ToolCallDispatched,
        ToolCallRejected,
        ToolCallRequested,
        ToolSwitched,
    )
}
"""Every event type of the catalogue, by short type name."""
