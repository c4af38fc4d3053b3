"""Benchmark: 1,000 GPUGrants for 100 users through the real operator.

Starts its own local control plane and the operator (as its ServiceAccount),
creates 100 accounts whose policy auto-approves, then:

1. burst: 1,000 grants created by 8 concurrent clients; time from each create
   returning to the operator's status saying Active (seen through a watch);
2. settle: after the last Active, the time until every account's published
   policy (`ds01-policy`) counts its grants: the quota, LimitRange and policy
   writes for 100 accounts that the burst caused. A grant created during it
   waits behind that backlog (printed as "catch-up");
3. steady: with those 1,000 present and the accounts settled, 50 more grants
   one at a time (the DESIGN target: p99 under 1 s with 1,000 grants present).

Prints p50/p99 latency, throughput and the operator's RSS (current and peak).
Not a test: it asserts nothing; run `make bench`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

from kubernetes import client, config, watch

from controller.api.accountpolicy import POLICY_CONFIGMAP
from controller.cli.dev import install, start_operator
from controller.devcluster.controlplane import LocalCluster

GROUP, VERSION, PLURAL = "gpu.ds01.io", "v1alpha1", "gpugrants"


def rss_kib(pid: int) -> tuple[int, int]:
    fields = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":" in line
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


class ActiveWatcher(threading.Thread):
    """Records the first moment each grant is seen Active."""

    def __init__(self, api: client.CustomObjectsApi) -> None:
        super().__init__(daemon=True)
        self.api = api
        self.active: dict[str, float] = {}
        self.lock = threading.Lock()

    def run(self) -> None:
        """Watch until the process ends, listing again after any break: a loaded
        apiserver drops watches, and a watcher that stopped would time every grant out."""
        while True:
            try:
                listed = cast(
                    dict[str, Any], self.api.list_cluster_custom_object(GROUP, VERSION, PLURAL)
                )
                for obj in listed["items"]:
                    self._seen(obj)
                stream = watch.Watch().stream(
                    self.api.list_cluster_custom_object,
                    GROUP,
                    VERSION,
                    PLURAL,
                    resource_version=listed["metadata"]["resourceVersion"],
                    timeout_seconds=300,
                )
                for event in stream:
                    self._seen(event["object"])
            except Exception:  # a dropped watch, or the cluster stopping at the end
                time.sleep(0.5)

    def _seen(self, obj: dict[str, Any]) -> None:
        if (obj.get("status") or {}).get("state") == "Active":
            key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
            with self.lock:
                self.active.setdefault(key, time.monotonic())

    def wait_for(self, keys: list[str], deadline_s: float) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            with self.lock:
                if all(k in self.active for k in keys):
                    return
            time.sleep(0.01)
        missing = [k for k in keys if k not in self.active]
        raise TimeoutError(f"{len(missing)} grants never became Active, e.g. {missing[:3]}")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def report(name: str, latencies: list[float]) -> None:
    print(
        f"{name}: n={len(latencies)} p50={percentile(latencies, 50) * 1000:.0f} ms "
        f"p99={percentile(latencies, 99) * 1000:.0f} ms max={max(latencies) * 1000:.0f} ms "
        f"mean={statistics.mean(latencies) * 1000:.0f} ms"
    )


def settle(core: client.CoreV1Api, per_user: dict[str, int], since: float) -> float:
    """Seconds from ``since`` until every account's published policy counts its grants."""
    deadline = time.monotonic() + 600
    pending = dict(per_user)
    while pending and time.monotonic() < deadline:
        for user, count in list(pending.items()):
            namespace = f"u-{user.split('@')[0]}"
            try:
                data = core.read_namespaced_config_map(POLICY_CONFIGMAP, namespace).data or {}
            except client.ApiException:
                continue
            allowance = json.loads(data.get("policy.json", "{}")).get("allowance") or {}
            if allowance.get("grants") == str(count):
                del pending[user]
        if pending:
            time.sleep(0.2)  # polling the apiserver, not waiting for a state
    if pending:
        raise RuntimeError(f"{len(pending)} accounts did not settle within 600 s")
    return time.monotonic() - since


