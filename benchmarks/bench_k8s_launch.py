"""Time from KubernetesLauncher.launch() to the Job object existing in the API server.

launch() returns once the API server has stored the Job (the create call answered 201), so its
latency is that time: the cancellation-record lookup, the NetworkPolicies (created once per
launcher, then cached) and the Job create. The first launch is reported apart.

    python benchmarks/bench_k8s_launch.py -n 200 [--kubeconfig PATH] [--allow-host 10.0.0.0/8]

Needs a running cluster (tests/services/k8s.sh up). Makes a namespace of its own and deletes it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

from kubernetes import client, config

from sandbox_jobs.base import JobSpec, job_id_for
from sandbox_jobs.k8s import KubernetesLauncher


async def bench(kubeconfig: str, n: int, allowed_hosts: tuple[str, ...]) -> None:
    core = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    namespace = f"sbx-bench-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace.from_dict({"metadata": {"name": namespace}}))
    launcher = KubernetesLauncher.from_kubeconfig(kubeconfig, namespace)
    run_id = str(uuid.uuid4())
    try:
        times: list[float] = []
        for i in range(n + 1):
            spec = JobSpec(
                job_id=job_id_for(f"{run_id}:{i}"),
                run_id=run_id,
                tenant_id="bench",
                tool_call_id=f"call-{i}",
                argv=("python3", "-c", "print(1)"),
                allowed_hosts=allowed_hosts,
            )
            start = time.perf_counter()
            await launcher.launch(spec)
            times.append((time.perf_counter() - start) * 1000)
        first, rest = times[0], sorted(times[1:])
        p95 = rest[min(len(rest) - 1, int(len(rest) * 0.95))]
        print(f"first launch (creates the NetworkPolicies): {first:.1f} ms")
        print(
            f"launch -> Job created, n={len(rest)}: p50 {statistics.median(rest):.1f} ms, "
            f"p95 {p95:.1f} ms, max {rest[-1]:.1f} ms"
        )
    finally:
        await launcher.aclose()
        core.delete_namespace(namespace)
        core.api_client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    run_dir = os.environ.get("AGENTSTREAM_RUN", "/tmp/agentstream-services")
    parser.add_argument("--kubeconfig", default=os.path.join(run_dir, "k8s", "kubeconfig"))
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--allow-host", action="append", default=[])
    args = parser.parse_args()
    asyncio.run(bench(args.kubeconfig, args.n, tuple(args.allow_host)))


if __name__ == "__main__":
    main()
