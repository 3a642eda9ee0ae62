"""The Kubernetes launcher's pure parts: egress allowlists to NetworkPolicy blocks, label
values, URLs. The manifests themselves are checked by a real API server in
tests/integration/test_k8s_launcher.py."""

from __future__ import annotations

import pytest

from sandbox_jobs.base import JobSpec, LaunchError, job_id_for
from sandbox_jobs.k8s import KubernetesLauncher, _label_value, egress_blocks

pytestmark = pytest.mark.unit


def test_ip_literals_and_cidrs_become_blocks() -> None:
    assert egress_blocks(["10.0.0.5", "192.168.0.0/16", "[2001:db8::1]", "10.0.0.5"]) == [
        {"ipBlock": {"cidr": "10.0.0.5/32"}},
        {"ipBlock": {"cidr": "192.168.0.0/16"}},
        {"ipBlock": {"cidr": "2001:db8::1/128"}},
    ]


def test_blocks_that_contain_metadata_ranges_cut_them_out() -> None:
    blocks = {
        b["ipBlock"]["cidr"]: b["ipBlock"].get("except")
        for b in egress_blocks(["0.0.0.0/0", "::/0", "169.0.0.0/8"])
    }
    assert blocks["0.0.0.0/0"] == ["169.254.0.0/16", "100.100.100.200/32"]
    assert blocks["::/0"] == ["fe80::/10", "fd00:ec2::254/128", "::ffff:a9fe:0/112"]
    assert blocks["169.0.0.0/8"] == ["169.254.0.0/16"]


@pytest.mark.parametrize(
    "host",
    [
        "169.254.169.254",
        "169.254.0.0/24",
        "fe80::1",
        "fd00:ec2::254",
        "100.100.100.200",
        "::ffff:169.254.169.254",
    ],
)
def test_metadata_and_link_local_entries_are_refused(host: str) -> None:
    with pytest.raises(LaunchError, match="link-local or metadata"):
        egress_blocks([host])


def test_host_names_resolve_to_their_addresses() -> None:
    assert {"ipBlock": {"cidr": "127.0.0.1/32"}} in egress_blocks(["localhost"])


@pytest.mark.parametrize("host", ["no-such-host.invalid", "", "a/b"])
def test_entries_that_are_not_hosts_are_refused(host: str) -> None:
    with pytest.raises(LaunchError, match="allowed host"):
        egress_blocks([host])


def test_label_values_stay_valid_and_distinct() -> None:
    assert _label_value("acme") == "acme"
    assert _label_value("run-123_x.y") == "run-123_x.y"
    odd = _label_value("Tenant #1 / prod")
    assert odd.startswith("Tenant--1---prod-") and len(odd) <= 63
    assert _label_value("a" * 80) != _label_value("a" * 81)
    assert len(_label_value("a" * 80)) <= 63
    assert _label_value("###").startswith("h-")


def test_url_must_name_a_namespace() -> None:
    for url in ("k8s://", "k8s://ns/extra", "local://ns"):
        with pytest.raises(ValueError, match="k8s://NAMESPACE"):
            KubernetesLauncher.from_url(url)


def test_no_cluster_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(LaunchError, match="no kubeconfig and not in a pod"):
        KubernetesLauncher.from_url("k8s://ns")


def test_bad_kubeconfig_is_a_clear_error(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "kubeconfig"
    path.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n")
    with pytest.raises(LaunchError, match="cannot load kubeconfig"):
        KubernetesLauncher.from_kubeconfig(str(path), "ns")


def test_odd_ids_become_valid_labels_and_exact_annotations() -> None:
    from kubernetes import client

    launcher = KubernetesLauncher("ns", client.ApiClient(client.Configuration()))
    spec = JobSpec(
        job_id=job_id_for("k"),
        run_id="r1",
        tenant_id="Tenant #1",
        tool_call_id="t" * 70,
        argv=("echo",),
    )
    manifest = launcher.job_manifest(spec)
    labels = manifest["metadata"]["labels"]
    assert all(len(v) <= 63 for v in labels.values())
    assert manifest["metadata"]["annotations"]["agentstream.dev/tenant"] == "Tenant #1"
    assert manifest["metadata"]["annotations"]["agentstream.dev/tool-call-id"] == "t" * 70
