"""Benchmark: the ds01 operator and Kueue side by side, same control plane, same run.

One local control plane (etcd, kube-apiserver, kube-controller-manager). The
two controllers take turns on it, Kueue first, each stopped before the other
starts: run at once on 2 cores they would compete for the CPU and the
apiserver, and neither's numbers would be its own. Same users, same count,
same driver:

- Kueue: per user a Namespace, a ClusterQueue whose GPU quota holds all the
  user's requests, a LocalQueue; then N Workloads (one pod asking for one GPU),
  timed until condition `Admitted` is True;
- ds01: per user an account Namespace and a GPURateLimit (approval `Auto`, each
  grant at most the user's quota, that many grant requests a day); then N
  GPUGrants for one GPU, timed until `status.state` is `Active`.

The driver creates the objects from ``--clients`` threads and timestamps, per
object, the moment its create is sent and the first watch event showing it
admitted. Controller CPU-seconds come from /proc (utime + stime), over the burst
and until the controller is idle again (the work a burst causes after its last
admission, such as quota and status writes, counts). Prints a table with
ratios; `--json PATH` also writes the numbers. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from kubernetes import client, config, watch

from benchmarks.operator_grants import percentile, rss_kib
from controller.api.accountpolicy import POLICY_CONFIGMAP
from controller.cli.dev import install, start_operator
from controller.devcluster import kueue
from controller.devcluster.controlplane import LocalCluster
from controller.devcluster.process import ManagedProcess, wait_until

DS01 = ("gpu.ds01.io", "v1alpha1")
KUEUE = ("kueue.x-k8s.io", "v1beta2")
GPU = "nvidia.com/gpu"
Body = dict[str, Any]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class AdmittedWatcher(threading.Thread):
    """Records the first moment each object of one kind is seen admitted.

    A watch that breaks (a dropped connection, an ERROR event on a loaded
    apiserver) is started again without a resourceVersion: the apiserver then
    sends every existing object first, so an admission made during the gap is
    still seen, a little late (counted in ``restarts``).
    """

    def __init__(
        self,
        api: client.CustomObjectsApi,
        kind: tuple[str, str, str],
        admitted: Callable[[Body], bool],
    ) -> None:
        super().__init__(daemon=True)
        self.api, self.kind, self.admitted = api, kind, admitted
        self.seen: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.restarts = 0

    def run(self) -> None:
        group, version, plural = self.kind
        while not self.stopping.is_set():
            try:
                stream = watch.Watch().stream(
                    self.api.list_cluster_custom_object, group, version, plural, timeout_seconds=300
                )
                for event in stream:
                    if event["type"] == "ERROR":
                        raise RuntimeError(f"watch error: {event['object']}")
                    self._record(event["object"])
            except Exception as error:  # also: the cluster stopped under the watch at the end
                if self.stopping.is_set():
                    return
                self.restarts += 1
                print(f"watch on {plural} restarted after: {error!r}"[:300], file=sys.stderr)
                self.stopping.wait(0.2)  # do not spin on an apiserver that refuses

    def _record(self, obj: Body) -> None:
        if self.admitted(obj):
            key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
            with self.lock:
                self.seen.setdefault(key, time.monotonic())

    def all_seen(self, keys: list[str]) -> bool:
        with self.lock:
            return all(k in self.seen for k in keys)


def kueue_admitted(obj: Body) -> bool:
    conditions = obj.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Admitted" and c.get("status") == "True" for c in conditions)


def grant_active(obj: Body) -> bool:
    return bool(obj.get("status", {}).get("state") == "Active")


@dataclass
class Result:
    """One controller's numbers for one burst."""

    controller: str
    admitted: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    creates_s: float
    makespan_s: float
    throughput_per_s: float
    cpu_burst_s: float
    cpu_until_idle_s: float
    idle_after_s: float
    rss_mib: float
    rss_peak_mib: float
    server_cpu_s: dict[str, float] = field(default_factory=dict)
    watch_restarts: int = 0


