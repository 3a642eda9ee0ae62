"""Handlers used by the worker tests, also loadable by `agentstream worker module:attr`."""

from __future__ import annotations

from collections.abc import Sequence

from streams.errors import HandlerRejected, RetryableHandlerError
from streams.events import AgentMessage, Event, RunResumed
from streams.worker import Handler, HandlerContext


class Echo(Handler):
    """Answers every AgentMessage with one RunResumed naming its content.

    Content `reject` is refused for good, `flaky:N` fails N times with a retryable error
    then succeeds, `always-flaky` never succeeds, and `crash` raises a plain bug.
    """

    name = "echo"
    consumes = frozenset({"AgentMessage"})

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}

    async def handle(self, event: Event, ctx: HandlerContext) -> Sequence[Event]:
        assert isinstance(event, AgentMessage)
        content = event.content
        if content == "reject":
            raise HandlerRejected("this message can never be processed")
        if content == "crash":
            raise KeyError("a bug in the handler")
        if content == "always-flaky":
            raise RetryableHandlerError("the dependency is still down")
        if content.startswith("flaky:"):
            seen = self.attempts.get(event.meta.event_id, 0)
            self.attempts[event.meta.event_id] = seen + 1
            if seen < int(content.split(":")[1]):
                raise RetryableHandlerError(f"transient failure {seen + 1}")
        return [RunResumed(meta=ctx.meta(), reason=f"echo:{content}")]


class SlowEcho(Echo):
    """Echo that takes a millisecond per event, so a kill lands mid-stream."""

    name = "slow-echo"

    async def handle(self, event: Event, ctx: HandlerContext) -> Sequence[Event]:
        import asyncio

        await asyncio.sleep(0.001)
        return await super().handle(event, ctx)


class Gate(Echo):
    """Echo that holds every message whose content starts with `hold` until the test opens
    the gate: a stand-in for a model call that takes minutes."""

    name = "gate"

    def __init__(self) -> None:
        super().__init__()
        import asyncio

        self.gate = asyncio.Event()
        self.holding = 0
        self.started: list[str] = []

    async def handle(self, event: Event, ctx: HandlerContext) -> Sequence[Event]:
        assert isinstance(event, AgentMessage)
        self.started.append(event.content)
        if event.content.startswith("hold"):
            self.holding += 1
            try:
                await self.gate.wait()
            finally:
                self.holding -= 1
        return await super().handle(event, ctx)
