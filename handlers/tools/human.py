"""`ask_human`: the agent asks a person a question and waits for the answer.

The tool never runs on a worker: the tool router suspends the run instead of dispatching
the call, and turns the person's HumanAnswered into the call's observation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from handlers.tools.base import Tool, ToolContext, ToolError, ToolResult, ToolSpec

ASK_HUMAN = "ask_human"


class AskHumanTool(Tool):
    """Asks a person a question; the run is suspended until they answer."""

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(
            name=ASK_HUMAN,
            description=(
                "Ask a person a question when you need information or a decision only a person"
                " can give. The run waits until they answer; the answer is the result."
            ),
            parameters={
                "type": "object",
                "properties": {"question": {"type": "string", "minLength": 1, "maxLength": 4000}},
                "required": ["question"],
                "additionalProperties": False,
            },
            risk_tier="low",
            idempotent=True,
        )

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        raise ToolError("ask_human is answered by a person, never run by a worker")
