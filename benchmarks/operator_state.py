"""The operator's own state at N grants and M nodes, in one process, without a cluster.

What the operator keeps between passes is its indexes (every grant and node,
parsed and compacted as `controller.operator.handlers` does) and the decision
cache. This builds them for the sweep's workload (grants auto-approved, 1 GPU
each; nodes from `benchmarks.gpufleet` with their workloads), runs `plan` until
nothing changes (storing each pass's decisions as the apiserver would), then
prints what that state adds to the process's RSS (or, with `--trace`, to the
traced Python heap, several times slower) and the time of a warm pass. It leaves
out kopf's own bookkeeping per object, which the sweep's RSS includes. Not a test.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.gpufleet import NODE_KINDS, node_inventory
from benchmarks.operator_grants import BENCH_LIMIT
from controller.agent.report import Health, status
from controller.api.compact import compact
from controller.api.kinds import GPUGrant, GPUNode, GPURateLimit
from controller.api.node import WorkloadReport
from controller.policy.plan import DecisionCache, Namespace, Snapshot, plan

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def _limit() -> GPURateLimit:
    return GPURateLimit.model_validate(
        {
            "metadata": {"name": "bench", "resourceVersion": "1"},
            "spec": BENCH_LIMIT,
        }
    )


def _grant(index: int, user: str) -> GPUGrant:
    namespace = f"u-{user.split('@', maxsplit=1)[0]}"
    return compact(
        GPUGrant.model_validate(
            {
                "metadata": {
                    "name": f"g-{index:05d}",
                    "namespace": namespace,
                    "uid": f"00000000-0000-0000-0000-{index:012d}",
                    "resourceVersion": str(10 + index),
                    "generation": 1,
                    "creationTimestamp": (NOW - timedelta(seconds=index)).isoformat(),
                },
                "spec": {
                    "subject": {"kind": "User", "name": user},
                    "gpus": {"count": 1},
                    "duration": "24h",
                    "reason": "benchmark",
                    "requestedBy": user,
                },
            }
        )
    )


def _node(name: str, kind: int, users: list[str], rnd: random.Random) -> GPUNode:
    inventory = node_inventory(name, kind)
    workloads = [
        WorkloadReport(
            kind="Container",
            name=f"train-{i}",
            owner=rnd.choice(users),
            owner_source="GatewayLabel",
            devices=[slot.uuid],
        )
        for i, slot in enumerate(inventory.slots())
        if rnd.random() < 0.3
    ]
    report = status(
        inventory=inventory,
        sample=None,
        workloads=workloads,
        violations=[],
        mode="Audit",
        applied_generation=None,
        previous=None,
        health=Health(),
        cgroup_version="v2",
        now=NOW,
    )
    return compact(
        GPUNode.model_validate(
            {
                "metadata": {"name": name, "resourceVersion": "5", "generation": 1},
                "spec": {"enforcement": "Audit"},
                "status": report.to_wire(),
            }
        )
    )


def _breakdown(snapshot: tracemalloc.Snapshot, grants: int) -> None:
    """What lives, by the operator's own line that allocated it (KiB per grant)."""
    by_line: dict[str, int] = {}
    for stat in snapshot.statistics("traceback"):
        frames = [f for f in stat.traceback if "/controller/" in f.filename] or [stat.traceback[0]]
        where = f"{frames[-1].filename.split('/controller/')[-1]}:{frames[-1].lineno}"
        by_line[where] = by_line.get(where, 0) + stat.size
    for where, size in sorted(by_line.items(), key=lambda item: -item[1])[:15]:
        print(f"  {size / 1024 / grants:6.2f} KiB/grant  {where}")


def _rss() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) * 1024


def settle(snapshot: Snapshot, decided: Any, version: int) -> tuple[Snapshot, int]:
    """Store a pass's grant decisions as the apiserver would (a new version, compacted)."""
    grants, changed = [], 0
    for grant in snapshot.grants:
        key = f"{grant.metadata.namespace}/{grant.metadata.name}"
        new, approval = decided.grant_status[key], decided.approvals.get(key)
        if new is grant.status and approval is None:
            grants.append(grant)
            continue
        changed += 1
        version += 1
        wire = grant.to_wire()
        wire["metadata"]["resourceVersion"] = str(version)
        if approval is not None:
            wire["spec"]["approval"] = approval.to_wire()
        wire["status"] = new.to_wire()
        grants.append(compact(GPUGrant.model_validate(wire)))
    return Snapshot(
        snapshot.namespaces, snapshot.limits, grants, [], snapshot.nodes, managed=()
    ), changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grants", type=int, default=10000)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--trace", action="store_true", help="tracemalloc, not RSS")
    args = parser.parse_args()
    rnd = random.Random(1)
    users = [f"bench{u:04d}@lab.example" for u in range(max(1, args.grants // 10))]
    namespaces = [
        Namespace(
            f"u-{u.split('@')[0]}",
            {"gpu.ds01.io/user": u.replace("@", "-")},
            {"gpu.ds01.io/user-name": u, "gpu.ds01.io/groups": "bench"},
        )
        for u in users
    ]
    shares = [k[0] for k in NODE_KINDS]
    if args.trace:
        tracemalloc.start(12)
    size = tracemalloc.get_traced_memory if args.trace else lambda: (_rss(), 0)
    base = size()[0]
    nodes = [
        _node(f"sim-{i:04d}", rnd.choices(range(len(NODE_KINDS)), shares)[0], users, rnd)
        for i in range(args.nodes)
    ]
    gc.collect()
    with_nodes = size()[0]
    grants = [_grant(i, users[i % len(users)]) for i in range(args.grants)]
    snapshot = Snapshot(namespaces, [_limit()], grants, [], nodes)
    cache = DecisionCache()
    version, passes = 10**6, 0
    while True:
        started = time.perf_counter()
        decided = plan(snapshot, NOW + timedelta(seconds=passes), cache=cache)
        took = time.perf_counter() - started
        passes += 1
        snapshot, changed = settle(snapshot, decided, version)
        version += changed
        print(f"pass {passes}: {took:.2f}s, {changed} grants changed", flush=True)
        if not changed or passes >= 6:
            break
    del decided
    gc.collect()
    state = size()[0] - with_nodes
    if args.trace:
        _breakdown(tracemalloc.take_snapshot(), args.grants)
    started = time.perf_counter()
    warm = plan(snapshot, NOW + timedelta(seconds=passes), cache=cache)
    warm_s = time.perf_counter() - started
    states = {s.state for s in warm.grant_status.values()}
    what = "traced" if args.trace else "RSS"
    print(f"nodes: {args.nodes}, {(with_nodes - base) / 2**20:.1f} MiB {what}")
    print(
        f"grants: {args.grants} ({states}), indexes + decision cache "
        f"{state / 2**20:.1f} MiB {what} = {state / 1024 / args.grants:.2f} KiB per grant"
    )
    print(f"warm pass (nothing changed): {warm_s:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
