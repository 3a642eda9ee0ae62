"""Sandboxed jobs as Kubernetes Jobs (``k8s://NAMESPACE``).

Each job is one ``batch/v1`` Job named by its job id, so a replayed launch finds the Job
that exists and starts nothing. The pod runs as a non-root uid of its own, with a read-only
root filesystem, every capability dropped, the runtime's default seccomp profile, no
service-account token, CPU and memory requests and limits, a writable tmpfs at ``/tmp``,
and a wall-clock deadline (``activeDeadlineSeconds``); the Job never retries
(``backoffLimit: 0``) and is garbage-collected ``ttlSecondsAfterFinished`` after it ends.
CPU seconds, processes and open files are rlimits set by a small Python entrypoint in the
container before it runs the command (the image must have ``python3``), which also feeds
stdin from an environment variable and keeps stderr for the termination message.

Network: a namespace-wide policy denies all ingress and egress to sandbox pods; a job with
``allowed_hosts`` also gets an egress policy that allows exactly those addresses (IP literals,
CIDRs, or host names resolved at launch) plus DNS. Link-local and cloud metadata ranges are
always cut out of every allowed block with ``except``, and an allowlist entry inside them is
refused.

Results: the exit code and stderr come from the container's terminated state (stderr is the
termination message, at most 4 KB as Kubernetes caps it); stdout from the pod log. A
cancelled job leaves a small ConfigMap of the same name behind (a tombstone), so its result
says cancelled after the Job is deleted, and a replayed launch does not start it again.

The official client is blocking; every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import math
import os
import re
import socket
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from sandbox_jobs.base import (
    FINISHED,
    JobNotFound,
    JobResult,
    JobSpec,
    JobState,
    LaunchError,
    SandboxLauncher,
)

__all__ = ["BLOCKED_NETWORKS", "DEFAULT_IMAGE", "KubernetesLauncher", "egress_blocks"]

DEFAULT_IMAGE = "python:3.11-slim"
DEFAULT_TTL_S = 3600
CONTAINER = "job"
LABEL_PREFIX = "agentstream.dev/"
SANDBOX_LABEL = LABEL_PREFIX + "sandbox"
EGRESS_LABEL = LABEL_PREFIX + "egress"
CANCELLED_ANNOTATION = LABEL_PREFIX + "cancelled-at"
DENY_POLICY = "agentstream-sandbox-deny-all"
TERMINATION_LOG_BYTES = 4096
REQUEST_TIMEOUT_S = 10.0

# Link-local (which holds 169.254.169.254, the metadata address of most clouds) and the other
# metadata addresses clouds use: never reachable from a sandbox, whatever an allowlist says.
BLOCKED_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("100.100.100.200/32"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
    ipaddress.ip_network("::ffff:169.254.0.0/112"),
)

# Runs in the container as `python3 -c ENTRYPOINT cpu_s processes open_files argv...`.
ENTRYPOINT = """\
import os, resource, subprocess, sys
cpu, nproc, nofile = (int(a) for a in sys.argv[1:4])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
data = os.environ.pop("AGENTSTREAM_STDIN", "").encode()
try:
    done = subprocess.run(sys.argv[4:], input=data, stderr=subprocess.PIPE)
    code, err = done.returncode, done.stderr
except OSError as e:
    code, err = 127, str(e).encode()
sys.stdout.flush()
try:
    with open("/dev/termination-log", "wb") as f:
        f.write((b"T" if len(err) > 4000 else b"F") + err[-4000:])
except OSError:
    pass
