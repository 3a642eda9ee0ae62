"""KubernetesLauncher against a real kube-apiserver (tests/services/k8s.sh: etcd, API server,
controller-manager, scheduler, kwok fake nodes). The server validates every object we send;
the Job controller and kwok drive each Job to its end."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from sandbox_jobs.base import (
    JobLimits,
    JobNotFound,
    JobSpec,
    JobState,
    LaunchError,
    job_id_for,
    open_launcher,
)
from sandbox_jobs.k8s import DENY_POLICY, EGRESS_LABEL, KubernetesLauncher

pytestmark = [pytest.mark.integration, pytest.mark.k8s]

WAIT_S = 90.0
KWOK_LOG = "kwok ran no container;\nthis is the fake node's log.\n"  # tests/services/k8s.sh


@pytest.fixture(scope="module")
def namespace(k8s_kubeconfig: str) -> Iterator[str]:
    """A namespace of its own for this module, deleted afterwards."""
    api = client.CoreV1Api(config.new_client_from_config(config_file=k8s_kubeconfig))
    name = f"sbx-test-{uuid.uuid4().hex[:8]}"
    api.create_namespace(client.V1Namespace.from_dict({"metadata": {"name": name}}))
    yield name
    api.delete_namespace(name)
    api.api_client.close()


@pytest.fixture
async def launcher(k8s_kubeconfig: str, namespace: str) -> AsyncIterator[KubernetesLauncher]:
    launcher = KubernetesLauncher.from_kubeconfig(k8s_kubeconfig, namespace, ttl_after_finished_s=600)
    yield launcher
    await launcher.aclose()


@pytest.fixture(scope="module")
def api(k8s_kubeconfig: str) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(config_file=k8s_kubeconfig)
    yield api_client
    api_client.close()


def spec_for(key: str | None = None, **overrides: object) -> JobSpec:
    key = key or uuid.uuid4().hex
    fields: dict[str, object] = {
        "job_id": job_id_for(key),
        "run_id": str(uuid.uuid4()),
        "tenant_id": "acme",
        "tool_call_id": f"call-{key[:8]}",
        "argv": ("python3", "-c", "print('hi')"),
    }
    fields.update(overrides)
    return JobSpec(**fields)  # type: ignore[arg-type]


async def wait_state(launcher: KubernetesLauncher, job_id: str, wanted: set[JobState]) -> JobState:
    """The job's state once it is one of ``wanted`` (the controllers and kwok move it)."""
    for _ in range(int(WAIT_S / 0.2)):
        state = await launcher.state(job_id)
        if state in wanted:
            return state
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} still {state}, not in {wanted}, after {WAIT_S}s")


# More memory than any fake node has: the scheduler never places the pod, so the job stays
# pending for as long as a test needs it to.
UNSCHEDULABLE = JobLimits(memory_mb=1024 * 1024)


async def test_job_manifest_read_back_from_the_server(
    launcher: KubernetesLauncher, api: client.ApiClient
) -> None:
    spec = spec_for(
        run_id="run-1",
        tool_call_id="tc-1",
        env={"MODE": "test"},
        stdin="data",
        limits=JobLimits(wall_s=12.5, memory_mb=128, tmpfs_mb=32, cpu_s=7, processes=9, open_files=33),
    )
    await launcher.launch(spec)

    job = client.BatchV1Api(api).read_namespaced_job(spec.job_id, launcher.namespace)
    assert job.metadata.labels["agentstream.dev/run-id"] == "run-1"
    assert job.metadata.labels["agentstream.dev/tenant"] == "acme"
    assert job.metadata.labels["agentstream.dev/tool-call-id"] == "tc-1"
    assert job.spec.backoff_limit == 0
    assert job.spec.active_deadline_seconds == 13
    assert job.spec.ttl_seconds_after_finished == 600
    pod = job.spec.template.spec
    assert pod.automount_service_account_token is False
    assert pod.restart_policy == "Never"
    assert pod.security_context.run_as_non_root is True
    assert pod.security_context.seccomp_profile.type == "RuntimeDefault"
    (container,) = pod.containers
    sc = container.security_context
    assert sc.run_as_non_root is True and sc.run_as_user >= 100_000
    assert sc.read_only_root_filesystem is True
    assert sc.allow_privilege_escalation is False
    assert sc.capabilities.drop == ["ALL"]
    assert sc.seccomp_profile.type == "RuntimeDefault"
    assert container.resources.limits == {"cpu": "1", "memory": "128Mi"}
    assert container.resources.requests["memory"] == "128Mi"
    assert container.args == ["7", "9", "33", "python3", "-c", "print('hi')"]
    env = {e.name: e.value for e in container.env}
    assert env["MODE"] == "test" and env["AGENTSTREAM_STDIN"] == "data"
    (volume,) = pod.volumes
    assert volume.empty_dir.medium == "Memory" and volume.empty_dir.size_limit == "32Mi"
    assert job.spec.template.metadata.labels["agentstream.dev/sandbox"] == "true"


