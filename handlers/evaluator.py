"""The evaluator: aborts a run when it overspends or loops.

Consumes the events that can move a run past a limit (charges and tool requests) and
emits RunAborted with the limit and the reason. Step and deadline limits are enforced by
the planner, the only handler that knows a new step is about to start.
"""

from __future__ import annotations

from collections.abc import Sequence

from handlers import limits
from projections.run_view import RunViews
from streams.events import Event, RunAborted
from streams.worker import Handler, HandlerContext


class Evaluator(Handler):
    """Applies the spending and loop limits to every run."""

    name = "evaluator"
    consumes = frozenset({"BudgetCharged", "ToolCallRequested"})

    def __init__(self, views: RunViews, *, loop_repeats: int = 3) -> None:
        self.views = views
        self.loop_repeats = loop_repeats

    async def handle(self, event: Event, ctx: HandlerContext) -> Sequence[Event]:
        view = await self.views.for_handler(event, ctx)
        if view.terminal:
            return []
        hit = limits.spending(view)
        if hit is None and event.type_name == "ToolCallRequested":
            hit = limits.loop(view, self.loop_repeats)
        if hit is None:
            return []
        return [RunAborted(meta=ctx.meta(), reason=hit.reason, limit=hit.limit)]
