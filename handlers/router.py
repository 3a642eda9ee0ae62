"""The tool router: the gate between what a model asks for and what runs.

Every ToolCallRequested is checked before anything executes: the run is still going,
the arguments are a JSON object, the tool exists and the run may use it, the arguments
match the tool's JSON Schema, the budget has room, and the policy allows the tool's risk
tier. A call that fails any check becomes ToolCallRejected, which the planner sees as an
observation; one that passes becomes ToolCallDispatched with its canonical arguments and
idempotency key.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from handlers import limits
from handlers.policy import ToolPolicy
from handlers.stuck import FailsRunWhenStuck
from handlers.tools.base import ToolRegistry, canonical_json, idempotency_key
from projections.run_view import RunViews
from streams.events import Event, ToolCallDispatched, ToolCallRejected, ToolCallRequested
from streams.worker import HandlerContext


class ToolRouter(FailsRunWhenStuck):
    """Validates requested tool calls and dispatches or rejects them."""

    name = "tool-router"
    consumes = frozenset({"ToolCallRequested"})

    def __init__(self, views: RunViews, registry: ToolRegistry, policy: ToolPolicy | None = None) -> None:
        self.views = views
        self.registry = registry
        self.policy = policy or ToolPolicy()

    async def handle(self, event: Event, ctx: HandlerContext) -> Sequence[Event]:
        assert isinstance(event, ToolCallRequested)
        view = await self.views.view(event.meta.run_id, ctx.uncommitted)
        if view.terminal:
            return []

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
        if view.tools and event.tool not in view.tools:
            return reject("not_allowed", f"this run may only use: {', '.join(view.tools)}")
        errors = self.registry.validate(event.tool, args)
        if errors:
            return reject("invalid_arguments", *errors)
        if hit := limits.spending(view):
            return reject("budget", hit.reason)
        spec = self.registry.get(event.tool).spec
        if denial := self.policy.denies(spec.risk_tier):
            return reject("policy", denial)
        return [
            ToolCallDispatched(
                meta=ctx.meta(),
                step=event.step,
                tool_call_id=event.tool_call_id,
                tool=event.tool,
                arguments_json=canonical_json(args),
                idempotency_key=idempotency_key(event.meta.run_id, event.step, event.tool, args),
                attempt=1,
                timeout_ms=int(spec.timeout_s * 1000),
            )
        ]
