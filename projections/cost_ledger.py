"""The cost ledger: what each tenant has used, in tokens, money and tool calls.

Totals come from BudgetCharged (tokens, dollars, charged tool calls) and, per tool, from
ObservationRecorded (calls, failures, time). Money is summed in integer nano-dollars:
a tenant's runs live in many partitions, applied in whatever interleaving a batch has,
and integer sums do not depend on it (float sums would, in their last bits).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from projections.projector import Projection
from projections.stores.base import MAX_ROWS, ProjectionStore, Row, Table, ViewTransaction
from streams.events import BudgetCharged, Event, ObservationRecorded
from streams.log import LogRecord

NANOS_PER_USD = 1_000_000_000

TENANT_COSTS = Table(
    "cost_ledger",
    columns={
        "tenant_id": "text",
        "input_tokens": "int",
        "output_tokens": "int",
        "cost_nano_usd": "int",
        "charges": "int",
        "tool_calls": "int",
        "updated_at": "time",
    },
    key=("tenant_id",),
)

TOOL_USAGE = Table(
    "cost_ledger_tools",
    columns={
        "tenant_id": "text",
        "tool": "text",
        "calls": "int",
        "failures": "int",
        "duration_ms": "int",
        "updated_at": "time",
    },
    key=("tenant_id", "tool"),
)


def to_nanos(usd: float) -> int:
    return round(usd * NANOS_PER_USD)


@dataclass(frozen=True)
class ToolUsage:
    """How often a tenant's runs called one tool, and how it went."""

    tool: str
    calls: int
    failures: int
    duration_ms: int


@dataclass(frozen=True)
class TenantCost:
    """Everything a tenant's runs have been charged."""

    tenant_id: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost_nano_usd: int = 0
    charges: int = 0
    """BudgetCharged events applied."""
    tool_calls: int = 0
    """Tool calls charged against budgets."""
    tools: Mapping[str, ToolUsage] = field(default_factory=dict)
    """Observed calls per tool."""
    updated_at: datetime | None = None

    @property
    def cost_usd(self) -> float:
        return self.cost_nano_usd / NANOS_PER_USD

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def _later(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b > a else a


class CostLedgerProjection(Projection):
    """Sums BudgetCharged per tenant and ObservationRecorded per tenant and tool."""

    name = "cost_ledger"
    consumes = frozenset({"BudgetCharged", "ObservationRecorded"})
    tables = (TENANT_COSTS, TOOL_USAGE)

    async def apply(self, event: Event, record: LogRecord, txn: ViewTransaction) -> None:
        tenant = event.meta.tenant_id
        when = event.meta.occurred_at
        if isinstance(event, BudgetCharged):
            row = await txn.get(TENANT_COSTS, (tenant,)) or {
                "tenant_id": tenant,
                "input_tokens": 0,
                "output_tokens": 0,
                "cost_nano_usd": 0,
                "charges": 0,
                "tool_calls": 0,
                "updated_at": None,
            }
            row["input_tokens"] += event.usage.input_tokens
            row["output_tokens"] += event.usage.output_tokens
            row["cost_nano_usd"] += to_nanos(event.usage.cost_usd)
            row["charges"] += 1
            row["tool_calls"] += event.tool_calls
            row["updated_at"] = _later(row["updated_at"], when)
            txn.put(TENANT_COSTS, row)
        elif isinstance(event, ObservationRecorded):
            usage = await txn.get(TOOL_USAGE, (tenant, event.tool)) or {
                "tenant_id": tenant,
                "tool": event.tool,
                "calls": 0,
                "failures": 0,
                "duration_ms": 0,
                "updated_at": None,
            }
            usage["calls"] += 1
            usage["failures"] += 0 if event.ok else 1
            usage["duration_ms"] += event.duration_ms
            usage["updated_at"] = _later(usage["updated_at"], when)
            txn.put(TOOL_USAGE, usage)


def _tool(row: Row) -> ToolUsage:
    return ToolUsage(row["tool"], row["calls"], row["failures"], row["duration_ms"])


class CostLedger:
    """Queries over the cost ledger. Every one is scoped to a tenant."""

    def __init__(self, store: ProjectionStore) -> None:
        self.store = store

    async def tools(self, tenant_id: str, limit: int = MAX_ROWS) -> Sequence[ToolUsage]:
        rows = await self.store.select(TOOL_USAGE, tenant_id, limit=limit)
        return [_tool(r) for r in rows]

    async def summary(self, tenant_id: str) -> TenantCost:
        """The tenant's totals; all zero for a tenant with no charges."""
        rows = await self.store.select(TENANT_COSTS, tenant_id, limit=1)
        tools = {t.tool: t for t in await self.tools(tenant_id)}
        if not rows:
            return TenantCost(tenant_id, tools=tools)
        row = rows[0]
        return TenantCost(
            tenant_id=tenant_id,
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            cost_nano_usd=row["cost_nano_usd"],
            charges=row["charges"],
            tool_calls=row["tool_calls"],
            tools=tools,
            updated_at=row["updated_at"],
        )
