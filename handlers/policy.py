"""Which tool calls a tenant's runs may make, and which need a person to approve them first.

A policy file is JSON. It is either one policy for every tenant, or tenants mapped to
policies (`{"default": {...}, "tenants": {"acme": {...}}}`); a directory of
`<tenant>.json` files (and an optional `default.json`) works the same way. Every key of a
policy is optional:

```json
{"allowed_tiers": ["low", "medium", "high"],
 "require_approval": ["send_email"], "approval_tiers": ["high"],
 "constraints": {"send_email": {"properties": {"to": {"pattern": "@example\\\\.org$"}}}},
 "approval_expiry_s": 3600, "on_expiry": "deny",
 "max_concurrent_runs": 10, "budget": {"max_steps": 20, "max_tokens": 200000, "max_usd": 2.0},
 "allowed_hosts": ["example.org"], "allow_private": false, "allow_loopback": false,
 "weight": 1}
```
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from jsonschema import Draft202012Validator  # type: ignore[import-untyped,unused-ignore]
from jsonschema.exceptions import SchemaError  # type: ignore[import-untyped,unused-ignore]

from handlers.tools.base import NetworkPolicy, RiskTier
from streams.events import Budget

TIERS = ("low", "medium", "high")
OnExpiry = Literal["deny", "fail"]
KEYS = frozenset(
    {
        "allowed_tiers",
        "allowed_hosts",
        "allow_private",
        "allow_loopback",
        "require_approval",
        "approval_tiers",
        "constraints",
        "approval_expiry_s",
        "on_expiry",
        "max_concurrent_runs",
        "budget",
        "weight",
    }
)
BUDGET_KEYS = frozenset({"max_steps", "max_tokens", "max_usd"})


@dataclass(frozen=True)
class TenantBudget:
    """Ceilings on every run of a tenant; a run asking for more (or for no limit) gets these."""

    max_steps: int | None = None
    max_tokens: int | None = None
    max_usd: float | None = None


@dataclass(frozen=True)
class ToolPolicy:
    """The tool policy a router enforces for one tenant.

    Tiers not listed in `allowed_tiers` are denied. A call of a tool in `require_approval`,
    or of a tool whose tier is in `approval_tiers`, waits for a person's approval; an
    unanswered request expires after `approval_expiry_s` and then the call is denied
    (`on_expiry: deny`) or the run fails (`fail`). `constraints` maps a tool to a JSON
    Schema its arguments must also match. `network` is the egress policy tool calls run
    under (deny by default). `weight` is the tenant's share of the model and tool call
    slots when tenants wait for them (weight 2 gets twice the slots of weight 1).
    """

    allowed_tiers: frozenset[RiskTier] = frozenset({"low", "medium"})
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    require_approval: frozenset[str] = frozenset({"send_email"})
    approval_tiers: frozenset[RiskTier] = frozenset({"high"})
    constraints: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    approval_expiry_s: float = 3600.0
    on_expiry: OnExpiry = "deny"
    max_concurrent_runs: int | None = None
    budget: TenantBudget = field(default_factory=TenantBudget)
    weight: float = 1.0

    def capped(self, budget: Budget) -> Budget:
        """The budget of a new run, lowered to the tenant's ceilings."""

        def cap(asked: Any, ceiling: Any) -> Any:
            return ceiling if asked is None else asked if ceiling is None else min(asked, ceiling)

        return budget.model_copy(
            update={
                "max_steps": cap(budget.max_steps, self.budget.max_steps),
                "max_tokens": cap(budget.max_tokens, self.budget.max_tokens),
                "max_usd": cap(budget.max_usd, self.budget.max_usd),
            }
        )

    def denies(self, tier: RiskTier) -> str | None:
        if tier not in self.allowed_tiers:
            allowed = ", ".join(sorted(self.allowed_tiers)) or "none"
            return f"risk tier {tier!r} is not allowed by policy (allowed: {allowed})"
        return None

    def approval_reason(self, tool: str, tier: RiskTier) -> str | None:
        """Why a call of this tool needs approval, or None when it does not."""
        if tool in self.require_approval:
            return f"policy requires approval for {tool}"
        if tier in self.approval_tiers:
            return f"policy requires approval for {tier}-risk tools"
        return None

    def violations(self, tool: str, args: Mapping[str, Any]) -> list[str]:
        """How the arguments break the tool's constraints (empty when they do not)."""
        schema = self.constraints.get(tool)
        if schema is None:
            return []
        errors = sorted(Draft202012Validator(schema).iter_errors(args), key=lambda e: e.json_path)
        return [f"{e.json_path}: {e.message}"[:300] for e in errors[:20]]

    @classmethod
    def from_file(cls, path: str | Path, extra_hosts: tuple[str, ...] = ()) -> ToolPolicy:
        """Load one policy from a JSON file (see the module doc); every key is optional."""
        return cls.build(_read(Path(path)), extra_hosts)

    @classmethod
    def build(cls, data: Mapping[str, Any], extra_hosts: tuple[str, ...] = ()) -> ToolPolicy:
        if not isinstance(data, Mapping):
            raise ValueError(f"a policy is a JSON object, not {type(data).__name__}")
        unknown = set(data) - KEYS
        if unknown:
            raise ValueError(f"unknown policy keys: {', '.join(sorted(unknown))}")
        tiers = _tiers(data, "allowed_tiers", ["low", "medium"])
        approval_tiers = _tiers(data, "approval_tiers", ["high"])
        require = data.get("require_approval", ["send_email"])
        if not isinstance(require, list) or not all(isinstance(t, str) for t in require):
            raise ValueError(f"require_approval must be a list of tool names: {require!r}")
        constraints = data.get("constraints", {})
        if not isinstance(constraints, Mapping):
            raise ValueError("constraints must map tool names to JSON Schemas")
        for tool, schema in constraints.items():
            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as exc:
                raise ValueError(f"constraints.{tool}: invalid JSON Schema: {exc.message}") from exc
        expiry = data.get("approval_expiry_s", 3600)
        if isinstance(expiry, bool) or not isinstance(expiry, int | float) or expiry <= 0:
            raise ValueError(f"approval_expiry_s must be a positive number of seconds: {expiry!r}")
        weight = data.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= 1000:
            raise ValueError(f"weight must be a positive number of at most 1000: {weight!r}")
        on_expiry = data.get("on_expiry", "deny")
        if on_expiry not in ("deny", "fail"):
            raise ValueError(f"on_expiry must be deny or fail: {on_expiry!r}")
        return cls(
            allowed_tiers=tiers,
            network=NetworkPolicy(
                allowed_hosts=(*data.get("allowed_hosts", []), *extra_hosts),
                allow_private=bool(data.get("allow_private", False)),
                allow_loopback=bool(data.get("allow_loopback", False)),
            ),
            require_approval=frozenset(require),
            approval_tiers=approval_tiers,
            constraints={str(k): dict(v) for k, v in constraints.items()},
            approval_expiry_s=float(expiry),
            on_expiry=cast(OnExpiry, on_expiry),
            max_concurrent_runs=_count(data, "max_concurrent_runs"),
            budget=_budget(data.get("budget", {})),
            weight=float(weight),
        )


