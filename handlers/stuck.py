"""What a handler a run depends on does when it cannot process one of the run's events."""

from __future__ import annotations

from collections.abc import Sequence

from streams.events import Event, RunFailed
from streams.worker import Handler, HandlerContext


class FailsRunWhenStuck(Handler):
    """A handler without which a run cannot progress: when it gives up on an event (the
    event is dead-lettered), the run fails with the reason instead of waiting forever."""

    def gave_up(self, event: Event, ctx: HandlerContext, error: str) -> Sequence[Event]:
        return [
            RunFailed(
                meta=ctx.meta(),
                error=f"{self.name} could not process {event.type_name}: {error}",
            )
        ]
