"""The approvals inbox: requests waiting for a person, and how each was decided.

A request is `pending` from its ApprovalRequested until its ApprovalDecided; the first
decision is final (an expired request stays expired when a late approval arrives). A
decision that names other arguments or another call than the request, or an approval
that arrives after the request expired, settles nothing: the request stays pending
(the same rule as `RunView`, which the tool router acts on).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from projections.projector import Projection
from projections.stores.base import Index, ProjectionStore, Row, Table, ViewTransaction
from streams.events import ApprovalDecided, ApprovalRequested, Event
from streams.log import LogRecord

PENDING = "pending"

APPROVALS = Table(
    "approvals",
    columns={
        "tenant_id": "text",
        "approval_id": "text",
        "run_id": "text",
        "tool_call_id": "text",
        "tool": "text",
        "arguments_json": "text",
        "arguments_digest": "text",
        "risk_tier": "text",
        "reason": "text",
        "requested_at": "time",
        "expires_at": "time",
        "status": "text",
        "decided_digest": "text",
        "reviewer": "text",
        "comment": "text",
        "decided_at": "time",
    },
    key=("tenant_id", "approval_id"),
    indexes=(
        Index("by_status", equal=("status",), order=("requested_at",)),
        Index("by_requested", order=("requested_at",)),
    ),
)


@dataclass(frozen=True)
class Approval:
    """One approval request and, once there is one, its decision."""

    tenant_id: str
    approval_id: str
    run_id: str
    tool_call_id: str
    tool: str | None
    arguments_json: str | None
    arguments_digest: str | None
    risk_tier: str | None
    reason: str | None
    requested_at: datetime
    expires_at: datetime | None
    status: str
    """`pending`, or the decision: approved, denied or expired."""
    decided_digest: str | None
    """The arguments digest the decision authorizes."""
    reviewer: str | None
    comment: str | None
    decided_at: datetime | None

    @property
    def pending(self) -> bool:
        return self.status == PENDING

    @classmethod
    def from_row(cls, row: Row) -> Approval:
        return cls(**{name: row[name] for name in APPROVALS.columns})


class ApprovalsProjection(Projection):
    """Folds ApprovalRequested and ApprovalDecided into one row per approval."""

    name = "approvals"
    consumes = frozenset({"ApprovalRequested", "ApprovalDecided"})
    tables = (APPROVALS,)

    async def apply(self, event: Event, record: LogRecord, txn: ViewTransaction) -> None:
        meta = event.meta
        if not isinstance(event, ApprovalRequested | ApprovalDecided):
            return
        row = await txn.get(APPROVALS, (meta.tenant_id, event.approval_id)) or {
            "tenant_id": meta.tenant_id,
            "approval_id": event.approval_id,
            "run_id": meta.run_id,
            "tool_call_id": event.tool_call_id,
            "requested_at": meta.occurred_at,
            "status": PENDING,
        }
        if isinstance(event, ApprovalRequested):
            row.update(
                tool=event.tool,
                arguments_json=event.arguments_json,
                arguments_digest=event.arguments_digest,
                risk_tier=event.risk_tier,
                reason=event.reason,
                expires_at=event.expires_at,
            )
        elif row["status"] == PENDING and _settles(row, event):
            row.update(
                status=event.decision,
                decided_digest=event.arguments_digest,
                reviewer=event.reviewer,
                comment=event.comment,
                decided_at=meta.occurred_at,
            )
        txn.put(APPROVALS, row)


def _settles(row: Row, decision: ApprovalDecided) -> bool:
    if row.get("arguments_digest") is None:  # a decision seen before (or without) its request
        return True
    if (decision.tool_call_id, decision.arguments_digest) != (row["tool_call_id"], row["arguments_digest"]):
        return False
    expires_at = row.get("expires_at")
    return not (decision.decision == "approved" and expires_at and decision.meta.occurred_at >= expires_at)


class ApprovalInbox:
    """Queries over the approvals view. Every one is scoped to a tenant."""

    def __init__(self, store: ProjectionStore) -> None:
        self.store = store

    async def get(self, tenant_id: str, approval_id: str) -> Approval | None:
        rows = await self.store.select(APPROVALS, tenant_id, equal={"approval_id": approval_id}, limit=1)
        return Approval.from_row(rows[0]) if rows else None

    async def pending(self, tenant_id: str, limit: int = 100) -> Sequence[Approval]:
        """Requests still waiting, the longest-waiting first."""
        return await self.list(tenant_id, PENDING, limit=limit)

    async def list(
        self,
        tenant_id: str,
        status: str | None = None,
        *,
        limit: int = 100,
        newest_first: bool = False,
        since: datetime | None = None,
    ) -> Sequence[Approval]:
        """The tenant's approvals (of one status, if given) by request time."""
        if status is None:
            rows = await self.store.select(
                APPROVALS, tenant_id, index="by_requested", start=since, descending=newest_first, limit=limit
            )
        else:
            rows = await self.store.select(
                APPROVALS,
                tenant_id,
                index="by_status",
                equal={"status": status},
                start=since,
                descending=newest_first,
                limit=limit,
            )
        return [Approval.from_row(r) for r in rows]
