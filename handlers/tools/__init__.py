"""Built-in tools and the tool interface.

The interface, registry and idempotency keys live in :mod:`handlers.tools.base`, the
egress decision in :mod:`handlers.tools.egress`, and one module per built-in tool
(:mod:`handlers.tools.calculator`, :mod:`handlers.tools.http_fetch`).
"""

from handlers.tools.base import (
    Tool,
    ToolContext,
    ToolError,
    ToolRegistry,
    ToolResult,
    ToolSpec,
    UnknownToolError,
    builtin_registry,
    canonical_json,
    idempotency_key,
)
from handlers.tools.egress import Decision, EgressPolicy, NetworkPolicy

__all__ = [
    "Decision",
    "EgressPolicy",
    "NetworkPolicy",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolRegistry",
    "ToolResult",
    "ToolSpec",
    "UnknownToolError",
    "builtin_registry",
    "canonical_json",
    "idempotency_key",
]
