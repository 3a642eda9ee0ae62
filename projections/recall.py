"""Episodic recall: what a tenant's earlier runs can teach the run being planned.

Two sources, both per tenant and bounded: earlier runs whose goal resembles this one
(from the run state view: how they ended, their answer or error), and the latest
failures of the tools this run may use (from the tool failures view this module keeps:
errors and rejections, newest first). Each recollection cites the run and the event it
came from, so a planner can show the model where a note comes from and record which
events informed a decision.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from projections.projector import Projection
from projections.run_state import RUNS
from projections.run_view import RunView
from projections.stores.base import Index, ProjectionStore, Table, ViewTransaction
from streams.events import Event, ObservationRecorded, ToolCallRejected
from streams.log import LogRecord

DETAIL_CHARS = 300

TOOL_FAILURES = Table(
    "tool_failures",
    columns={
        "tenant_id": "text",
        "event_id": "text",
        "run_id": "text",
        "tool": "text",
        "kind": "text",
        "detail": "text",
        "occurred_at": "time",
    },
    key=("tenant_id", "event_id"),
    indexes=(Index("by_tool", equal=("tool",), order=("occurred_at",)),),
)


class ToolFailuresProjection(Projection):
    """Keeps every failed or rejected tool call, found by tenant and tool, newest first."""

    name = "tool_failures"
    consumes = frozenset({"ObservationRecorded", "ToolCallRejected"})
    tables = (TOOL_FAILURES,)

    async def apply(self, event: Event, record: LogRecord, txn: ViewTransaction) -> None:
        if isinstance(event, ObservationRecorded):
            if event.ok:
                return
            kind, detail = "error", event.error or "failed"
        else:
            assert isinstance(event, ToolCallRejected)
            kind, detail = f"rejected ({event.reason})", "; ".join(event.errors) or event.reason
        txn.put(
            TOOL_FAILURES,
            {
                "tenant_id": event.meta.tenant_id,
                "event_id": event.meta.event_id,
                "run_id": event.meta.run_id,
                "tool": event.tool,
                "kind": kind,
                "detail": detail[:DETAIL_CHARS],
                "occurred_at": event.meta.occurred_at,
            },
        )


@dataclass(frozen=True)
class Recollection:
    """One cited note from an earlier run."""

    run_id: str
    event_id: str
    text: str

    def cited(self) -> str:
        return f"[run {self.run_id}, event {self.event_id}] {self.text}"


_WORD = re.compile(r"[^\W_]{3,}", re.UNICODE)
_FINISHED = ("completed", "failed", "aborted")


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


def _similarity(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def _clip(text: str, chars: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= chars else text[: chars - 1] + "…"


class EpisodicRecall:
    """Finds the notes from a tenant's earlier runs that bear on a run being planned.

    `similar_runs` earlier runs whose goals share at least `min_similarity` of their
    words with this goal (Jaccard over words of three letters or more), and
    `tool_failures` latest failures of the tools the run may use; at most `limit` notes
    in all, each at most `chars` long. Only the run's own tenant is ever read.
    """

    def __init__(
        self,
        store: ProjectionStore,
        *,
        limit: int = 5,
        similar_runs: int = 3,
        tool_failures: int = 3,
        min_similarity: float = 0.25,
        candidates: int = 200,
        chars: int = 240,
    ) -> None:
        self.store = store
        self.limit = limit
        self.similar_runs = similar_runs
        self.tool_failures = tool_failures
        self.min_similarity = min_similarity
        self.candidates = candidates
        self.chars = chars

    async def recall(self, view: RunView, tools: Iterable[str]) -> list[Recollection]:
        if not view.tenant_id or self.limit <= 0:
            return []
        notes = await self._similar_runs(view)
        notes += await self._failures(view, tools)
        return notes[: self.limit]

    async def _similar_runs(self, view: RunView) -> list[Recollection]:
        goal = _words(view.goal)
        if not goal or self.similar_runs <= 0:
            return []
        scored: list[tuple[float, Recollection]] = []
        for status in _FINISHED:
            rows = await self.store.select(
                RUNS,
                view.tenant_id,
                index="by_status",
                equal={"status": status},
                descending=True,
                limit=self.candidates,
            )
            for row in rows:
                score = _similarity(goal, _words(row["goal"]))
                if row["run_id"] == view.run_id or score < self.min_similarity:
                    continue
                outcome = row["answer"] if status == "completed" else row["error"]
                text = f"{status}: goal {_clip(row['goal'], 80)!r}"
                if outcome:
                    text += f" -> {outcome}"
                note = Recollection(row["run_id"], row["last_event_id"] or "", _clip(text, self.chars))
                scored.append((score, note))
        scored.sort(key=lambda s: (-s[0], s[1].run_id))
        return [note for _, note in scored[: self.similar_runs]]

    async def _failures(self, view: RunView, tools: Iterable[str]) -> list[Recollection]:
        if self.tool_failures <= 0:
            return []
        found: list[tuple[datetime, Recollection]] = []
        for tool in sorted(set(tools)):
            rows = await self.store.select(
                TOOL_FAILURES,
                view.tenant_id,
                index="by_tool",
                equal={"tool": tool},
                descending=True,
                limit=self.tool_failures + 1,
            )
            for row in rows:
                if row["run_id"] == view.run_id:
                    continue
                text = _clip(f"{tool} {row['kind']}: {row['detail']}", self.chars)
                found.append((row["occurred_at"], Recollection(row["run_id"], row["event_id"], text)))
        found.sort(key=lambda f: f[0], reverse=True)
        return [note for _, note in found[: self.tool_failures]]
