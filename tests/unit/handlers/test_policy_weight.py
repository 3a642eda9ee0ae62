"""A tenant policy's `weight`: its share of the call slots, validated like every other key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from handlers.policy import TenantPolicies, ToolPolicy

pytestmark = pytest.mark.unit


def test_weight_defaults_to_one_and_takes_fractions() -> None:
    assert ToolPolicy.build({}).weight == 1.0
    assert ToolPolicy.build({"weight": 4}).weight == 4.0
    assert ToolPolicy.build({"weight": 0.25}).weight == 0.25


@pytest.mark.parametrize("weight", [0, -1, True, "2", None, 1001])
def test_bad_weights_are_refused(weight: object) -> None:
    with pytest.raises(ValueError, match="weight must be a positive number"):
        ToolPolicy.build({"weight": weight})


def test_a_bad_weight_in_a_file_names_the_tenant(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"tenants": {"acme": {"weight": 3}, "globex": {"weight": 0}}}))
    with pytest.raises(ValueError, match=r"tenant globex\): weight"):
        TenantPolicies.load(path)
    path.write_text(json.dumps({"tenants": {"acme": {"weight": 3}}}))
    policies = TenantPolicies.load(path)
    assert (policies.for_tenant("acme").weight, policies.for_tenant("other").weight) == (3.0, 1.0)
