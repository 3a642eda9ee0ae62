"""The ``memory_write`` and ``memory_search`` tools, and the handler that makes writes events.

Every memory write is a ``MemoryWritten`` event on the log; nothing writes the index
directly. The flow:

1. ``memory_write`` validates the text and tags and returns
   ``{"memory_id", "namespace", "text", "tags"}``. It has no side effect: the memory id is
   derived from the call's idempotency key, so a retried call returns the same id.
2. The tool executor records that result as an ``ObservationRecorded`` (tool
   ``memory_write``, ok), as for any tool.
3. ``MemoryWriter`` (a handler) consumes ``ObservationRecorded`` and, for a successful
   ``memory_write``, emits one ``MemoryWritten`` caused by the observation: same tenant and
   run, deterministic event id. Its output commits with its offset, exactly once.
4. ``MemoryProjection`` folds ``MemoryWritten`` into the index, so the write becomes
   searchable once the projection has applied it (a later step reads it; the same step
   does not).

The namespace a run writes to and the namespaces it may read are fixed when the tools are
built (``memory_tools(..., namespace=, readable=)``), never taken from the model's
arguments; the tenant is always the calling run's (``ToolContext.tenant_id``).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

from handlers.tools.base import JSONValue, Tool, ToolContext, ToolError, ToolResult, ToolSpec
from projections.embeddings import Embedder
from projections.memory import DEFAULT_NAMESPACE, MemoryAccessDenied, MemoryIndex, Principal
from streams.events import Event, EventMeta, MemoryWritten, ObservationRecorded
from streams.worker import Handler, HandlerContext

__all__ = [
    "MAX_MEMORY_CHARS",
    "MemorySearchTool",
    "MemoryWriteTool",
    "MemoryWriter",
    "memory_tools",
    "memory_written_for",
]

MAX_MEMORY_CHARS = 4000
MAX_TAGS = 16
MAX_TAG_CHARS = 64
MAX_K = 20
_MEMORY_IDS = uuid.UUID("0b5d8f4e-2f1a-4c7e-8d3b-6a9e1c2f7a40")


class MemoryWriteTool(Tool):
    """Remember a short text (with tags) in the run's tenant and write namespace."""

    def __init__(self, namespace: str = DEFAULT_NAMESPACE) -> None:
        self.namespace = namespace

    @cached_property
    def spec(self) -> ToolSpec:
        return ToolSpec(
            name="memory_write",
            description="Remember a fact for later runs. Returns the new memory's id.",
            parameters={
                "type": "object",
                "properties": {
                    "text": {"type": "string", "minLength": 1, "maxLength": MAX_MEMORY_CHARS},
                    "tags": {
                        "type": "array",
                        "items": {"type": "string", "minLength": 1, "maxLength": MAX_TAG_CHARS},
                        "maxItems": MAX_TAGS,
                    },
                },
                "required": ["text"],
                "additionalProperties": False,
            },
            risk_tier="low",
            timeout_s=5.0,
            idempotent=True,
            safe_to_retry=True,
            max_attempts=2,
        )

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        text = str(args["text"]).strip()
        if not text:
            raise ToolError("text must not be blank")
        cleaned = sorted({str(t).strip() for t in args.get("tags", []) if str(t).strip()})
        tags: list[JSONValue] = list(cleaned)
        memory_id = str(uuid.uuid5(_MEMORY_IDS, ctx.idempotency_key))
        return ToolResult.success(
            {"memory_id": memory_id, "namespace": self.namespace, "text": text, "tags": tags}
        )


class MemorySearchTool(Tool):
    """Search the memories the run's tenant may read (its granted namespaces only)."""

    def __init__(self, index: MemoryIndex, embedder: Embedder, readable: frozenset[str]) -> None:
        self.index = index
        self.embedder = embedder
        self.readable = readable

    @cached_property
    def spec(self) -> ToolSpec:
        return ToolSpec(
            name="memory_search",
            description="Find remembered facts relevant to a query, best first.",
            parameters={
                "type": "object",
                "properties": {
                    "query": {"type": "string", "minLength": 1, "maxLength": 1000},
                    "k": {"type": "integer", "minimum": 1, "maximum": MAX_K},
                },
                "required": ["query"],
                "additionalProperties": False,
            },
            risk_tier="low",
            timeout_s=10.0,
            idempotent=True,
            safe_to_retry=True,
            max_attempts=2,
        )

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        query = str(args["query"])
        k = int(args.get("k", 5))
        try:
            [vector] = await asyncio.to_thread(self.embedder.embed_query, [query])
            hits = await self.index.search(Principal(ctx.tenant_id, self.readable), vector, k)
        except MemoryAccessDenied as exc:
            raise ToolError(str(exc)) from exc
        except Exception as exc:  # a tool never lets library errors escape
            raise ToolError(f"memory search failed: {type(exc).__name__}", retryable=True) from exc
        return ToolResult.success(
            [
                {
                    "memory_id": h.memory_id,
                    "text": h.text,
                    "score": round(h.score, 4),
                    "tags": list(h.tags),
                    "namespace": h.namespace,
                    "created_at": h.created_at.isoformat(),
                    "source_event_id": h.citation.event_id,
                    "source_run_id": h.citation.run_id,
                }
                for h in hits
            ]
        )


def memory_tools(
    index: MemoryIndex,
    embedder: Embedder,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    readable: Sequence[str] | None = None,
) -> list[Tool]:
    """The two memory tools, writing to `namespace` and reading `readable` (default: it)."""
    grants = frozenset(readable) if readable is not None else frozenset({namespace})
    return [MemoryWriteTool(namespace), MemorySearchTool(index, embedder, grants)]


def memory_written_for(observation: ObservationRecorded, meta: EventMeta) -> MemoryWritten | None:
    """The MemoryWritten event a successful ``memory_write`` observation stands for, if any."""
    if observation.tool != "memory_write" or not observation.ok or not observation.data_json:
        return None
    if observation.truncated:
        return None
    try:
        data = json.loads(observation.data_json)
        memory_id, namespace, text = str(data["memory_id"]), str(data["namespace"]), str(data["text"])
        tags = [str(t) for t in data.get("tags", [])]
    except (ValueError, KeyError, TypeError):
        return None
    return MemoryWritten(
        meta=meta,
        memory_id=memory_id,
        namespace=namespace,
        text=text[:MAX_MEMORY_CHARS],
        tags=tags[:MAX_TAGS],
        metadata={"tool_call_id": observation.tool_call_id},
    )


class MemoryWriter(Handler):
    """Turns each successful ``memory_write`` observation into one ``MemoryWritten`` event."""

    name = "memory-writer"
    consumes = frozenset({"ObservationRecorded"})
    ordered = False

    async def handle(self, event: Event, ctx: HandlerContext) -> Sequence[Event]:
        if not isinstance(event, ObservationRecorded) or event.tool != "memory_write":
            return []
        written = memory_written_for(event, ctx.meta())
        return [] if written is None else [written]