async def test_job_completes_and_result_is_collected(launcher: KubernetesLauncher) -> None:
    spec = spec_for()
    await launcher.launch(spec)
    assert await wait_state(launcher, spec.job_id, {"succeeded", "failed"}) == "succeeded"

    result = await launcher.result(spec.job_id)
    assert result is not None
    assert result.job_id == spec.job_id
    assert result.state == "succeeded"
    assert result.exit_code == 0  # kwok's terminated state
    assert result.reason is None
    assert result.duration_ms >= 0
    # kwok runs no container: the log comes from the file k8s.sh gives kwok to serve, through the
    # API server's pod log endpoint as on a real node; there is no termination message.
    assert result.stdout == KWOK_LOG
    assert result.stdout_truncated is False
    assert result.stderr == ""

    await launcher.delete(spec.job_id)
    with pytest.raises(JobNotFound):
        await launcher.state(spec.job_id)


async def test_a_failing_command_reports_its_exit_code_and_stderr(launcher: KubernetesLauncher) -> None:
    # k8s.sh's kwok fails the container of this tool call with exit code 3 and a termination
    # message; the Job controller then fails the Job (backoffLimit 0: no second pod).
    spec = spec_for(tool_call_id="kwok-exit-3")
    await launcher.launch(spec)
    assert await wait_state(launcher, spec.job_id, {"succeeded", "failed"}) == "failed"
    result = await launcher.result(spec.job_id)
    assert result is not None
    assert (result.state, result.exit_code, result.reason) == ("failed", 3, None)
    assert result.stderr == "kwok: exit 3" and result.stderr_truncated is False
    assert result.stdout == KWOK_LOG
    await launcher.delete(spec.job_id)


async def test_stdout_is_capped_at_the_output_limit(launcher: KubernetesLauncher) -> None:
    spec = spec_for(limits=JobLimits(output_bytes=10))
    await launcher.launch(spec)
    assert await wait_state(launcher, spec.job_id, {"succeeded", "failed"}) == "succeeded"
    result = await launcher.result(spec.job_id)
    assert result is not None
    assert result.stdout == KWOK_LOG[:10]
    assert result.stdout_truncated is True
    await launcher.delete(spec.job_id)


async def test_result_is_none_while_the_job_waits(launcher: KubernetesLauncher) -> None:
    spec = spec_for(limits=UNSCHEDULABLE)
    await launcher.launch(spec)
    assert await launcher.state(spec.job_id) == "pending"
    assert await launcher.result(spec.job_id) is None
    await launcher.delete(spec.job_id)


async def test_same_job_id_twice_makes_one_job(launcher: KubernetesLauncher, api: client.ApiClient) -> None:
    spec = spec_for(limits=UNSCHEDULABLE)
    await launcher.launch(spec)
    await launcher.launch(spec)
    await launcher.launch(spec_for(job_id=spec.job_id, argv=("echo", "other"), limits=UNSCHEDULABLE))

    jobs = client.BatchV1Api(api).list_namespaced_job(
        launcher.namespace, label_selector=f"agentstream.dev/job-id={spec.job_id}"
    )
    assert len(jobs.items) == 1
    assert jobs.items[0].spec.template.spec.containers[0].args[3:] == ["python3", "-c", "print('hi')"]
    await launcher.delete(spec.job_id)


