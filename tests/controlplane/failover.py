"""Two operator replicas; the leader is SIGKILLed during a burst of grants.

The scenario shared by `tests/controlplane/test_operator_ha.py` (150 grants,
short lease timings) and `benchmarks/operator_failover.py` (500 grants, the
default timings). Both replicas run as the operator's ServiceAccount against
one local control plane, each with its own audit trail, metrics port and log.
Grants are auto-approved; a third of them reserve devices on two simulated
nodes with fewer GPUs than requests, so devices are contested; the rest only
raise their owner's allowance.

`run` returns what the checks need (grants, node specs, Events, both trails)
and what was measured: how long after the kill the survivor held the Lease,
wrote its first record, and every grant had converged.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from controller.cli.dev import add_simulated_node, start_operator
from controller.devcluster import simnode
from controller.devcluster.controlplane import LocalCluster, free_port
from controller.devcluster.process import ManagedProcess, wait_until
from controller.runtime.audit import read_records
from tests.controlplane.kube import GROUP, VERSION, Kube

NODES = ("ha-a", "ha-b")
PREFIX = "ha-"
FINALIZER = "gpu.ds01.io/revocation"


@dataclass
class Replica:
    identity: str
    process: ManagedProcess
    audit: Path
    metrics_port: int

    def leader_metric(self) -> float | None:
        """`ds01_operator_leader` as this replica serves it (None when it cannot be read)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("ds01_operator_leader "):
                return float(line.split()[1])
        return None

    def kill(self) -> None:
        """SIGKILL: no cleanup handlers, the Lease is not handed back."""
        os.killpg(self.process.pid, signal.SIGKILL)
        wait_until(lambda: not self.process.alive(), 10, f"{self.identity} to die")
        self.process.stop()

    def terminate(self) -> None:
        """SIGTERM, as a rolling update or a drain does: the Lease is handed back."""
        self.process.stop()

    def records(self) -> list[dict[str, Any]]:
        return read_records(self.audit) if self.audit.exists() else []


def start_replica(
    cluster: LocalCluster, identity: str, timings: tuple[str, str, str], *extra: str
) -> Replica:
    """Start (or restart: same trail) replica ``identity``; ``extra`` flags are added."""
    lease, renew, retry = timings
    audit = cluster.workdir / f"audit-{identity}.jsonl"
    port = free_port()
    process = start_operator(
        cluster,
        f"--audit-log={audit}",
        f"--metrics-port={port}",
        f"--leader-identity={identity}",
        f"--leader-lease-duration={lease}",
        f"--leader-renew-deadline={renew}",
        f"--leader-retry-period={retry}",
        "--lifecycle-interval=0s",
        *extra,
        name=f"operator-{identity}",
    )
    return Replica(identity, process, audit, port)


def lease(admin: Kube) -> client.V1LeaseSpec:
    found = client.CoordinationV1Api(admin.api).read_namespaced_lease(
        "ds01-operator", "ds01-system"
    )
    assert found.spec is not None
    return found.spec


def _grant(namespace: str, user: str, index: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "subject": {"kind": "User", "name": user},
        "gpus": {"count": 1},
        "duration": "1h",
        "reason": "failover test",
    }
    if index % 3 == 0:
        spec["placement"] = {"reserve": True, "nodeSelector": {"gpu.ds01.io/ha-test": "true"}}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GPUGrant",
        "metadata": {"name": f"{PREFIX}{index:04d}", "namespace": namespace},
        "spec": spec,
    }


def prepare(cluster: LocalCluster, admin: Kube, users: int) -> list[tuple[str, str]]:
    """The auto-approving policy, two contested nodes, ``users`` accounts: (namespace, user)."""
    admin.apply(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "GPURateLimit",
            "metadata": {"name": "ha-test"},
            "spec": {
                "subjects": [{"kind": "Group", "name": "ha-test"}],
                "priority": 50,
                "grants": {"approval": "Auto", "maxGPUEquivalents": "Unlimited"},
                "rates": {"grantRequestsPerDay": "Unlimited"},
            },
        }
    )
    for name in NODES:
        add_simulated_node(cluster, name, {"gpu.ds01.io/ha-test": "true"})
    accounts = []
    for u in range(users):
        login = f"ha{u:03d}"
        accounts.append((f"u-{login}", admin.account(login, "ha-test")))
    return accounts


