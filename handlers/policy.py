"""Which tool calls a tenant's runs may make without a person looking first."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from handlers.tools.base import NetworkPolicy, RiskTier


@dataclass(frozen=True)
class ToolPolicy:
    """The tool policy a router enforces.

    Tiers not listed in `allowed_tiers` are denied. `network` is the egress policy tool
    calls run under (deny by default).
    """

    allowed_tiers: frozenset[RiskTier] = frozenset({"low", "medium"})
    network: NetworkPolicy = field(default_factory=NetworkPolicy)

    def denies(self, tier: RiskTier) -> str | None:
        if tier not in self.allowed_tiers:
            allowed = ", ".join(sorted(self.allowed_tiers)) or "none"
            return f"risk tier {tier!r} is not allowed by policy (allowed: {allowed})"
        return None

    @classmethod
    def from_file(cls, path: str | Path, extra_hosts: tuple[str, ...] = ()) -> ToolPolicy:
        """Load a policy file: `{"allowed_tiers": [...], "allowed_hosts": [...],
        "allow_private": false, "allow_loopback": false}`; every key is optional."""
        data: dict[str, Any] = json.loads(Path(path).read_text())
        return cls.build(data, extra_hosts)

    @classmethod
    def build(cls, data: dict[str, Any], extra_hosts: tuple[str, ...] = ()) -> ToolPolicy:
        unknown = set(data) - {"allowed_tiers", "allowed_hosts", "allow_private", "allow_loopback"}
        if unknown:
            raise ValueError(f"unknown policy keys: {', '.join(sorted(unknown))}")
        tiers = data.get("allowed_tiers", ["low", "medium"])
        if not set(tiers) <= {"low", "medium", "high"}:
            raise ValueError(f"allowed_tiers must be among low, medium, high: {tiers}")
        return cls(
            allowed_tiers=frozenset(cast(list[RiskTier], tiers)),
            network=NetworkPolicy(
                allowed_hosts=(*data.get("allowed_hosts", []), *extra_hosts),
                allow_private=bool(data.get("allow_private", False)),
                allow_loopback=bool(data.get("allow_loopback", False)),
            ),
        )
