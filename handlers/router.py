"""The tool router: the gate between what a model asks for and what runs.

Every ToolCallRequested is checked before anything executes: the run is still going,
the arguments are a JSON object, the tool exists and the run may use it, the arguments
match the tool's JSON Schema, the budget has room, the tenant's policy allows the tool's
risk tier and the arguments meet the policy's constraints. A call that fails any check
becomes ToolCallRejected, which the planner sees as an observation; one that passes
becomes ToolCallDispatched with its canonical arguments and idempotency key.

Two kinds of call wait for a person, with the run suspended and no worker held:

- a call the policy says needs approval becomes ApprovalRequested (carrying the sha256
  digest of the canonical arguments) and RunSuspended. The ApprovalDecided that settles
  the request (see `RunView.decision_problem`: same call, same digest, still pending, in
  time) dispatches it when approved, rejects it when denied or expired (or fails the run,
  if the policy says so on expiry), and resumes the run. Any other decision is recorded
  as ApprovalDecisionIgnored and dispatches nothing.
- an `ask_human` call becomes RunSuspended; the person's HumanAnswered becomes the call's
  ObservationRecorded and resumes the run.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from handlers import limits
from handlers.policy import TenantPolicies, ToolPolicy
from handlers.stuck import FailsRunWhenStuck
from handlers.tools.base import ToolRegistry, canonical_json, idempotency_key
from handlers.tools.human import ASK_HUMAN
from projections.control import ControlState, disabled_message
from projections.run_view import CallView, RunView, RunViews
from streams.envelope import now
from streams.events import (
    ApprovalDecided,
    ApprovalDecisionIgnored,
    ApprovalRequested,
    Event,
    HumanAnswered,
    ObservationRecorded,
    RunFailed,
    RunResumed,
    RunSuspended,
    ToolCallDispatched,
    ToolCallRejected,
    ToolCallRequested,
)
from streams.worker import HandlerContext

_APPROVAL_IDS = uuid.UUID("b0f6a0d4-1c1e-4d0a-8f5e-6a3e2c9d7b10")


def arguments_digest(arguments_json: str) -> str:
    """The digest an approval authorizes: sha256 of the canonical arguments, in hex."""
    return hashlib.sha256(arguments_json.encode()).hexdigest()


def approval_id(run_id: str, tool_call_id: str) -> str:
    """One approval id per call, the same however often the request is processed."""
    return str(uuid.uuid5(_APPROVAL_IDS, f"{run_id}/{tool_call_id}"))


def _step_of(view: RunView, tool_call_id: str) -> int:
    for step in view.steps:
        if any(c.tool_call_id == tool_call_id for c in step.calls):
            return step.step
    return view.step


class ToolRouter(FailsRunWhenStuck):
    """Validates requested tool calls and dispatches, rejects or holds them for a person."""

    name = "tool-router"
    consumes = frozenset({"ToolCallRequested", "ApprovalDecided", "HumanAnswered"})

    def __init__(
        self,
        views: RunViews,
        registry: ToolRegistry,
        policy: ToolPolicy | TenantPolicies | None = None,
        control: ControlState | None = None,
    ) -> None:
        """`control`: operators' tool kill switches (none if None)."""
        self.views = views
        self.registry = registry
        self.policies = TenantPolicies.of(policy)
        self.control = control or ControlState()

    async def handle(self, event: Event, ctx: HandlerContext) -> Sequence[Event]:
        view = await self.views.for_handler(event, ctx)
        if view.terminal:
            return []
        if isinstance(event, ApprovalDecided):
            return self._decided(event, view, ctx)
        if isinstance(event, HumanAnswered):
            return self._answered(event, view, ctx)
        assert isinstance(event, ToolCallRequested)
        return self._requested(event, view, ctx)

    def _dispatch(
        self, ctx: HandlerContext, view: RunView, step: int, call_id: str, tool: str, args: dict[str, Any]
    ) -> ToolCallDispatched:
        return ToolCallDispatched(
            meta=ctx.meta(),
            step=step,
            tool_call_id=call_id,
            tool=tool,
            arguments_json=canonical_json(args),
            idempotency_key=idempotency_key(view.run_id, step, tool, args),
            attempt=1,
            timeout_ms=int(self.registry.get(tool).spec.timeout_s * 1000),
        )

    def _requested(self, event: ToolCallRequested, view: RunView, ctx: HandlerContext) -> list[Event]:
        def reject(reason: str, *errors: str) -> list[Event]:
            return [
                ToolCallRejected(
                    meta=ctx.meta(),
                    step=event.step,
                    tool_call_id=event.tool_call_id,
                    tool=event.tool,
                    reason=reason,
                    errors=list(errors),
                )
            ]

        try:
            args = json.loads(event.arguments_json or "{}")
        except ValueError as exc:
            return reject("invalid_json", f"arguments are not valid JSON: {exc}")
        if not isinstance(args, dict):
            return reject("invalid_json", f"arguments must be a JSON object, not {type(args).__name__}")
        if event.tool not in self.registry:
            known = ", ".join(sorted(t.spec.name for t in self.registry))
            return reject("unknown_tool", f"no tool named {event.tool!r}; available: {known}")
        if switch := self.control.disabled(event.tool):
            return reject("tool_disabled", disabled_message(switch))
        if view.tools and event.tool not in view.tools:
            return reject("not_allowed", f"this run may only use: {', '.join(view.tools)}")
        errors = self.registry.validate(event.tool, args)
        if errors:
            return reject("invalid_arguments", *errors)
        if hit := limits.spending(view):
            return reject("budget", hit.reason)
        spec = self.registry.get(event.tool).spec
        policy = self.policies.for_tenant(view.tenant_id)
        if denial := policy.denies(spec.risk_tier):
            return reject("policy", denial)
        if violations := policy.violations(event.tool, args):
            return reject("policy", *(f"policy constraint: {v}" for v in violations))
        if event.tool == ASK_HUMAN:
            return [RunSuspended(meta=ctx.meta(), reason="ask_human", tool_call_id=event.tool_call_id)]
        if reason := policy.approval_reason(event.tool, spec.risk_tier):
            arguments = canonical_json(args)
            request_id = approval_id(view.run_id, event.tool_call_id)
            return [
                ApprovalRequested(
                    meta=ctx.meta(),
                    approval_id=request_id,
                    tool_call_id=event.tool_call_id,
                    tool=event.tool,
                    arguments_json=arguments,
                    arguments_digest=arguments_digest(arguments),
                    risk_tier=spec.risk_tier,
                    reason=reason,
                    expires_at=now() + timedelta(seconds=policy.approval_expiry_s),
                ),
                RunSuspended(
                    meta=ctx.meta(),
                    reason="approval",
                    approval_id=request_id,
                    tool_call_id=event.tool_call_id,
                ),
            ]
        return [self._dispatch(ctx, view, event.step, event.tool_call_id, event.tool, args)]

    def _resumed(self, view: RunView, ctx: HandlerContext, reason: str) -> list[Event]:
        """RunResumed once nothing else holds the run."""
        if view.status != "suspended" or view.waits:
            return []
        return [RunResumed(meta=ctx.meta(), reason=reason)]

    def _decided(self, event: ApprovalDecided, view: RunView, ctx: HandlerContext) -> list[Event]:
        request = view.approvals.get(event.approval_id)
        call = view.call(event.tool_call_id)
        if request is None or request.decided_by_event_id != event.meta.event_id or call is None:
            reason = view.ignored_decisions.get(event.meta.event_id, "unknown_call")
            return [
                ApprovalDecisionIgnored(
                    meta=ctx.meta(),
                    approval_id=event.approval_id,
                    tool_call_id=event.tool_call_id,
                    decision_event_id=event.meta.event_id,
                    reason=reason,
                )
            ]
        if call.done or call.status == "dispatched":
            return []
        step = _step_of(view, call.tool_call_id)
        outputs: list[Event] = []
        if event.decision == "approved":
            outputs.extend(self._approved(event, view, call, step, ctx))
        elif event.decision == "expired" and self.policies.for_tenant(view.tenant_id).on_expiry == "fail":
            return [
                RunFailed(
                    meta=ctx.meta(),
                    error=f"approval of {call.tool} call {call.tool_call_id} expired without a decision",
                    steps=view.step,
                )
            ]
        else:
            by = "" if event.decision == "expired" else f" by {event.reviewer}"
            comment = f": {event.comment}" if event.comment else ""
            outputs.append(
                ToolCallRejected(
                    meta=ctx.meta(),
                    step=step,
                    tool_call_id=call.tool_call_id,
                    tool=call.tool,
                    reason=f"approval_{event.decision}",
                    errors=[f"a person had to approve this call; it was {event.decision}{by}{comment}"],
                )
            )
        return outputs + self._resumed(view, ctx, f"approval {event.decision}")

    def _approved(
        self, event: ApprovalDecided, view: RunView, call: CallView, step: int, ctx: HandlerContext
    ) -> list[Event]:
        args = json.loads(call.arguments_json)
        if arguments_digest(canonical_json(args)) != event.arguments_digest:  # the fold checked; be sure
            raise AssertionError(f"approved digest does not match call {call.tool_call_id}")
        if hit := limits.spending(view):
            return [
                ToolCallRejected(
                    meta=ctx.meta(),
                    step=step,
                    tool_call_id=call.tool_call_id,
                    tool=call.tool,
                    reason="budget",
                    errors=[hit.reason],
                )
            ]
        return [self._dispatch(ctx, view, step, call.tool_call_id, call.tool, args)]

    def _answered(self, event: HumanAnswered, view: RunView, ctx: HandlerContext) -> list[Event]:
        call = view.call(event.tool_call_id)
        if call is None or call.tool != ASK_HUMAN or call.status != "awaiting_human":
            return []  # not a question, or answered already: the first answer counts
        return [
            ObservationRecorded(
                meta=ctx.meta(),
                step=_step_of(view, call.tool_call_id),
                tool_call_id=call.tool_call_id,
                tool=ASK_HUMAN,
                ok=True,
                data_json=json.dumps({"answer": event.answer, "answered_by": event.answered_by}),
            ),
            *self._resumed(view, ctx, "ask_human answered"),
        ]