@dataclass(frozen=True)
class TenantPolicies:
    """Each tenant's policy; tenants without one get `default`."""

    default: ToolPolicy = field(default_factory=ToolPolicy)
    tenants: Mapping[str, ToolPolicy] = field(default_factory=dict)

    def for_tenant(self, tenant: str) -> ToolPolicy:
        return self.tenants.get(tenant, self.default)

    @classmethod
    def of(cls, policy: ToolPolicy | TenantPolicies | None) -> TenantPolicies:
        if isinstance(policy, TenantPolicies):
            return policy
        return cls(default=policy or ToolPolicy())

    @classmethod
    def load(cls, path: str | Path, extra_hosts: tuple[str, ...] = ()) -> TenantPolicies:
        """A policy file (one policy, or `{"default": ..., "tenants": {...}}`) or a directory
        of `<tenant>.json` files. Errors name the file and the tenant."""
        path = Path(path)
        if path.is_dir():
            files = {p.stem: p for p in sorted(path.glob("*.json"))}
            policies = {name: _policy(_read(p), extra_hosts, str(p)) for name, p in files.items()}
            default = policies.pop("default", None) or ToolPolicy.build({}, extra_hosts)
            return cls(default, policies)
        data = _read(path)
        if not (isinstance(data, Mapping) and "tenants" in data):
            return cls(_policy(data, extra_hosts, str(path)))
        unknown = set(data) - {"default", "tenants"}
        if unknown:
            raise ValueError(f"{path}: unknown keys next to tenants: {', '.join(sorted(unknown))}")
        tenants = data["tenants"]
        if not isinstance(tenants, Mapping):
            raise ValueError(f"{path}: tenants must map tenant ids to policies")
        return cls(
            _policy(data.get("default", {}), extra_hosts, f"{path} (default)"),
            {str(t): _policy(p, extra_hosts, f"{path} (tenant {t})") for t, p in tenants.items()},
        )


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read policy file {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ValueError(f"policy file {path} is not valid JSON: {exc}") from exc


def _policy(data: Any, extra_hosts: tuple[str, ...], where: str) -> ToolPolicy:
    try:
        return ToolPolicy.build(data, extra_hosts)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def _tiers(data: Mapping[str, Any], key: str, default: list[str]) -> frozenset[RiskTier]:
    tiers = data.get(key, default)
    if not isinstance(tiers, list) or not set(tiers) <= set(TIERS):
        raise ValueError(f"{key} must be among low, medium, high: {tiers}")
    return frozenset(cast(list[RiskTier], tiers))


def _count(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be a whole number of at least 1: {value!r}")
    return value


def _budget(data: Any) -> TenantBudget:
    if not isinstance(data, Mapping) or set(data) - BUDGET_KEYS:
        raise ValueError(f"budget must be an object with {', '.join(sorted(BUDGET_KEYS))}: {data!r}")
    max_usd = data.get("max_usd")
    if max_usd is not None and (isinstance(max_usd, bool) or not isinstance(max_usd, int | float)):
        raise ValueError(f"budget.max_usd must be a positive number: {max_usd!r}")
    if max_usd is not None and max_usd <= 0:
        raise ValueError(f"budget.max_usd must be a positive number: {max_usd!r}")
    return TenantBudget(
        _count(data, "max_steps"), _count(data, "max_tokens"), float(max_usd) if max_usd is not None else None
    )
