"""Two operator replicas: the leader is SIGKILLed during a burst of grants; the other takes over.

The class of fault: two replicas writing at once, or a takeover that loses or
repeats work. Both replicas run (as the operator's ServiceAccount, each with
its own audit trail) against their own control plane; the Lease holder is
killed once half of 150 grants were created and it has activated some (it is
still writing the rest); the other half arrive while nobody leads (the full
500 runs through `python -m benchmarks.operator_failover`, kept out of CI for
time). Then: the other replica holds the Lease (one transition),
every grant converged, no device is held by two grants or reserved twice in
a GPUNode spec, no transition was recorded or announced twice across both
trails and the Events, the survivor wrote nothing before the kill, and the
leader metric says who leads. Lease timings are short here (5 s / 4 s /
0.5 s) to keep CI time down; the measured times are printed, not asserted.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest

from controller.cli.dev import install
from controller.devcluster.controlplane import LocalCluster
from controller.devcluster.process import wait_until
from tests.controlplane import failover
from tests.controlplane.kube import Kube

GRANTS = 150
USERS = 15
TIMINGS = ("5s", "4s", "500ms")
IN_FLIGHT = 8
"""The writer's worker threads: at most this many writes can have been committed by
the apiserver, their answers not yet read, when the leader is killed (each records
on its own thread as soon as its answer arrives), so at most this many grants lose
the records of their last write."""


@pytest.fixture(scope="module")
def ha_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("ha-cluster")) as started:
        install(started, samples=False)
        yield started


def test_killing_the_leader_mid_burst_hands_over_without_loss_or_duplicates(
    ha_cluster: LocalCluster,
) -> None:
    admin = Kube(ha_cluster, ha_cluster.kubeconfig)
    accounts = failover.prepare(ha_cluster, admin, USERS)
    first = failover.start_replica(ha_cluster, "replica-a", TIMINGS)
    wait_until(
        lambda: failover.lease(admin).holder_identity == "replica-a", 60, "replica-a to lead"
    )
    second = failover.start_replica(ha_cluster, "replica-b", TIMINGS)
    wait_until(lambda: second.leader_metric() == 0.0, 30, "replica-b to follow")

    outcome = failover.run(ha_cluster, admin, [first, second], accounts, GRANTS)
    print("failover:", failover.summary(outcome, GRANTS))

    assert outcome.killed == "replica-a" and outcome.survivor == "replica-b"
    assert outcome.transitions == 1, "the Lease changed hands more than once"
    assert outcome.metrics["replica-a"] == [1.0]
    assert outcome.metrics["replica-b"] == [0.0, 1.0]

    states = [g["status"]["state"] for g in outcome.grants]
    reserving = sum(1 for g in outcome.grants if (g["spec"].get("placement") or {}).get("reserve"))
    assert len(states) == GRANTS
    assert states.count("Active") == GRANTS - reserving + failover.whole_gpus()
    assert failover.devices_held_twice(outcome) == {}
    assert failover.reservations_overlapping(outcome) == []
    reserved = sorted(r["deviceUUID"] for n in outcome.nodes for r in n["spec"]["reservations"])
    held = sorted(
        d["uuid"]
        for g in outcome.grants
        for a in g["status"].get("allocations") or ()
        for d in a["devices"]
    )
    assert reserved == held and len(held) == failover.whole_gpus()

    assert failover.duplicated_records(outcome) == {}
    assert failover.duplicated_events(outcome) == {}
    missing = failover.missing_records(outcome)
    assert len({grant for _, grant, _ in missing}) <= IN_FLIGHT, missing

    # Only the leader writes: the survivor's trail starts after the kill, the
    # killed replica's before it, and each recorded part of the burst.
    survivor_times = [_time(r) for r in outcome.records["replica-b"]]
    killed_times = [_time(r) for r in outcome.records["replica-a"]]
    assert survivor_times and min(survivor_times) > outcome.killed_at
    assert killed_times and max(killed_times) < outcome.killed_at


def _time(record: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(record["timestamp"]).replace("Z", "+00:00"))
