"""Tools used by tests, loadable with `agentstream serve --tool module:attribute`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

from handlers.tools.base import Tool, ToolContext, ToolResult, ToolSpec


class SideEffect(Tool):
    """A non-idempotent effect: appends the call id to the file in AGENTSTREAM_TEST_EFFECTS,
    then lingers, so a kill can land after the effect and before its result is recorded."""

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(
            name="side_effect",
            description="Records an irreversible effect.",
            parameters={"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
            risk_tier="medium",
            idempotent=False,
        )

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        with open(os.environ["AGENTSTREAM_TEST_EFFECTS"], "a") as out:  # noqa: ASYNC230 - a test file
            out.write(f"{ctx.idempotency_key} {args['n']}\n")
        await asyncio.sleep(float(os.environ.get("AGENTSTREAM_TEST_EFFECT_LINGER", "0.3")))
        return ToolResult.success({"n": args["n"]})
