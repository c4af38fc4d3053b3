"""Where the operator's memory goes: a tracemalloc breakdown after N grants on M nodes.

Runs the operator (as its ServiceAccount, like `start_operator`) with the sweep's
workload (auto-approved grants, a simulated GPU fleet): once it is up, tracemalloc
starts (SIGUSR1, see `benchmarks.traced_operator`); once every grant is Active it
dumps a snapshot of what was allocated since and still lives, and this prints the
biggest allocation sites, by line and by the operator's own code that caused them.
Tracing slows the operator several-fold: the numbers are sizes, never times. Not a test.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kubernetes import client, config

from benchmarks.gpufleet import FleetProcess
from benchmarks.operator_grants import ActiveWatcher, create_grant, rss_kib, setup_accounts
from controller.cli.dev import install
from controller.devcluster.controlplane import LocalCluster, free_port, http_ok
from controller.devcluster.process import wait_until

OWN = ("controller/", "kopf/", "kubernetes/", "pydantic")


def start_traced(cluster: LocalCluster, snapshot: Path, frames: int) -> int:
    """The operator under tracemalloc; its pid."""
    kubeconfig = cluster.service_account_kubeconfig("ds01-system", "ds01-operator")
    port = free_port()
    process = cluster.spawn(
        "operator",
        [
            sys.executable,
            "-m",
            "benchmarks.traced_operator",
            str(snapshot),
            str(frames),
            "operator",
            f"--kubeconfig={kubeconfig}",
            f"--audit-log={cluster.workdir / 'audit.jsonl'}",
            f"--liveness=http://127.0.0.1:{port}/healthz",
            "--default-enforcement=Audit",
            "--leader-identity=operator",
        ],
    )
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 300, "the operator live")
    return process.pid


def signal_operator(pid: int, snapshot: Path) -> None:
    """SIGUSR1: the first starts tracing, later ones write ``snapshot``."""
    done = snapshot.with_suffix(".done")
    done.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    wait_until(done.exists, 300, "the operator to answer SIGUSR1")


def report(after: tracemalloc.Snapshot, grants: int) -> None:
    grown = sum(s.size for s in after.statistics("filename"))
    print(f"traced since the grants began, still alive: {grown / 2**20:.1f} MiB")
    print(f"  = {grown / 1024 / grants:.2f} KiB per grant (traced Python heap)\n")
    print("biggest by line (KiB per grant, objects per grant):")
    for stat in after.statistics("lineno")[:25]:
        frame = stat.traceback[0]
        print(
            f"  {stat.size / 1024 / grants:7.2f}  {stat.count / grants:6.1f}  "
            f"{_short(frame.filename)}:{frame.lineno}"
        )
    print("\nby the deepest frame in the operator's own code (controller/):")
    by_caller: Counter[str] = Counter()
    for stat in after.statistics("traceback"):
        mine = next(  # the deepest of our frames: the line that asked for it
            (f for f in reversed(stat.traceback) if "/controller/" in f.filename),
            stat.traceback[-1],
        )
        by_caller[f"{_short(mine.filename)}:{mine.lineno}"] += stat.size
    for where, size in by_caller.most_common(20):
        print(f"  {size / 1024 / grants:7.2f}  {where}")


def _short(filename: str) -> str:
    for marker in OWN:
        at = filename.find(marker)
        if at >= 0:
            return filename[at:]
    return filename


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grants", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--frames", type=int, default=12, help="traceback depth traced")
    args = parser.parse_args()
    users = [f"bench{u:04d}@lab.example" for u in range(max(1, args.grants // 10))]
    workdir = Path(tempfile.mkdtemp(prefix="ds01-memory-"))
    snapshot = workdir / "operator.tracemalloc"
    with LocalCluster(workdir / "cluster") as cluster:
        install(cluster, samples=False)
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
        setup_accounts(custom, core, users)
        fleet = FleetProcess(str(cluster.kubeconfig), args.nodes, users)
        fleet.start()
        try:
            pid = start_traced(cluster, snapshot, args.frames)
            time.sleep(10)  # let the first passes over the nodes finish (a profile, not a test)
            rss_before = rss_kib(pid)[0]
            signal_operator(pid, snapshot)
            watcher = ActiveWatcher(custom)
            watcher.start()
            with ThreadPoolExecutor(8) as pool:
                created = list(
                    pool.map(lambda i: create_grant(custom, users, i), range(args.grants))
                )
            watcher.wait_for([k for k, _ in created], 3600)
            time.sleep(15)  # the echoes of the last status writes (a profile, not a test)
            rss_after = rss_kib(pid)[0]
            signal_operator(pid, snapshot)
            after = tracemalloc.Snapshot.load(str(snapshot))
        finally:
            fleet.stop()
    print(
        f"operator RSS {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB: "
        f"{(rss_after - rss_before) / args.grants:.1f} KiB per grant (with tracing overhead)"
    )
    report(after, args.grants)
    return 0


if __name__ == "__main__":
    sys.exit(main())