def whole_gpus() -> int:
    return sum(1 for name in NODES for d in simnode.inventory(name) if "migInstances" not in d)


@dataclass
class Outcome:
    """What the checks read, and what was measured (seconds after the kill)."""

    grants: list[dict[str, Any]]
    nodes: list[dict[str, Any]]
    events: list[dict[str, Any]]
    records: dict[str, list[dict[str, Any]]]
    killed: str
    survivor: str
    killed_at: datetime
    created_before_kill: int
    active_before_kill: int
    transitions: int
    takeover_s: float
    first_write_s: float | None
    converged_s: float
    metrics: dict[str, list[float | None]] = field(default_factory=dict)
    """Each replica's `ds01_operator_leader` before the kill, and the survivor's after."""


def converged(grants: list[dict[str, Any]], expected: int) -> bool:
    """Every grant decided for its current generation: Active, or Approved waiting for
    devices; reserving grants carry the revocation finalizer."""
    if len(grants) != expected:
        return False
    for g in grants:
        status = g.get("status") or {}
        if status.get("state") not in ("Active", "Approved"):
            return False
        if status.get("observedGeneration") != g["metadata"]["generation"]:
            return False
        reserving = (g["spec"].get("placement") or {}).get("reserve", False)
        if reserving and FINALIZER not in g["metadata"].get("finalizers", []):
            return False
    return True


def run(
    cluster: LocalCluster,
    admin: Kube,
    replicas: list[Replica],
    accounts: list[tuple[str, str]],
    grants: int,
    deadline_s: float = 300,
    graceful: bool = False,
) -> Outcome:
    """Create ``grants`` with 8 clients; SIGKILL the Lease holder once the first half were
    created and it has activated some (it is still writing the rest); then create the
    second half, which arrives while nobody leads. With ``graceful``, SIGTERM instead
    (the Lease is released)."""
    custom = client.CustomObjectsApi(admin.api)
    bodies = [
        (accounts[i % len(accounts)][0], _grant(*accounts[i % len(accounts)], i))
        for i in range(grants)
    ]
    created = Counter[str]()
    lock = threading.Lock()
    after_kill = threading.Event()
    """The second half is held back until the leader is dead: it arrives while nobody leads."""

    def create(numbered: tuple[int, tuple[str, dict[str, Any]]]) -> None:
        index, (namespace, body) = numbered
        if index >= grants // 2:
            after_kill.wait()
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "gpugrants", body)
        with lock:
            created["n"] += 1

    def ours() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = custom.list_cluster_custom_object(  # type: ignore[index]
            GROUP, VERSION, "gpugrants"
        )["items"]
        return [g for g in items if g["metadata"]["name"].startswith(PREFIX)]

    def active() -> int:
        return sum(1 for g in ours() if (g.get("status") or {}).get("state") == "Active")

    by_identity = {r.identity: r for r in replicas}
    before = {r.identity: [r.leader_metric()] for r in replicas}
    pool = ThreadPoolExecutor(8)
    creating = pool.map(create, enumerate(bodies))
    wait_until(
        lambda: created["n"] >= grants // 2 and active() >= 10, 120, "half the burst, some Active"
    )
    killed = by_identity[str(lease(admin).holder_identity)]
    survivor = next(r for r in replicas if r is not killed)
    counts = (created["n"], active())
    killed_at, started = datetime.now(UTC), time.monotonic()
    if graceful:
        killed.terminate()
    else:
        killed.kill()
    after_kill.set()
    wait_until(
        lambda: lease(admin).holder_identity == survivor.identity, 120, "the survivor to lead"
    )
    takeover = time.monotonic() - started
    list(creating)
    pool.shutdown()
    wait_until(lambda: converged(ours(), grants), deadline_s, f"all {grants} grants to converge")
    converged_after = time.monotonic() - started
    before[survivor.identity].append(survivor.leader_metric())

    records = {r.identity: r.records() for r in replicas}
    written = [
        datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00"))
        for r in records[survivor.identity]
    ]
    first = (min(written) - killed_at).total_seconds() if written else None
    namespaces = {namespace for namespace, _ in accounts}
    events = [
        e.to_dict()
        for e in admin.core.list_event_for_all_namespaces().items
        if e.metadata.namespace in namespaces
    ]
    return Outcome(
        grants=ours(),
        nodes=[admin.get("gpunode", name) for name in NODES],
        events=events,
        records=records,
        killed=killed.identity,
        survivor=survivor.identity,
        killed_at=killed_at,
        created_before_kill=counts[0],
        active_before_kill=counts[1],
        transitions=lease(admin).lease_transitions or 0,
        takeover_s=takeover,
        first_write_s=first,
        converged_s=converged_after,
        metrics=before,
    )