sys.exit(code if code >= 0 else 128 - code)
"""

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
T = TypeVar("T")


def _label_value(value: str) -> str:
    """``value`` if Kubernetes accepts it as a label value, else a readable, valid stand-in
    (the exact value is kept in an annotation)."""
    if len(value) <= 63 and _LABEL_VALUE.match(value):
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:10]
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", value)[:50].strip("-_.")
    return f"{cleaned}-{digest}" if cleaned else f"h-{digest}"


def egress_blocks(hosts: Iterable[str]) -> list[dict[str, Any]]:
    """NetworkPolicy ``ipBlock`` peers for an allowlist: every entry is an IP literal, a CIDR
    or a host name (resolved now, every address it has); blocked ranges inside a block are
    cut out with ``except``. Raises :class:`LaunchError` for an entry that is, or resolves to,
    a blocked address, or that does not resolve."""
    networks: dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network] = {}
    for host in hosts:
        for network in _networks_of(host):
            for blocked in BLOCKED_NETWORKS:
                if network.version == blocked.version and network.subnet_of(blocked):  # type: ignore[arg-type]
                    raise LaunchError(
                        f"allowed host {host!r} ({network}) is a link-local or metadata address;"
                        " sandboxes can never reach those"
                    )
            networks[str(network)] = network
    peers: list[dict[str, Any]] = []
    for cidr, network in sorted(networks.items()):
        excepted = [
            str(blocked)
            for blocked in BLOCKED_NETWORKS
            if blocked.version == network.version and blocked.subnet_of(network)  # type: ignore[arg-type]
        ]
        block: dict[str, Any] = {"cidr": cidr}
        if excepted:
            block["except"] = excepted
        peers.append({"ipBlock": block})
    return peers


def _networks_of(host: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    entry = host.strip().strip("[]")
    try:
        return [ipaddress.ip_network(entry, strict=False)]
    except ValueError:
        pass
    if not entry or "/" in entry:
        raise LaunchError(f"allowed host {host!r} is neither an address, a CIDR nor a host name")
    try:
        infos = socket.getaddrinfo(entry, None, proto=socket.IPPROTO_TCP)
    except OSError as e:
        raise LaunchError(f"allowed host {host!r} does not resolve: {e}") from e
    return sorted(
        {ipaddress.ip_network(str(info[4][0]).split("%")[0]) for info in infos},
        key=lambda n: (n.version, int(n.network_address)),
    )


class KubernetesLauncher(SandboxLauncher):
    """Runs each sandboxed job as a Kubernetes Job in one namespace (``k8s://NAMESPACE``)."""

    def __init__(
        self,
        namespace: str,
        api_client: client.ApiClient,
        *,
        image: str = DEFAULT_IMAGE,
        ttl_after_finished_s: int = DEFAULT_TTL_S,
        cpu: str = "1",
    ) -> None:
        self.namespace = namespace
        self.image = image
        self.ttl_after_finished_s = ttl_after_finished_s
        self.cpu = cpu
        self._api_client = api_client
        self._batch = client.BatchV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._net = client.NetworkingV1Api(api_client)
        self._policies_ready: set[str] = set()

    @classmethod
    def from_url(cls, url: str) -> KubernetesLauncher:
        """``k8s://NAMESPACE[?image=IMAGE&ttl=SECONDS&cpu=CORES]``; the image defaults to
        ``AGENTSTREAM_SANDBOX_IMAGE``, then :data:`DEFAULT_IMAGE`. The cluster comes from
        ``KUBECONFIG`` (or ``~/.kube/config``), else from the in-cluster service account."""
        parts = urlsplit(url)
        namespace = parts.netloc
        if parts.scheme != "k8s" or not namespace or parts.path not in ("", "/"):
            raise ValueError(f"expected k8s://NAMESPACE, got {url!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        options: dict[str, Any] = {}
        image = query.get("image") or os.environ.get("AGENTSTREAM_SANDBOX_IMAGE")
        if image:
            options["image"] = image
        if "ttl" in query:
            options["ttl_after_finished_s"] = int(query["ttl"])
        if "cpu" in query:
            options["cpu"] = query["cpu"]
        kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        if os.path.exists(kubeconfig.split(os.pathsep)[0]):
            return cls.from_kubeconfig(kubeconfig.split(os.pathsep)[0], namespace, **options)
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except ConfigException as e:
            raise LaunchError(
                f"no Kubernetes cluster for {url!r}: no kubeconfig and not in a pod ({e})"
            ) from e
        configuration.retries = 1
        return cls(namespace, client.ApiClient(configuration), **options)

    @classmethod
    def from_kubeconfig(cls, path: str, namespace: str, **options: Any) -> KubernetesLauncher:
        """A launcher for the current context of the kubeconfig file at ``path``."""
        configuration = client.Configuration()
        try:
            config.load_kube_config(config_file=path, client_configuration=configuration)  # type: ignore[no-untyped-call]
        except (ConfigException, OSError) as e:
            raise LaunchError(f"cannot load kubeconfig {path}: {e}") from e
        configuration.retries = 1
        return cls(namespace, client.ApiClient(configuration), **options)

    # -- the contract ---------------------------------------------------------------------

    async def launch(self, spec: JobSpec) -> None:
        if not spec.argv:
            raise LaunchError(f"job {spec.job_id}: empty argv")
        egress = await asyncio.to_thread(egress_blocks, spec.allowed_hosts) if spec.allowed_hosts else []
        egress_id = _egress_id(spec.tenant_id, egress) if egress else None
        if await self._call(self._tombstone, spec.job_id) is not None:
            return  # cancelled before: a replayed launch must not start it again
        await self._call(self._ensure_deny_policy)
        if egress_id is not None:
            await self._call(self._ensure_egress_policy, spec.tenant_id, egress_id, egress)
        body = _model(client.V1Job, self.job_manifest(spec, egress_id))
        # 409 AlreadyExists: launched before (a retried or replayed dispatch).
        await self._call(
            _create,
            lambda: self._batch.create_namespaced_job(
                self.namespace, body, _request_timeout=REQUEST_TIMEOUT_S
            ),
            f"job {spec.job_id}",
        )

    async def state(self, job_id: str) -> JobState:
        job = await self._call(self._read_job, job_id)
        if job is None:
            if await self._call(self._tombstone, job_id) is not None:
                return "cancelled"
            raise JobNotFound(job_id)
        return _job_state(job)

    async def result(self, job_id: str) -> JobResult | None:
        job = await self._call(self._read_job, job_id)
        if job is None:
            tombstone = await self._call(self._tombstone, job_id)
            if tombstone is None:
                raise JobNotFound(job_id)
            return _cancelled(job_id, tombstone)
        state = _job_state(job)
        if state not in FINISHED:
            return None
        if state == "cancelled":
            annotations = (job.metadata.annotations if job.metadata else None) or {}
            return _cancelled(job_id, None, annotations.get(CANCELLED_ANNOTATION))
        return await self._call(self._collect, job, state)

    async def cancel(self, job_id: str) -> None:
        job = await self._call(self._read_job, job_id)
        if job is None or (_job_state(job) in FINISHED and not _marked_cancelled(job)):
            return
        # Mark, record, delete, in that order: after a crash at any step the job already
        # reads as cancelled, and the next cancel() finishes the remaining steps.
        if not _marked_cancelled(job):
            await self._call(self._mark_cancelled, job_id)
        labels = dict(job.metadata.labels or {}) if job.metadata else {}
        await self._call(self._write_tombstone, job_id, labels)
        await self._call(self._delete_job, job_id)

    async def delete(self, job_id: str) -> None:
        await self._call(self._delete_job, job_id)
        await self._call(self._delete_tombstone, job_id)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._api_client.close)

    # -- manifests ------------------------------------------------------------------------

    def labels(self, spec: JobSpec) -> dict[str, str]:
        """The labels on the Job and its pod."""
        return {
            SANDBOX_LABEL: "true",
            LABEL_PREFIX + "job-id": spec.job_id,
            LABEL_PREFIX + "run-id": _label_value(spec.run_id),
            LABEL_PREFIX + "tenant": _label_value(spec.tenant_id),
            LABEL_PREFIX + "tool-call-id": _label_value(spec.tool_call_id),
        }

    def job_manifest(self, spec: JobSpec, egress_id: str | None = None) -> dict[str, Any]:
        """The ``batch/v1`` Job for ``spec``, as the API takes it."""
        limits = spec.limits
        labels = self.labels(spec)
        pod_labels = dict(labels)
        if egress_id is not None:
            pod_labels[EGRESS_LABEL] = egress_id
        annotations = {
            LABEL_PREFIX + "run-id": spec.run_id,
            LABEL_PREFIX + "tenant": spec.tenant_id,
            LABEL_PREFIX + "tool-call-id": spec.tool_call_id,
            LABEL_PREFIX + "output-bytes": str(limits.output_bytes),
        }
        # A uid of its own per job keeps RLIMIT_NPROC (counted per uid) from seeing other jobs.
        uid = 100_000 + int(hashlib.sha256(spec.job_id.encode()).hexdigest()[:8], 16) % 1_000_000
        env = [{"name": k, "value": v} for k, v in sorted(spec.env.items())]
        env += [{"name": "HOME", "value": "/tmp"}, {"name": "TMPDIR", "value": "/tmp"}]
        if spec.stdin:
            env.append({"name": "AGENTSTREAM_STDIN", "value": spec.stdin})
        memory = f"{limits.memory_mb}Mi"
        container = {
            "name": CONTAINER,
            "image": self.image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["python3", "-c", ENTRYPOINT],
            "args": [str(limits.cpu_s), str(limits.processes), str(limits.open_files), *spec.argv],
            "workingDir": "/tmp",
            "env": env,
            "resources": {
                "requests": {"cpu": "100m", "memory": memory},
                "limits": {"cpu": self.cpu, "memory": memory},
            },
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": uid,
                "runAsGroup": uid,
                "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False,
                "privileged": False,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        }
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": spec.job_id, "labels": labels, "annotations": annotations},
            "spec": {
                "activeDeadlineSeconds": max(1, math.ceil(limits.wall_s)),
                "backoffLimit": 0,
                "ttlSecondsAfterFinished": self.ttl_after_finished_s,
                "template": {
                    "metadata": {"labels": pod_labels, "annotations": annotations},
                    "spec": {
                        "restartPolicy": "Never",
                        "automountServiceAccountToken": False,
                        "enableServiceLinks": False,
                        "hostNetwork": False,
                        "hostPID": False,
                        "hostIPC": False,
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": uid,
                            "runAsGroup": uid,
                            "fsGroup": uid,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [container],
                        "volumes": [
                            {
                                "name": "tmp",
                                "emptyDir": {"medium": "Memory", "sizeLimit": f"{limits.tmpfs_mb}Mi"},
                            }
                        ],
                    },
                },
            },
        }

    # -- blocking helpers (run in a worker thread) -----------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except ApiException as e:
            raise LaunchError(f"Kubernetes API request failed: {_api_message(e)}") from e
        except (OSError, client.exceptions.OpenApiException) as e:
            raise LaunchError(f"Kubernetes API server at {self._api_client.configuration.host}: {e}") from e
        except Exception as e:
            # urllib3 wraps connection failures in its own errors (MaxRetryError, ...).
            if type(e).__module__.startswith("urllib3"):
                raise LaunchError(
                    f"Kubernetes API server at {self._api_client.configuration.host} is unreachable: {e}"
                ) from e
            raise

    def _read_job(self, job_id: str) -> client.V1Job | None:
        try:
            return self._batch.read_namespaced_job(job_id, self.namespace, _request_timeout=REQUEST_TIMEOUT_S)
        except ApiException as e:
            if e.status == 404:
                return None
            raise LaunchError(f"cannot read job {job_id}: {_api_message(e)}") from e

    def _tombstone(self, job_id: str) -> client.V1ConfigMap | None:
        try:
            return self._core.read_namespaced_config_map(
                job_id, self.namespace, _request_timeout=REQUEST_TIMEOUT_S
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise LaunchError(f"cannot read the record of job {job_id}: {_api_message(e)}") from e

    def _write_tombstone(self, job_id: str, labels: dict[str, str]) -> None:
        body = _model(
            client.V1ConfigMap,
            {
                "metadata": {"name": job_id, "labels": {**labels, LABEL_PREFIX + "tombstone": "true"}},
                "data": {"state": "cancelled", "cancelled_at": _now()},
            },
        )
        _create(
            lambda: self._core.create_namespaced_config_map(self.namespace, body),
            f"the cancellation record of {job_id}",
        )

    def _mark_cancelled(self, job_id: str) -> None:
        patch = {"metadata": {"annotations": {CANCELLED_ANNOTATION: _now()}}}
        try:
            self._batch.patch_namespaced_job(
                job_id, self.namespace, patch, _request_timeout=REQUEST_TIMEOUT_S
            )
        except ApiException as e:
            if e.status != 404:
                raise LaunchError(f"cannot cancel job {job_id}: {_api_message(e)}") from e

    def _delete_tombstone(self, job_id: str) -> None:
        try:
            self._core.delete_namespaced_config_map(
                job_id, self.namespace, _request_timeout=REQUEST_TIMEOUT_S
            )
        except ApiException as e:
            if e.status != 404:
                raise LaunchError(f"cannot delete the record of job {job_id}: {_api_message(e)}") from e

    def _delete_job(self, job_id: str) -> None:
        try:
            self._batch.delete_namespaced_job(
                job_id,
                self.namespace,
                propagation_policy="Background",
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        except ApiException as e:
            if e.status != 404:
                raise LaunchError(f"cannot delete job {job_id}: {_api_message(e)}") from e

    def _ensure_deny_policy(self) -> None:
        if DENY_POLICY in self._policies_ready:
            return
        body = _model(
            client.V1NetworkPolicy,
            {
                "metadata": {"name": DENY_POLICY, "labels": {SANDBOX_LABEL: "true"}},
                "spec": {
                    "podSelector": {"matchLabels": {SANDBOX_LABEL: "true"}},
                    "policyTypes": ["Ingress", "Egress"],
                },
            },
        )
        _create(
            lambda: self._net.create_namespaced_network_policy(self.namespace, body),
            "the deny-all NetworkPolicy",
        )
        self._policies_ready.add(DENY_POLICY)

    def _ensure_egress_policy(self, tenant_id: str, egress_id: str, peers: list[dict[str, Any]]) -> None:
        name = f"agentstream-egress-{egress_id}"
        if name in self._policies_ready:
            return
        dns = {
            "to": [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                }
            ],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        }
        body = _model(
            client.V1NetworkPolicy,
            {
                "metadata": {
                    "name": name,
                    "labels": {SANDBOX_LABEL: "true", LABEL_PREFIX + "tenant": _label_value(tenant_id)},
                    "annotations": {LABEL_PREFIX + "tenant": tenant_id},
                },
                "spec": {
                    "podSelector": {"matchLabels": {SANDBOX_LABEL: "true", EGRESS_LABEL: egress_id}},
                    "policyTypes": ["Egress"],
                    "egress": [{"to": peers}, dns],
                },
            },
        )
        _create(
            lambda: self._net.create_namespaced_network_policy(self.namespace, body), f"egress policy {name}"
        )
        self._policies_ready.add(name)

    def _collect(self, job: client.V1Job, state: JobState) -> JobResult:
        job_id = job.metadata.name if job.metadata and job.metadata.name else ""
        status = job.status or client.V1JobStatus()
        exit_code: int | None = None
        stderr, stderr_truncated, reason = "", False, None
        stdout, stdout_truncated = "", False
        limit = _output_limit(job)
        pods = self._core.list_namespaced_pod(
            self.namespace,
            label_selector=f"batch.kubernetes.io/job-name={job_id}",
            _request_timeout=REQUEST_TIMEOUT_S,
        ).items
        pod = max(pods, key=_created_at, default=None)
        if pod is not None and pod.status is not None:
            for cs in pod.status.container_statuses or []:
                terminated = cs.state.terminated if cs.name == CONTAINER and cs.state else None
                if terminated is None:
                    continue
                exit_code = terminated.exit_code
                message = terminated.message or ""
                if message[:1] in ("T", "F"):
                    stderr_truncated, message = message[0] == "T", message[1:]
                stderr = message
                if terminated.reason == "OOMKilled":
                    reason = f"memory limit of {_memory_mb(job)} MB exceeded"
            if pod.metadata and pod.metadata.name:
                stdout, stdout_truncated = self._pod_log(pod.metadata.name, limit)
        failed = next((c for c in status.conditions or [] if c.type == "Failed" and c.status == "True"), None)
        if failed is not None and failed.reason == "DeadlineExceeded":
            deadline = job.spec.active_deadline_seconds if job.spec else None
            reason, exit_code = f"wall-clock limit of {deadline}s exceeded", None
        elif failed is not None and reason is None and exit_code is None:
            reason = failed.message or failed.reason or "the job failed"
        end = status.completion_time or (failed.last_transition_time if failed else None)
        duration_ms = 0
        if status.start_time and end:
            duration_ms = max(0, int((end - status.start_time).total_seconds() * 1000))
        return JobResult(
            job_id=job_id,
            state=state,
            exit_code=exit_code,
            stdout=stdout,
            stderr=stderr,
            stdout_truncated=stdout_truncated,
            stderr_truncated=stderr_truncated,
            duration_ms=duration_ms,
            reason=reason,
        )

    def _pod_log(self, pod_name: str, limit: int) -> tuple[str, bool]:
        """stdout from the pod log, capped at ``limit`` bytes; empty when no kubelet serves
        it (a fake node, or a node that is gone)."""
        try:
            text = self._core.read_namespaced_pod_log(
                pod_name, self.namespace, container=CONTAINER, limit_bytes=limit + 1, _request_timeout=5.0
            )
        except ApiException:
            return "", False
        data = text.encode() if isinstance(text, str) else bytes(text)
        return data[:limit].decode(errors="replace"), len(data) > limit


def _model(cls: Any, manifest: dict[str, Any]) -> Any:
    model = cls.from_dict(manifest)
    if model is None:
        raise LaunchError(f"empty {cls.__name__} manifest")
    return model


def _create(create: Callable[[], object], what: str) -> None:
    try:
        create()
    except ApiException as e:
        if e.status != 409:
            raise LaunchError(f"Kubernetes refused {what}: {_api_message(e)}") from e


def _created_at(pod: client.V1Pod) -> float:
    created = pod.metadata.creation_timestamp if pod.metadata else None
    return created.timestamp() if created else 0.0


def _marked_cancelled(job: client.V1Job) -> bool:
    return bool(job.metadata and (job.metadata.annotations or {}).get(CANCELLED_ANNOTATION))


def _job_state(job: client.V1Job) -> JobState:
    if _marked_cancelled(job):
        return "cancelled"
    status = job.status or client.V1JobStatus()
    for condition in status.conditions or []:
        if condition.status != "True":
            continue
        if condition.type == "Complete":
            return "succeeded"
        if condition.type == "Failed":
            return "failed"
    return "running" if (status.ready or 0) > 0 else "pending"


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _cancelled(job_id: str, tombstone: client.V1ConfigMap | None, when: str | None = None) -> JobResult:
    when = (tombstone.data or {}).get("cancelled_at") if tombstone else when
    return JobResult(
        job_id=job_id,
        state="cancelled",
        exit_code=None,
        stdout="",
        stderr="",
        reason=f"cancelled at {when}" if when else "cancelled",
    )


def _egress_id(tenant_id: str, peers: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps([tenant_id, peers], sort_keys=True).encode()).hexdigest()[:16]


def _output_limit(job: client.V1Job) -> int:
    annotations = job.metadata.annotations or {} if job.metadata else {}
    return int(annotations.get(LABEL_PREFIX + "output-bytes", 64 * 1024))


def _memory_mb(job: client.V1Job) -> str:
    try:
        container = job.spec.template.spec.containers[0]  # type: ignore[union-attr]
        return str(container.resources.limits["memory"]).removesuffix("Mi")  # type: ignore[union-attr,index]
    except (AttributeError, IndexError, KeyError, TypeError):
        return "?"


def _api_message(e: ApiException) -> str:
    try:
        body = json.loads(e.body or "")
        return f"{e.status} {body.get('reason', e.reason)}: {body.get('message', '')}"
    except (ValueError, AttributeError):
        return f"{e.status} {e.reason}"