async def test_cancel_deletes_the_job_and_the_result_says_cancelled(
    launcher: KubernetesLauncher, api: client.ApiClient
) -> None:
    spec = spec_for(limits=UNSCHEDULABLE)
    await launcher.launch(spec)
    await launcher.cancel(spec.job_id)

    assert await launcher.state(spec.job_id) == "cancelled"
    batch = client.BatchV1Api(api)
    for _ in range(int(WAIT_S / 0.2)):
        if not batch.list_namespaced_job(
            launcher.namespace, label_selector=f"agentstream.dev/job-id={spec.job_id}"
        ).items:
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("the cancelled Job was not deleted")
    result = await launcher.result(spec.job_id)
    assert result is not None and result.state == "cancelled" and result.exit_code is None
    assert result.reason is not None and result.reason.startswith("cancelled")

    # A replayed launch of a cancelled job starts nothing; cancelling again is harmless.
    await launcher.launch(spec)
    await launcher.cancel(spec.job_id)
    assert not batch.list_namespaced_job(
        launcher.namespace, label_selector=f"agentstream.dev/job-id={spec.job_id}"
    ).items
    assert await launcher.state(spec.job_id) == "cancelled"

    await launcher.delete(spec.job_id)
    with pytest.raises(JobNotFound):
        await launcher.result(spec.job_id)


async def test_a_cancel_cut_short_reads_cancelled_and_the_next_cancel_finishes_it(
    launcher: KubernetesLauncher, api: client.ApiClient
) -> None:
    spec = spec_for(limits=UNSCHEDULABLE)
    await launcher.launch(spec)
    batch = client.BatchV1Api(api)
    # What a worker killed right after cancel()'s first step leaves behind: the mark, no
    # record, the Job still there.
    batch.patch_namespaced_job(
        spec.job_id,
        launcher.namespace,
        {"metadata": {"annotations": {"agentstream.dev/cancelled-at": "2026-01-01T00:00:00+00:00"}}},
    )
    assert await launcher.state(spec.job_id) == "cancelled"
    result = await launcher.result(spec.job_id)
    assert result is not None and result.state == "cancelled"
    assert result.reason == "cancelled at 2026-01-01T00:00:00+00:00"

    await launcher.cancel(spec.job_id)
    job = await asyncio.to_thread(
        batch.list_namespaced_job, launcher.namespace, label_selector=f"agentstream.dev/job-id={spec.job_id}"
    )
    assert all(j.metadata.deletion_timestamp for j in job.items)
    assert await launcher.state(spec.job_id) == "cancelled"
    await launcher.delete(spec.job_id)


async def test_cancel_of_a_finished_job_keeps_its_result(launcher: KubernetesLauncher) -> None:
    spec = spec_for()
    await launcher.launch(spec)
    await wait_state(launcher, spec.job_id, {"succeeded", "failed"})
    await launcher.cancel(spec.job_id)
    result = await launcher.result(spec.job_id)
    assert result is not None and result.state == "succeeded"
    await launcher.delete(spec.job_id)


async def test_wall_clock_deadline_fails_the_job_with_a_reason(launcher: KubernetesLauncher) -> None:
    spec = spec_for(limits=JobLimits(wall_s=1, memory_mb=1024 * 1024))
    await launcher.launch(spec)
    assert await wait_state(launcher, spec.job_id, {"succeeded", "failed"}) == "failed"
    result = await launcher.result(spec.job_id)
    assert result is not None
    assert result.state == "failed" and result.exit_code is None
    assert result.reason == "wall-clock limit of 1s exceeded"
    await launcher.delete(spec.job_id)


async def test_unknown_job(launcher: KubernetesLauncher) -> None:
    job_id = job_id_for(uuid.uuid4().hex)
    with pytest.raises(JobNotFound):
        await launcher.state(job_id)
    with pytest.raises(JobNotFound):
        await launcher.result(job_id)
    await launcher.cancel(job_id)
    await launcher.delete(job_id)


async def test_network_policies_deny_by_default_and_allow_the_tenants_list(
    launcher: KubernetesLauncher, api: client.ApiClient
) -> None:
    spec = spec_for(
        allowed_hosts=("93.184.215.14", "10.0.0.0/8", "0.0.0.0/0", "2001:db8::1"), limits=UNSCHEDULABLE
    )
    await launcher.launch(spec)
    net = client.NetworkingV1Api(api)

    deny = net.read_namespaced_network_policy(DENY_POLICY, launcher.namespace)
    assert deny.spec.pod_selector.match_labels == {"agentstream.dev/sandbox": "true"}
    assert sorted(deny.spec.policy_types) == ["Egress", "Ingress"]
    assert not deny.spec.egress and not deny.spec.ingress

    job = client.BatchV1Api(api).read_namespaced_job(spec.job_id, launcher.namespace)
    egress_id = job.spec.template.metadata.labels[EGRESS_LABEL]
    allow = net.read_namespaced_network_policy(f"agentstream-egress-{egress_id}", launcher.namespace)
    assert allow.spec.pod_selector.match_labels == {
        "agentstream.dev/sandbox": "true",
        EGRESS_LABEL: egress_id,
    }
    assert allow.metadata.labels["agentstream.dev/tenant"] == "acme"
    blocks = {p.ip_block.cidr: p.ip_block.var_except for p in allow.spec.egress[0].to}
    assert blocks == {
        "0.0.0.0/0": ["169.254.0.0/16", "100.100.100.200/32"],
        "10.0.0.0/8": None,
        "93.184.215.14/32": None,
        "2001:db8::1/128": None,
    }
    assert {p.port for p in allow.spec.egress[1].ports} == {53}

    # A job without an allowlist gets no egress label: only the deny policy selects it.
    plain = spec_for(limits=UNSCHEDULABLE)
    await launcher.launch(plain)
    job = client.BatchV1Api(api).read_namespaced_job(plain.job_id, launcher.namespace)
    assert EGRESS_LABEL not in job.spec.template.metadata.labels
    await launcher.delete(spec.job_id)
    await launcher.delete(plain.job_id)


