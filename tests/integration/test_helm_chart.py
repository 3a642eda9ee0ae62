"""The Helm chart: it lints, renders every component with locked-down pods, refuses bad
values with a clear message, and installs on a real kube-apiserver."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import service_address

CHART = Path(__file__).resolve().parents[2] / "helm" / "agentstream"

pytestmark = [pytest.mark.integration, pytest.mark.helm]


@pytest.fixture(scope="session")
def helm() -> str:
    return service_address("AGENTSTREAM_TEST_HELM", "the helm CLI (tests/services/helm.sh path)")


def render(helm: str, *sets: str, release: str = "demo") -> list[dict[str, Any]]:
    args = [helm, "template", release, str(CHART), "--namespace", "agents"]
    for value in sets:
        args += ["--set", value]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def refused(helm: str, *sets: str) -> str:
    args = [helm, "template", "demo", str(CHART)]
    for value in sets:
        args += ["--set", value]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode != 0, f"helm accepted {sets}"
    return done.stderr


def by_kind(docs: Sequence[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
    }


def test_the_chart_lints_clean(helm: str) -> None:
    done = subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_default_render_has_every_component_locked_down(helm: str) -> None:
    docs = render(helm)
    assert set(pod_specs(docs)) == {
        "demo-agentstream-workers",
        "demo-agentstream-projector",
        "demo-agentstream-gateway",
    }
    workers = by_kind(docs, "StatefulSet")["demo-agentstream-workers"]
    [container] = workers["spec"]["template"]["spec"]["containers"]
    assert container["args"][:3] == ["serve", "--member", "$(POD_INDEX)"], "a stable member index per pod"
    assert container["args"][3:8] == ["--members", "2", "--processes", "1", "--no-projector"]
    [pod_index] = [e for e in container["env"] if e["name"] == "POD_INDEX"]
    assert (
        pod_index["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    for name, spec in pod_specs(docs).items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for c in spec["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, name
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}, name
            assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/var/lib/agentstream", "/tmp"}, name
    config = by_kind(docs, "ConfigMap")["demo-agentstream"]["data"]
    assert config["AGENTSTREAM_LOG_URL"].startswith("kafka://")
    assert config["AGENTSTREAM_LEDGER_URL"].startswith("cassandra://"), "one ledger shared by every pod"
    assert config["AGENTSTREAM_SANDBOX_URL"] == "k8s://agents"
    [role] = by_kind(docs, "Role").values()
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert resources == {"jobs", "pods", "pods/log", "configmaps", "networkpolicies"}, (
        "the launcher's needs and no more"
    )
    assert all("*" not in rule["verbs"] for rule in role["rules"])
    [deny] = by_kind(docs, "NetworkPolicy").values()
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"] and "egress" not in deny["spec"]
    assert deny["spec"]["podSelector"]["matchLabels"] == {"agentstream.dev/sandbox": "true"}


def test_replicas_processes_and_partitions_size_the_worker_groups(helm: str) -> None:
    docs = render(helm, "workers.replicas=3", "workers.processes=4", "backends.partitions=24")
    workers = by_kind(docs, "StatefulSet")["demo-agentstream-workers"]
    assert workers["spec"]["replicas"] == 3
    [container] = workers["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--members") + 1] == "3" and args[args.index("--processes") + 1] == "4"
    assert by_kind(docs, "ConfigMap")["demo-agentstream"]["data"]["AGENTSTREAM_PARTITIONS"] == "24"
    error = refused(helm, "workers.replicas=3", "workers.processes=5", "backends.partitions=12")
    assert "15 members" in error and "backends.partitions (12)" in error


def test_components_can_be_left_out(helm: str) -> None:
    docs = render(helm, "gateway.enabled=false", "projector.enabled=false")
    assert set(pod_specs(docs)) == {"demo-agentstream-workers"}
    [container] = by_kind(docs, "StatefulSet")["demo-agentstream-workers"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert "--no-projector" not in container["args"], "without a projector deployment, member 0 projects"
    assert "demo-agentstream-gateway" not in by_kind(docs, "Service")


def test_tenant_allowlists_open_only_their_cidrs_and_never_metadata(helm: str) -> None:
    docs = render(
        helm,
        "sandbox.egressAllowlist.acme={203.0.113.0/24,0.0.0.0/0}",
        "sandbox.namespace=sandboxes",
    )
    policies = by_kind(docs, "NetworkPolicy")
    acme = policies["demo-agentstream-sandbox-egress-acme"]
    assert acme["metadata"]["namespace"] == "sandboxes"
    assert acme["spec"]["podSelector"]["matchLabels"]["agentstream.dev/tenant"] == "acme"
    blocks = [peer["ipBlock"] for rule in acme["spec"]["egress"] for peer in rule["to"]]
    assert blocks[0] == {"cidr": "203.0.113.0/24"}
    assert blocks[1] == {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]}


@pytest.mark.parametrize(
    ("value", "mentions"),
    [
        ("backends.logUrl=sqlite:///data/log.db", "logUrl"),
        ("backends.ledgerUrl=sqlite:///data/ledger.db", "ledgerUrl"),
        ("workers.replicas=0", "replicas"),
        ("workers.processes=0", "processes"),
        ("backends.partitions=0", "partitions"),
        ("sandbox.egressAllowlist.acme={169.254.169.254/32}", "egressAllowlist"),
        ("gateway.port=70000", "port"),
    ],
)
def test_bad_values_are_refused_with_a_clear_error(helm: str, value: str, mentions: str) -> None:
    assert mentions in refused(helm, value)


@pytest.mark.k8s
def test_the_chart_installs_on_a_real_api_server_and_uninstalls(helm: str, tmp_path: Path) -> None:
    kubeconfig = service_address("AGENTSTREAM_TEST_K8S", "a Kubernetes API server (tests/services/k8s.sh)")
    from kubernetes import client, config  # type: ignore[import-untyped]

    namespace = f"helm-{uuid.uuid4().hex[:8]}"
    base = [helm, "--kubeconfig", kubeconfig, "--namespace", namespace]
    installed = subprocess.run(
        [
            *base,
            "install",
            "agents",
            str(CHART),
            "--create-namespace",
            "--set",
            "sandbox.egressAllowlist.acme={203.0.113.0/24}",
        ],
        capture_output=True,
        text=True,
    )
    # The API server validated and stored every object, or the install failed.
    assert installed.returncode == 0, installed.stdout + installed.stderr
    api = config.new_client_from_config(config_file=kubeconfig)
    try:
        apps, rbac = client.AppsV1Api(api), client.RbacAuthorizationV1Api(api)
        net, core = client.NetworkingV1Api(api), client.CoreV1Api(api)
        workers = apps.read_namespaced_stateful_set("agents-agentstream-workers", namespace)
        assert workers.spec.replicas == 2
        assert workers.spec.template.spec.security_context.run_as_non_root is True
        deployments = {d.metadata.name for d in apps.list_namespaced_deployment(namespace).items}
        assert deployments == {"agents-agentstream-projector", "agents-agentstream-gateway"}
        role = rbac.read_namespaced_role("agents-agentstream-sandbox-launcher", namespace)
        assert {r for rule in role.rules for r in rule.resources} == {
            "jobs",
            "pods",
            "pods/log",
            "configmaps",
            "networkpolicies",
        }
        policies = {p.metadata.name for p in net.list_namespaced_network_policy(namespace).items}
        assert policies == {
            "agents-agentstream-sandbox-deny-egress",
            "agents-agentstream-sandbox-egress-acme",
        }
        config_map = core.read_namespaced_config_map("agents-agentstream", namespace)
        assert config_map.data["AGENTSTREAM_SANDBOX_URL"] == f"k8s://{namespace}"

        removed = subprocess.run([*base, "uninstall", "agents", "--wait"], capture_output=True, text=True)
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert apps.list_namespaced_stateful_set(namespace).items == []
        assert net.list_namespaced_network_policy(namespace).items == []
    finally:
        core = client.CoreV1Api(api)
        core.delete_namespace(namespace)
        api.close()


@pytest.mark.k8s
async def test_the_charts_service_account_can_launch_and_cancel_jobs_and_nothing_more(helm: str) -> None:
    """The Role is enough for the launcher and no wider: run it with the chart's own token."""
    kubeconfig = service_address("AGENTSTREAM_TEST_K8S", "a Kubernetes API server (tests/services/k8s.sh)")
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    from sandbox_jobs.base import JobLimits, JobSpec, job_id_for
    from sandbox_jobs.k8s import KubernetesLauncher

    namespace = f"helm-{uuid.uuid4().hex[:8]}"
    base = [helm, "--kubeconfig", kubeconfig, "--namespace", namespace]
    installed = await asyncio.to_thread(
        subprocess.run,
        [*base, "install", "agents", str(CHART), "--create-namespace"],
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    admin = config.new_client_from_config(config_file=kubeconfig)
    core = client.CoreV1Api(admin)
    try:
        token = core.create_namespaced_service_account_token(
            "agents-agentstream",
            namespace,
            client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
            ),
        ).status.token
        settings = client.Configuration()
        settings.host = admin.configuration.host
        settings.ssl_ca_cert = admin.configuration.ssl_ca_cert
        settings.api_key = {"authorization": f"Bearer {token}"}
        as_workers = client.ApiClient(settings)
        launcher = KubernetesLauncher(namespace, as_workers, ttl_after_finished_s=600)

        def spec(key: str, limits: JobLimits | None = None) -> JobSpec:
            return JobSpec(
                job_id=job_id_for(key),
                run_id="run-1",
                tenant_id="acme",
                tool_call_id=key,
                argv=("python3", "-c", "print(1)"),
                limits=limits or JobLimits(),
                allowed_hosts=("203.0.113.7",),
            )

        done = spec(f"done-{namespace}")
        await launcher.launch(done)
        for _ in range(300):
            if await launcher.result(done.job_id) is not None:
                break
            await asyncio.sleep(0.2)
        result = await launcher.result(done.job_id)
        assert result is not None and result.state == "succeeded"
        stuck = spec(f"stuck-{namespace}", JobLimits(memory_mb=1024 * 1024))  # never scheduled
        await launcher.launch(stuck)
        await launcher.cancel(stuck.job_id)
        assert await launcher.state(stuck.job_id) == "cancelled"
        await launcher.delete(done.job_id)

        with pytest.raises(ApiException) as denied:
            client.CoreV1Api(as_workers).list_namespaced_secret(namespace)
        assert denied.value.status == 403, "the workers' account reads no secrets"
        with pytest.raises(ApiException) as denied:
            client.CoreV1Api(as_workers).list_namespaced_pod("default")
        assert denied.value.status == 403, "nor anything outside the sandbox namespace"
        await launcher.aclose()
    finally:
        core.delete_namespace(namespace)
        admin.close()
