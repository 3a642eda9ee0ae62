"""The projections every deployment runs, in the order a projector applies them."""

from __future__ import annotations

from projections.approvals import ApprovalsProjection
from projections.cost_ledger import CostLedgerProjection
from projections.episodic import EpisodicProjection
from projections.projector import Projection
from projections.recall import ToolFailuresProjection
from projections.run_state import RunStateProjection


def builtin_projections() -> list[Projection]:
    """Fresh instances of the built-in projections."""
    return [
        RunStateProjection(),
        EpisodicProjection(),
        ApprovalsProjection(),
        CostLedgerProjection(),
        ToolFailuresProjection(),
    ]