@pytest.mark.parametrize(
    "host", ["169.254.169.254", "fe80::1", "fd00:ec2::254", "100.100.100.200", "no-such-host.invalid"]
)
async def test_blocked_or_unresolvable_hosts_are_refused(
    launcher: KubernetesLauncher, api: client.ApiClient, host: str
) -> None:
    spec = spec_for(allowed_hosts=("10.1.2.3", host))
    with pytest.raises(LaunchError, match="allowed host"):
        await launcher.launch(spec)
    with pytest.raises(JobNotFound):
        await launcher.state(spec.job_id)


async def test_the_server_rejects_an_invalid_job(launcher: KubernetesLauncher) -> None:
    with pytest.raises(LaunchError, match=r"422 Invalid.*Bad_Name"):
        await launcher.launch(spec_for(job_id="Bad_Name"))
    bad_env = spec_for(env={"": "x"})
    with pytest.raises(LaunchError, match="422 Invalid"):
        await launcher.launch(bad_env)
    with pytest.raises(JobNotFound):
        await launcher.state(bad_env.job_id)
    with pytest.raises(LaunchError, match="empty argv"):
        await launcher.launch(spec_for(argv=()))


async def test_missing_namespace_is_a_clear_error(k8s_kubeconfig: str) -> None:
    launcher = KubernetesLauncher.from_kubeconfig(k8s_kubeconfig, f"missing-{uuid.uuid4().hex[:8]}")
    with pytest.raises(LaunchError, match="NotFound"):
        await launcher.launch(spec_for())
    await launcher.aclose()


@pytest.fixture
def unreachable_kubeconfig(k8s_kubeconfig: str, tmp_path: Path) -> str:
    """The test cluster's kubeconfig with the server moved to a port nothing listens on (in
    this suite's range)."""
    kubeconfig = yaml.safe_load(Path(k8s_kubeconfig).read_text())
    kubeconfig["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:16449"
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    return str(path)


async def test_unreachable_api_server_is_a_clear_error(unreachable_kubeconfig: str) -> None:
    launcher = KubernetesLauncher.from_kubeconfig(unreachable_kubeconfig, "default")
    with pytest.raises(LaunchError, match=r"127\.0\.0\.1:16449"):
        await launcher.launch(spec_for())
    with pytest.raises(LaunchError, match=r"127\.0\.0\.1:16449"):
        await launcher.state(job_id_for("x"))
    await launcher.aclose()


async def test_open_launcher_by_url(
    k8s_kubeconfig: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", k8s_kubeconfig)
    monkeypatch.setenv("AGENTSTREAM_SANDBOX_IMAGE", "example.test/sandbox:1")
    launcher = open_launcher(f"k8s://{namespace}?ttl=60&cpu=500m")
    assert isinstance(launcher, KubernetesLauncher)
    assert (launcher.namespace, launcher.image, launcher.ttl_after_finished_s, launcher.cpu) == (
        namespace,
        "example.test/sandbox:1",
        60,
        "500m",
    )
    other = open_launcher(f"k8s://{namespace}?image=other:2")
    assert isinstance(other, KubernetesLauncher) and other.image == "other:2"
    await other.aclose()
    spec = spec_for()
    await launcher.launch(spec)
    assert await wait_state(launcher, spec.job_id, {"succeeded", "failed"}) == "succeeded"
    await launcher.delete(spec.job_id)
    await launcher.aclose()