# -- what must hold -----------------------------------------------------------------


def _record_key(record: dict[str, Any]) -> tuple[str, str, bool]:
    """One transition of one grant. A grant approved without devices has two
    `grant.approved` records in its first pass (the approval, with `approvedBy`, and
    the state it entered): told apart, not counted as a duplicate."""
    details = record.get("details") or {}
    return (record["event_type"], str(details.get("grant")), "approvedBy" in details)


def grant_records(outcome: Outcome) -> list[dict[str, Any]]:
    return [
        r
        for records in outcome.records.values()
        for r in records
        if str((r.get("details") or {}).get("grant", "")).split("/")[-1].startswith(PREFIX)
    ]


def duplicated_records(outcome: Outcome) -> dict[tuple[str, str, bool], int]:
    """Transitions recorded more than once across both trails."""
    counts = Counter(_record_key(r) for r in grant_records(outcome))
    return {key: n for key, n in counts.items() if n > 1}


def missing_records(outcome: Outcome) -> list[tuple[str, str, bool]]:
    """Transitions a converged grant went through that neither trail recorded."""
    seen = {_record_key(r) for r in grant_records(outcome)}
    expected = []
    for g in outcome.grants:
        key = f"{g['metadata']['namespace']}/{g['metadata']['name']}"
        state = g["status"]["state"].lower()
        expected += [
            ("grant.requested", key, False),
            ("grant.approved", key, True),
            (f"grant.{state}", key, False),
        ]
    return [k for k in expected if k not in seen]


def duplicated_events(outcome: Outcome) -> dict[tuple[str, str, str], int]:
    """Events posted twice for the same grant and reason."""
    counts = Counter(
        (e["metadata"]["namespace"], e["involved_object"]["name"], e["reason"])
        for e in outcome.events
        if e["involved_object"]["kind"] == "GPUGrant"
        and e["involved_object"]["name"].startswith(PREFIX)
    )
    return {key: n for key, n in counts.items() if n > 1}


def devices_held_twice(outcome: Outcome) -> dict[str, int]:
    holders = Counter(
        d["uuid"]
        for g in outcome.grants
        for a in (g.get("status") or {}).get("allocations") or ()
        for d in a["devices"]
    )
    return {uuid: n for uuid, n in holders.items() if n > 1}


def reservations_overlapping(outcome: Outcome) -> list[str]:
    """Devices with two GPUNode.spec reservations whose windows overlap."""
    clashes = []
    for node in outcome.nodes:
        by_device: dict[str, list[dict[str, Any]]] = {}
        for r in node["spec"].get("reservations") or ():
            by_device.setdefault(r["deviceUUID"], []).append(r)
        for uuid, held in by_device.items():
            spans = sorted((r.get("from") or "", r["until"]) for r in held)
            if any(b[0] < a[1] for a, b in itertools.pairwise(spans)):
                clashes.append(uuid)
    return clashes


def summary(outcome: Outcome, grants: int) -> str:
    states = Counter(g["status"]["state"] for g in outcome.grants)
    return json.dumps(
        {
            "grants": grants,
            "states": dict(states),
            "killed": outcome.killed,
            "createdBeforeKill": outcome.created_before_kill,
            "activeBeforeKill": outcome.active_before_kill,
            "leaseTransitions": outcome.transitions,
            "takeoverSeconds": round(outcome.takeover_s, 2),
            "firstWriteSeconds": round(outcome.first_write_s, 2)
            if outcome.first_write_s is not None
            else None,
            "convergedSeconds": round(outcome.converged_s, 2),
            "records": {k: len(v) for k, v in outcome.records.items()},
            "missingRecords": len(missing_records(outcome)),
        }
    )
