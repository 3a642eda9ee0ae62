"""The control state: the latest switch per tool and limit per name, folded from the control
topic by a tail that every process runs from offset 0."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentstream.control import OperatorControls
from projections.control import ControlState, ControlTail
from streams.backends import open_log
from streams.codec import EventCodec
from streams.envelope import root_meta
from streams.events import RunCancelled
from streams.log import OutgoingRecord
from streams.registry import EmbeddedSchemaRegistry
from streams.topics import Topics

pytestmark = pytest.mark.unit


async def test_a_tail_applies_every_control_event_once_and_skips_what_it_cannot_read(tmp_path: Path) -> None:
    log = open_log(f"sqlite://{tmp_path}/log.db")
    topics = Topics("c", 2)
    for spec in topics.specs():
        await log.create_topic(spec)
    codec = EventCodec(EmbeddedSchemaRegistry(tmp_path / "registry.db"))
    ops = OperatorControls(log, codec, topics, producer="test")
    state = ControlState()
    tail = ControlTail(log, codec, topics, state)
    try:
        assert await tail.step() == 0
        await ops.switch_tool("http_fetch", enabled=False, by="ana", reason="outage")
        await ops.set_rate_limit("openai", requests_per_minute=10, tokens_per_minute=None, by="ana")
        await log.append([OutgoingRecord(topics.control, b"x", b"not avro")])  # a record nobody can read
        other = RunCancelled(meta=root_meta("r", "acme", "test"), requested_by="x")  # not a control event
        await log.append([OutgoingRecord(topics.control, b"r", await codec.encode(topics.control, other))])
        await ops.switch_tool("calculator", enabled=False, by="bo")
        await tail.catch_up()
        assert state.applied == 3
        assert [(s.tool, s.enabled) for s in state.switches()] == [
            ("calculator", False),
            ("http_fetch", False),
        ]
        switch = state.disabled("http_fetch")
        assert switch is not None and (switch.reason, switch.by) == ("outage", "ana")
        assert state.rate_limit("openai") is not None and state.rate_limit("anthropic") is None

        await ops.switch_tool("http_fetch", enabled=True, by="ana")
        await ops.set_rate_limit("openai", requests_per_minute=None, tokens_per_minute=None, by="ana")
        assert await tail.step() == 2
        assert await tail.step() == 0
        assert state.disabled("http_fetch") is None and state.disabled("calculator") is not None
        assert state.rate_limit("openai") is None and state.rate_limits() == {}

        # A process started later sees the same state from offset 0.
        fresh = await ops.state()
        assert [(s.tool, s.enabled) for s in fresh.switches()] == [
            (s.tool, s.enabled) for s in state.switches()
        ]
    finally:
        await log.close()
