"""The stop rules of a run: budgets and loop detection, as pure functions of its view.

Shared by the evaluator (which aborts runs) and by the planner and tool router (which
refuse to spend more once a limit is hit), so every handler applies the same rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from projections.run_view import RunView


@dataclass(frozen=True)
class LimitHit:
    """A limit the run has reached: its name (as in RunAborted.limit) and why."""

    limit: str
    reason: str


def spending(view: RunView) -> LimitHit | None:
    """Tokens or money beyond the budget."""
    if view.max_tokens is not None and view.total_tokens > view.max_tokens:
        return LimitHit("max_tokens", f"used {view.total_tokens} tokens, budget {view.max_tokens}")
    if view.max_usd is not None and view.cost_usd > view.max_usd:
        return LimitHit("max_usd", f"spent ${view.cost_usd:.6f}, budget ${view.max_usd:.6f}")
    return None


def steps(view: RunView) -> LimitHit | None:
    """No room for another planner step."""
    if view.max_steps is not None and view.step >= view.max_steps:
        return LimitHit("max_steps", f"took {view.step} steps, budget {view.max_steps}")
    return None


def deadline(view: RunView, now: datetime | None = None) -> LimitHit | None:
    """The wall-clock deadline has passed."""
    if view.deadline is None:
        return None
    now = now or datetime.now(UTC)
    if now >= view.deadline:
        return LimitHit("deadline", f"deadline {view.deadline.isoformat()} passed")
    return None


def _canonical(arguments_json: str) -> str:
    try:
        return json.dumps(json.loads(arguments_json), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return arguments_json


def loop(view: RunView, repeats: int) -> LimitHit | None:
    """The same tool with the same arguments requested `repeats` times in a row."""
    calls = [(c.tool, _canonical(c.arguments_json)) for s in view.steps for c in s.calls]
    if len(calls) < repeats:
        return None
    last = calls[-1]
    if all(call == last for call in calls[-repeats:]):
        return LimitHit("loop", f"{last[0]} called {repeats} times in a row with the same arguments")
    return None