BENCH_LIMIT: dict[str, Any] = {
    "subjects": [{"kind": "Group", "name": "bench"}],
    "priority": 10,
    "grants": {"approval": "Auto", "maxGPUEquivalents": "Unlimited", "maxDuration": "Unlimited"},
    "rates": {"grantRequestsPerDay": "Unlimited"},
}
"""The benchmarks' GPURateLimit `bench`: auto-approved, nothing capped."""


def setup_accounts(
    custom: client.CustomObjectsApi, core: client.CoreV1Api, users: list[str]
) -> None:
    """A GPURateLimit that auto-approves group `bench`, and an account namespace per user."""
    custom.create_cluster_custom_object(
        GROUP,
        VERSION,
        "gpuratelimits",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "GPURateLimit",
            "metadata": {"name": "bench"},
            "spec": BENCH_LIMIT,
        },
    )
    for user in users:
        name = user.split("@")[0]
        core.create_namespace(
            client.V1Namespace(
                metadata=client.V1ObjectMeta(
                    name=f"u-{name}",
                    labels={"gpu.ds01.io/user": user.replace("@", "-")},
                    annotations={"gpu.ds01.io/user-name": user, "gpu.ds01.io/groups": "bench"},
                )
            )
        )


def create_grant(
    custom: client.CustomObjectsApi, users: list[str], index: int
) -> tuple[str, float]:
    """Create grant ``index`` (1 GPU for 24 h) for user ``index % len(users)``; its key and the
    moment the create returned."""
    user = users[index % len(users)]
    namespace = f"u-{user.split('@')[0]}"
    name = f"g-{index:05d}"
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "GPUGrant",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "subject": {"kind": "User", "name": user},
                "gpus": {"count": 1},
                "duration": "24h",
                "reason": "benchmark",
            },
        },
    )
    return f"{namespace}/{name}", time.monotonic()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--grants", type=int, default=1000)
    parser.add_argument("--steady", type=int, default=50)
    args = parser.parse_args()

    with LocalCluster(Path(tempfile.mkdtemp(prefix="ds01-bench-"))) as cluster:
        install(cluster, samples=False)
        operator = start_operator(cluster)
        api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        custom = client.CustomObjectsApi(api_client)
        core = client.CoreV1Api(api_client)
        users = [f"bench{u:03d}@lab.example" for u in range(args.users)]
        setup_accounts(custom, core, users)
        watcher = ActiveWatcher(custom)
        watcher.start()

        def create(index: int) -> tuple[str, float]:
            return create_grant(custom, users, index)

        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            created = list(pool.map(create, range(args.grants)))
        watcher.wait_for([k for k, _ in created], 600)
        finished = max(watcher.active[k] for k, _ in created)
        burst = [watcher.active[k] - t for k, t in created]
        print(
            f"burst: {args.grants} grants for {args.users} users created and Active in "
            f"{finished - started:.1f}s ({args.grants / (finished - started):.0f} grants/s)"
        )
        report("burst time-to-Active", burst)

        per_user = {u: 0 for u in users}
        for index in range(args.grants):
            per_user[users[index % len(users)]] += 1
        catch_up = settle(core, per_user, finished)
        print(f"accounts settled {catch_up:.1f}s after the last Active (catch-up)")

        steady = []
        for i in range(args.steady):
            key, t = create(args.grants + i)
            watcher.wait_for([key], 60)
            steady.append(watcher.active[key] - t)
        report(f"steady time-to-Active with {args.grants} grants present", steady)
        slowest = max(range(len(steady)), key=steady.__getitem__)
        print(f"  slowest steady grant: #{slowest + 1} of {len(steady)}")
        current, peak = rss_kib(operator.pid)
        print(f"operator RSS: {current / 1024:.0f} MiB now, {peak / 1024:.0f} MiB peak")
    return 0


if __name__ == "__main__":
    sys.exit(main())