class Run:
    """The shared cluster and driver settings."""

    def __init__(self, cluster: LocalCluster, users: int, workloads: int, clients: int) -> None:
        self.cluster, self.clients = cluster, clients
        self.users = [f"bench{u:03d}" for u in range(users)]
        self.workloads = workloads
        self.per_user = math.ceil(workloads / users)
        self.custom = self._api(clients + 4)
        self.core = client.CoreV1Api(self.custom.api_client)

    def _api(self, pool: int) -> client.CustomObjectsApi:
        configuration = client.Configuration()
        config.load_kube_config(str(self.cluster.kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = pool
        return client.CustomObjectsApi(client.ApiClient(configuration))

    def items(self, group: str, version: str, plural: str) -> list[Body]:
        listed = cast(Body, self.custom.list_cluster_custom_object(group, version, plural))
        return list(listed["items"])

    def create_all(self, group: str, version: str, plural: str, bodies: list[Body]) -> list[float]:
        """Create ``bodies`` from the client threads; the moment each create was sent."""

        def create(body: Body) -> float:
            sent = time.monotonic()
            namespace = body["metadata"]["namespace"]
            self.custom.create_namespaced_custom_object(group, version, namespace, plural, body)
            return sent

        with ThreadPoolExecutor(self.clients) as pool:
            return list(pool.map(create, bodies))

    def burst(
        self,
        name: str,
        process: ManagedProcess,
        kind: tuple[str, str, str],
        bodies: list[Body],
        admitted: Callable[[Body], bool],
    ) -> Result:
        watcher = AdmittedWatcher(self._api(2), kind, admitted)
        watcher.start()
        keys = [f"{b['metadata']['namespace']}/{b['metadata']['name']}" for b in bodies]
        servers = {p.name: p.pid for p in self.cluster.processes if p.name in SERVERS}
        server_before = {n: cpu_seconds(pid) for n, pid in servers.items()}
        cpu_before = cpu_seconds(process.pid)
        started = time.monotonic()
        sent = self.create_all(*kind, bodies)
        creates = time.monotonic() - started
        wait_until(lambda: watcher.all_seen(keys), 900, f"{len(keys)} {kind[2]} admitted")
        finished = max(watcher.seen[k] for k in keys)
        watcher.stopping.set()
        cpu_burst = cpu_seconds(process.pid) - cpu_before
        idle_at = wait_idle(process.pid)
        latencies = [watcher.seen[k] - t for k, t in zip(keys, sent, strict=True)]
        rss, peak = rss_kib(process.pid)
        return Result(
            controller=name,
            admitted=len(keys),
            p50_ms=percentile(latencies, 50) * 1000,
            p99_ms=percentile(latencies, 99) * 1000,
            max_ms=max(latencies) * 1000,
            creates_s=creates,
            makespan_s=finished - started,
            throughput_per_s=len(keys) / (finished - started),
            cpu_burst_s=cpu_burst,
            cpu_until_idle_s=cpu_seconds(process.pid) - cpu_before,
            idle_after_s=idle_at - finished,
            rss_mib=rss / 1024,
            rss_peak_mib=peak / 1024,
            server_cpu_s={n: cpu_seconds(pid) - server_before[n] for n, pid in servers.items()},
            watch_restarts=watcher.restarts,
        )


SERVERS = ("kube-apiserver", "etcd")
IDLE_CPU_PER_S = 0.05
"""A controller using less than 5% of a core for a whole second is idle again."""


def wait_idle(pid: int, deadline_s: float = 120) -> float:
    """The moment ``pid`` used under IDLE_CPU_PER_S for a second (or the deadline)."""
    last = [time.monotonic(), cpu_seconds(pid)]

    def idle() -> bool:
        now, used = time.monotonic(), cpu_seconds(pid)
        if now - last[0] < 1.0:
            return False
        quiet = (used - last[1]) / (now - last[0]) < IDLE_CPU_PER_S
        last[:] = [now, used]
        return quiet

    try:
        wait_until(idle, deadline_s, "the controller to be idle", interval_s=0.25)
    except TimeoutError:
        print(f"warning: controller still busy {deadline_s:.0f}s after the burst", file=sys.stderr)
    return time.monotonic()


def run_kueue(run: Run, variant: str) -> Result:
    build = kueue.ensure((kueue.VARIANT_COMMAND[variant],))
    kueue.install_crds(run.cluster, build)
    process = kueue.start(run.cluster, build, variant)
    group, version = KUEUE
    api = f"{group}/{version}"
    run.custom.create_cluster_custom_object(
        group,
        version,
        "resourceflavors",
        {"apiVersion": api, "kind": "ResourceFlavor", "metadata": {"name": "gpu"}, "spec": {}},
    )
    for user in run.users:
        namespace = f"kq-{user}"
        run.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        quota = {"name": GPU, "nominalQuota": run.per_user}
        cq_spec = {
            "namespaceSelector": {},
            "resourceGroups": [
                {"coveredResources": [GPU], "flavors": [{"name": "gpu", "resources": [quota]}]}
            ],
        }
        run.custom.create_cluster_custom_object(
            group,
            version,
            "clusterqueues",
            {
                "apiVersion": api,
                "kind": "ClusterQueue",
                "metadata": {"name": user},
                "spec": cq_spec,
            },
        )
        run.custom.create_namespaced_custom_object(
            group,
            version,
            namespace,
            "localqueues",
            {
                "apiVersion": api,
                "kind": "LocalQueue",
                "metadata": {"name": "gpu", "namespace": namespace},
                "spec": {"clusterQueue": user},
            },
        )

    def queues_active() -> bool:
        if not process.alive():
            raise RuntimeError(f"Kueue exited:\n{process.log_tail()}")
        queues = run.items(group, version, "clusterqueues")
        local = run.items(group, version, "localqueues")
        return all(map(active, queues)) and all(map(active, local)) and len(local) == len(queues)

    wait_until(queues_active, 120, "every ClusterQueue and LocalQueue Active")
    bodies = [
        {
            "apiVersion": api,
            "kind": "Workload",
            "metadata": {"name": f"w-{i:05d}", "namespace": f"kq-{run.users[i % len(run.users)]}"},
            "spec": {
                "queueName": "gpu",
                "podSets": [
                    {
                        "name": "main",
                        "count": 1,
                        "template": {
                            "spec": {
                                "containers": [
                                    {"name": "main", "resources": {"requests": {GPU: "1"}}}
                                ]
                            }
                        },
                    }
                ],
            },
        }
        for i in range(run.workloads)
    ]
    name = f"Kueue {kueue.VARIANT_COMMAND[variant]}"
    result = run.burst(name, process, (group, version, "workloads"), bodies, kueue_admitted)
    process.stop()
    return result


def active(obj: Body) -> bool:
    conditions = obj.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Active" and c.get("status") == "True" for c in conditions)


def run_ds01(run: Run) -> Result:
    install(run.cluster, samples=False)
    process = start_operator(run.cluster)
    group, version = DS01
    for user in run.users:
        email = f"{user}@lab.example"
        namespace = f"u-{user}"
        run.core.create_namespace(
            client.V1Namespace(
                metadata=client.V1ObjectMeta(
                    name=namespace,
                    labels={"gpu.ds01.io/user": email.replace("@", "-")},
                    annotations={"gpu.ds01.io/user-name": email, "gpu.ds01.io/groups": "bench"},
                )
            )
        )
        spec = {
            "subjects": [{"kind": "User", "name": email}],
            "grants": {
                "approval": "Auto",
                "maxGPUEquivalents": run.per_user,
                "maxDuration": "Unlimited",
            },
            "rates": {"grantRequestsPerDay": run.per_user},
        }
        run.custom.create_cluster_custom_object(
            group,
            version,
            "gpuratelimits",
            {"apiVersion": f"{group}/{version}", "kind": "GPURateLimit", "metadata": {"name": user}}
            | {"spec": spec},
        )

    def accounts_ready() -> bool:
        if not process.alive():
            raise RuntimeError(f"the operator exited:\n{process.log_tail()}")
        limits = run.items(group, version, "gpuratelimits")
        matched = sum(1 for lim in limits if lim.get("status", {}).get("matchedUsers") == 1)
        policies = run.core.list_config_map_for_all_namespaces(
            field_selector=f"metadata.name={POLICY_CONFIGMAP}"
        ).items
        return matched == len(run.users) and len(policies) >= len(run.users)

    wait_until(accounts_ready, 120, "every account's limit matched and policy published")
    bodies = []
    for i in range(run.workloads):
        user = run.users[i % len(run.users)]
        bodies.append(
            {
                "apiVersion": f"{group}/{version}",
                "kind": "GPUGrant",
                "metadata": {"name": f"g-{i:05d}", "namespace": f"u-{user}"},
                "spec": {
                    "subject": {"kind": "User", "name": f"{user}@lab.example"},
                    "gpus": {"count": 1},
                    "duration": "24h",
                    "reason": "benchmark",
                },
            }
        )
    result = run.burst(
        "ds01 operator", process, (group, version, "gpugrants"), bodies, grant_active
    )
    process.stop()
    return result


ROWS: list[tuple[str, Callable[[Result], float], str]] = [
    ("create->admitted p50 (ms)", lambda r: r.p50_ms, "{:.0f}"),
    ("create->admitted p99 (ms)", lambda r: r.p99_ms, "{:.0f}"),
    ("create->admitted max (ms)", lambda r: r.max_ms, "{:.0f}"),
    ("all creates sent (s)", lambda r: r.creates_s, "{:.1f}"),
    ("makespan, first create to last admitted (s)", lambda r: r.makespan_s, "{:.1f}"),
    ("throughput (admitted/s)", lambda r: r.throughput_per_s, "{:.1f}"),
    ("controller CPU-s, burst", lambda r: r.cpu_burst_s, "{:.1f}"),
    ("controller CPU-s, until idle", lambda r: r.cpu_until_idle_s, "{:.1f}"),
    ("  idle again after last admission (s)", lambda r: r.idle_after_s, "{:.1f}"),
    ("controller CPU-ms per admission", lambda r: r.cpu_until_idle_s * 1000 / r.admitted, "{:.1f}"),
    ("controller RSS at end (MiB)", lambda r: r.rss_mib, "{:.0f}"),
    ("controller RSS peak (MiB)", lambda r: r.rss_peak_mib, "{:.0f}"),
    ("kube-apiserver CPU-s, until idle", lambda r: r.server_cpu_s["kube-apiserver"], "{:.1f}"),
    ("etcd CPU-s, until idle", lambda r: r.server_cpu_s["etcd"], "{:.1f}"),
]


def table(ours: Result, theirs: Result) -> str:
    width = max(len(label) for label, _, _ in ROWS) + 2
    head = f"{'':{width}}{ours.controller:>16}{theirs.controller:>20}{'ratio ds01/Kueue':>18}"
    lines = [head]
    for label, value, fmt in ROWS:
        a, b = value(ours), value(theirs)
        ratio = f"{a / b:.2f}" if b else "-"
        lines.append(f"{label:{width}}{fmt.format(a):>16}{fmt.format(b):>20}{ratio:>18}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--workloads", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8, help="concurrent creating clients")
    parser.add_argument("--variant", choices=sorted(kueue.VARIANT_COMMAND), default="core")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument("--keep", action="store_true", help="keep the control plane's folder")
    args = parser.parse_args()
    for name in ("users", "workloads", "clients"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: must be at least 1, not {getattr(args, name)}")
    kueue.ensure((kueue.VARIANT_COMMAND[args.variant],))  # a cold build is minutes: not timed

    workdir = Path(tempfile.mkdtemp(prefix="ds01-kueue-bench-"))
    try:
        with LocalCluster(workdir) as cluster:
            run = Run(cluster, args.users, args.workloads, args.clients)
            theirs = run_kueue(run, args.variant)
            ours = run_ds01(run)
    except BaseException:
        print(f"logs and etcd data kept in {workdir}", file=sys.stderr)
        raise
    if args.keep:
        print(f"logs and etcd data kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"{args.workloads} objects for {args.users} users "
        f"({run.per_user} per user, quota {run.per_user} GPUs each), {args.clients} clients, "
        f"Kueue {kueue.planned().version} variant {args.variant}; ratio = ds01 / Kueue"
    )
    print(table(ours, theirs))
    if ours.watch_restarts or theirs.watch_restarts:
        print(
            f"watch restarts (admissions in a gap are seen late): ds01 {ours.watch_restarts}, "
            f"Kueue {theirs.watch_restarts}"
        )
    if args.json:
        document = {
            "users": args.users,
            "workloads": args.workloads,
            "clients": args.clients,
            "variant": args.variant,
            "kueue_version": kueue.planned().version,
            "ds01": asdict(ours),
            "kueue": asdict(theirs),
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
