"""Tenant policies: what they allow, what needs approval, and clear errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from handlers.policy import TenantBudget, TenantPolicies, ToolPolicy
from streams.events import Budget

pytestmark = pytest.mark.unit


def test_defaults_deny_high_risk_and_require_approval_for_email() -> None:
    policy = ToolPolicy.build({})
    assert policy.denies("high") is not None and policy.denies("medium") is None
    assert policy.approval_reason("send_email", "low") == "policy requires approval for send_email"
    assert policy.approval_reason("wire_money", "high") == "policy requires approval for high-risk tools"
    assert policy.approval_reason("calculator", "low") is None
    assert (policy.approval_expiry_s, policy.on_expiry, policy.max_concurrent_runs) == (3600.0, "deny", None)


def test_a_full_policy() -> None:
    policy = ToolPolicy.build(
        {
            "allowed_tiers": ["low", "medium", "high"],
            "require_approval": ["http_fetch"],
            "approval_tiers": [],
            "constraints": {"send_email": {"properties": {"to": {"pattern": "@example\\.org$"}}}},
            "approval_expiry_s": 30,
            "on_expiry": "fail",
            "max_concurrent_runs": 2,
            "budget": {"max_steps": 5, "max_usd": 1},
            "allowed_hosts": ["example.org"],
        },
        extra_hosts=("wikipedia.org",),
    )
    assert policy.denies("high") is None
    assert policy.approval_reason("send_email", "high") is None, "approval is what the policy says"
    assert policy.approval_reason("http_fetch", "low") is not None
    assert policy.violations("send_email", {"to": "a@example.org"}) == []
    assert policy.violations("send_email", {"to": "a@evil.com"}) == [
        "$.to: 'a@evil.com' does not match '@example\\\\.org$'"
    ]
    assert policy.violations("calculator", {"expression": "1"}) == []
    assert (policy.approval_expiry_s, policy.on_expiry, policy.max_concurrent_runs) == (30.0, "fail", 2)
    assert policy.budget == TenantBudget(max_steps=5, max_tokens=None, max_usd=1.0)
    assert policy.network.allowed_hosts == ("example.org", "wikipedia.org")


def test_budgets_are_lowered_to_the_tenant_ceilings() -> None:
    policy = ToolPolicy.build({"budget": {"max_steps": 5, "max_tokens": 1000}})
    capped = policy.capped(Budget(max_steps=50, max_tokens=None, max_usd=0.5))
    assert (capped.max_steps, capped.max_tokens, capped.max_usd) == (5, 1000, 0.5)
    assert policy.capped(Budget(max_steps=3)).max_steps == 3


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"allowed_tiers": ["reckless"]}, "allowed_tiers must be among"),
        ({"approval_tiers": "high"}, "approval_tiers must be among"),
        ({"colour": "red"}, "unknown policy keys: colour"),
        ({"require_approval": "send_email"}, "require_approval must be a list"),
        ({"constraints": []}, "constraints must map"),
        (
            {"constraints": {"send_email": {"type": "nonsense"}}},
            "constraints.send_email: invalid JSON Schema",
        ),
        ({"approval_expiry_s": 0}, "approval_expiry_s must be a positive"),
        ({"approval_expiry_s": True}, "approval_expiry_s must be a positive"),
        ({"on_expiry": "shrug"}, "on_expiry must be deny or fail"),
        ({"max_concurrent_runs": 0}, "max_concurrent_runs must be a whole number"),
        ({"budget": {"max_minutes": 3}}, "budget must be an object"),
        ({"budget": {"max_usd": "lots"}}, "budget.max_usd must be a positive number"),
        ({"budget": {"max_usd": -1}}, "budget.max_usd must be a positive number"),
        ({"budget": {"max_steps": 1.5}}, "max_steps must be a whole number"),
    ],
)
def test_bad_policies_are_refused_with_the_reason(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        ToolPolicy.build(data)


def test_a_policy_must_be_an_object() -> None:
    with pytest.raises(ValueError, match="a policy is a JSON object, not list"):
        ToolPolicy.build([])  # type: ignore[arg-type]


def test_one_policy_file_applies_to_every_tenant(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"allowed_tiers": ["low"]}))
    policies = TenantPolicies.load(path)
    assert policies.for_tenant("acme").allowed_tiers == {"low"}
    assert policies.tenants == {}
    assert ToolPolicy.from_file(path).allowed_tiers == {"low"}


def test_a_tenants_file_maps_tenants_to_policies(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(
        json.dumps({"default": {"allowed_tiers": ["low"]}, "tenants": {"acme": {"max_concurrent_runs": 3}}})
    )
    policies = TenantPolicies.load(path, ("example.org",))
    assert policies.for_tenant("globex").allowed_tiers == {"low"}
    assert policies.for_tenant("acme").max_concurrent_runs == 3
    assert policies.for_tenant("acme").network.allowed_hosts == ("example.org",)


def test_a_directory_holds_one_file_per_tenant(tmp_path: Path) -> None:
    (tmp_path / "default.json").write_text(json.dumps({"allowed_tiers": []}))
    (tmp_path / "acme.json").write_text(json.dumps({"allowed_tiers": ["low", "medium", "high"]}))
    policies = TenantPolicies.load(tmp_path)
    assert policies.for_tenant("acme").denies("high") is None
    assert policies.for_tenant("other").denies("low") is not None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert TenantPolicies.load(empty).default == ToolPolicy()


def test_bad_policy_files_name_the_file_and_the_tenant(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    with pytest.raises(ValueError, match="cannot read policy file"):
        TenantPolicies.load(path)
    path.write_text("{nope")
    with pytest.raises(ValueError, match="is not valid JSON"):
        TenantPolicies.load(path)
    path.write_text(json.dumps({"tenants": {"acme": {"allowed_tiers": ["x"]}}}))
    with pytest.raises(ValueError, match=r"\(tenant acme\): allowed_tiers"):
        TenantPolicies.load(path)
    path.write_text(json.dumps({"tenants": {}, "extra": 1}))
    with pytest.raises(ValueError, match="unknown keys next to tenants: extra"):
        TenantPolicies.load(path)
    path.write_text(json.dumps({"tenants": []}))
    with pytest.raises(ValueError, match="tenants must map"):
        TenantPolicies.load(path)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "acme.json").write_text(json.dumps({"on_expiry": 1}))
    with pytest.raises(ValueError, match=r"acme\.json: on_expiry"):
        TenantPolicies.load(tmp_path / "dir")
