"""The topics agentstream uses, named under one prefix."""

from __future__ import annotations

from dataclasses import dataclass

from streams.log import TopicSpec


@dataclass(frozen=True)
class Topics:
    """Topic names and sizes of one deployment.

    - `events`: every event of every run, keyed by run id (a run lives in one partition).
    - `tasks`: where upstream systems publish `TaskSubmitted` without knowing our internals.
    - `dlq`: records no handler could process, with the reason in their headers.
    - `control`: operator settings every process applies (tool kill switches, model rate
      limits); one partition, read whole by every process, never by a consumer group.
    """

    prefix: str = "agentstream"
    partitions: int = 4

    @property
    def events(self) -> str:
        return f"{self.prefix}.events"

    @property
    def tasks(self) -> str:
        return f"{self.prefix}.tasks"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.dlq"

    @property
    def control(self) -> str:
        return f"{self.prefix}.control"

    def specs(self) -> list[TopicSpec]:
        return [
            TopicSpec(self.events, self.partitions),
            TopicSpec(self.tasks, self.partitions),
            TopicSpec(self.dlq, 1),
            TopicSpec(self.control, 1),
        ]
