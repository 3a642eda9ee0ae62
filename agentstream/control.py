"""Operator control: switch tools off and on, set model rate limits, read what is in force.

Each action appends one event to the control topic (`<prefix>.control`), which every
serving process follows (see `projections.control`), so it applies everywhere within
about a second. The CLI (`agentstream tools`, `agentstream limits`) uses these actions;
any other front end should too.
"""

from __future__ import annotations

import re

from projections.control import ALL_TENANTS, CONTROL_RUN_ID, ControlState, ControlTail
from streams.codec import EventCodec
from streams.envelope import root_meta
from streams.events import RateLimitSet, ToolSwitched
from streams.log import EventLog, OutgoingRecord
from streams.topics import Topics

PROVIDERS = ("openai", "anthropic", "local")
_TOOL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")  # what a ToolSpec accepts as a name


class ControlError(ValueError):
    """A control action was refused: the message says why."""


class OperatorControls:
    """Appends operators' control events and reads the settings in force."""

    def __init__(self, log_: EventLog, codec: EventCodec, topics: Topics, *, producer: str = "cli") -> None:
        self.log = log_
        self.codec = codec
        self.topics = topics
        self.producer = producer

    async def _append(self, key: str, event: ToolSwitched | RateLimitSet) -> None:
        value = await self.codec.encode(self.topics.control, event)
        await self.log.append([OutgoingRecord(self.topics.control, key.encode(), value)])

    async def switch_tool(
        self, tool: str, *, enabled: bool, by: str, reason: str | None = None
    ) -> ToolSwitched:
        """Turn a tool off (its calls are rejected and not run) or back on, for every tenant."""
        if not _TOOL_NAME.match(tool):
            raise ControlError(f"not a tool name: {tool!r}")
        event = ToolSwitched(
            meta=root_meta(CONTROL_RUN_ID, ALL_TENANTS, self.producer),
            tool=tool,
            enabled=enabled,
            reason=reason or None,
            by=by,
        )
        await self._append(tool, event)
        return event

    async def set_rate_limit(
        self, provider: str, *, requests_per_minute: int | None, tokens_per_minute: int | None, by: str
    ) -> RateLimitSet:
        """Limit a provider (`openai`) or model spec (`openai:gpt-4o`); None lifts that limit."""
        name, _, model = provider.partition(":")
        if name not in PROVIDERS or (":" in provider and not model.strip()):
            raise ControlError(
                f"not a provider or model spec: {provider!r} (expected one of {', '.join(PROVIDERS)},"
                " optionally followed by :MODEL)"
            )
        for what, value in (
            ("requests per minute", requests_per_minute),
            ("tokens per minute", tokens_per_minute),
        ):
            if value is not None and value < 1:
                raise ControlError(f"{what} must be at least 1: {value}")
        event = RateLimitSet(
            meta=root_meta(CONTROL_RUN_ID, ALL_TENANTS, self.producer),
            provider=provider,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            by=by,
        )
        await self._append(provider, event)
        return event

    async def state(self) -> ControlState:
        """The settings in force: the whole control topic, folded."""
        state = ControlState()
        await ControlTail(self.log, self.codec, self.topics, state).catch_up()
        return state
