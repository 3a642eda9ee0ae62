"""Operator control: the latest tool kill switches and model rate limits, folded in memory.

Operators append `ToolSwitched` and `RateLimitSet` events to the control topic
(`<prefix>.control`, one partition). Every process follows the whole topic from offset 0
with a `ControlTail` (not as a consumer group member: every process must see every
event) and folds it into a `ControlState`, which the router, the tool executor and the
model rate limiter read on every call. The topic is small (one record per operator
action), so reading it whole at start is cheap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from streams.codec import EventCodec
from streams.errors import PoisonEvent
from streams.events import Event, RateLimitSet, ToolSwitched
from streams.log import EventLog
from streams.topics import Topics

log = logging.getLogger(__name__)

CONTROL_RUN_ID = "control"
"""`meta.run_id` of control events: they belong to no run."""
ALL_TENANTS = "*"
"""`meta.tenant_id` of control events: they apply to every tenant."""


@dataclass(frozen=True)
class ToolSwitch:
    """A tool's latest kill-switch setting."""

    tool: str
    enabled: bool
    reason: str | None
    by: str
    at: datetime


@dataclass(frozen=True)
class RateLimit:
    """The latest limit of a provider or model spec; None means no limit on that dimension."""

    requests_per_minute: int | None
    tokens_per_minute: int | None
    by: str = ""
    at: datetime | None = None


class ControlState:
    """The latest operator settings, as of the control events applied so far."""

    def __init__(self) -> None:
        self._switches: dict[str, ToolSwitch] = {}
        self._limits: dict[str, RateLimit] = {}
        self.applied = 0
        """Control events applied (a cheap way to tell that something may have changed)."""

    def apply(self, event: Event) -> bool:
        """Fold one event; False for an event that is not a control event."""
        if isinstance(event, ToolSwitched):
            at = event.meta.occurred_at
            self._switches[event.tool] = ToolSwitch(event.tool, event.enabled, event.reason, event.by, at)
        elif isinstance(event, RateLimitSet):
            self._limits[event.provider] = RateLimit(
                event.requests_per_minute, event.tokens_per_minute, event.by, event.meta.occurred_at
            )
        else:
            return False
        self.applied += 1
        return True

    def disabled(self, tool: str) -> ToolSwitch | None:
        """The switch that turned `tool` off, or None while it is enabled."""
        switch = self._switches.get(tool)
        return switch if switch is not None and not switch.enabled else None

    def switches(self) -> list[ToolSwitch]:
        """Every tool ever switched, with its latest setting, by name."""
        return [self._switches[name] for name in sorted(self._switches)]

    def rate_limit(self, key: str) -> RateLimit | None:
        """The limit set for a provider or model spec, or None."""
        limit = self._limits.get(key)
        if limit is None or (limit.requests_per_minute is None and limit.tokens_per_minute is None):
            return None
        return limit

    def rate_limits(self) -> dict[str, RateLimit]:
        """Every limit in force, by provider or model spec."""
        return {key: limit for key in sorted(self._limits) if (limit := self.rate_limit(key)) is not None}


def disabled_message(switch: ToolSwitch) -> str:
    """What a caller of a disabled tool is told."""
    why = f": {switch.reason}" if switch.reason else ""
    return f"the tool {switch.tool} is disabled by an operator ({switch.by}){why}"


class ControlTail:
    """Follows the control topic from offset 0 and applies every event to a `ControlState`."""

    def __init__(self, log_: EventLog, codec: EventCodec, topics: Topics, state: ControlState) -> None:
        self.log = log_
        self.codec = codec
        self.topic = topics.control
        self.state = state
        self._offsets: dict[int, int] = {}

    async def step(self, limit: int = 1000) -> int:
        """Apply the records appended since the last step; returns how many were read."""
        if not self._offsets:
            self._offsets = dict.fromkeys(range(await self.log.partitions(self.topic)), 0)
        read = 0
        for partition, offset in self._offsets.items():
            end = await self.log.end_offset(self.topic, partition)
            if offset >= end:
                continue
            records = await self.log.read(self.topic, partition, offset, limit)
            for record in records:
                try:
                    self.state.apply(await self.codec.decode(record.value))
                except PoisonEvent as exc:  # a record nobody can read must not stop the rest
                    log.warning("skipping control record %d[%d]: %s", record.offset, partition, exc)
                offset = record.offset + 1
            # A short read got everything before `end`; offsets without records (Kafka's
            # transaction markers) are skipped rather than asked for again on every poll.
            self._offsets[partition] = offset if len(records) == limit else max(offset, end)
            read += len(records)
        return read

    async def catch_up(self) -> None:
        """Apply everything on the topic now."""
        while await self.step():
            pass
