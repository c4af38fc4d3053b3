"""The whole-cluster plan: accounts, grants, node specs and usage from objects and time."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from controller.api.kinds import GPUExemption, GPUGrant, GPUNode, GPURateLimit
from controller.policy.plan import Namespace, Snapshot, plan
from tests.unit.fixtures import T0, a100_node, grant, later

ACCOUNTS = [
    Namespace(
        "u-alice",
        {"gpu.ds01.io/user": "alice-lab.example"},
        {
            "gpu.ds01.io/user-name": "alice@lab.example",
            "gpu.ds01.io/groups": "researcher",
            "gpu.ds01.io/linux-user": "alice",
        },
    ),
    Namespace(
        "u-bob",
        {"gpu.ds01.io/user": "bob-lab.example"},
        {"gpu.ds01.io/user-name": "bob@lab.example", "gpu.ds01.io/groups": "student"},
    ),
    Namespace("default", {}, {}),
]
LIMITS = [
    GPURateLimit.model_validate(
        {
            "metadata": {"name": "researcher"},
            "spec": {
                "subjects": [{"kind": "Group", "name": "researcher"}],
                "priority": 20,
                "gpu": {"maxGPUEquivalents": 1},
                "grants": {"approval": "Auto", "maxGPUEquivalents": 4, "revocationGrace": "10m"},
            },
        }
    ),
    GPURateLimit.model_validate(
        {
            "metadata": {"name": "student"},
            "spec": {
                "subjects": [{"kind": "Group", "name": "student"}],
                "priority": 20,
                "grants": {"approval": "Required"},
            },
        }
    ),
]


def world(
    grants: list[GPUGrant],
    nodes: list[GPUNode] | None = None,
    exemptions: list[GPUExemption] | None = None,
) -> Snapshot:
    return Snapshot(ACCOUNTS, LIMITS, grants, exemptions or [], nodes or [a100_node()])


def settle(snapshot: Snapshot, now: Any) -> Snapshot:
    """Store a plan's results the way the apiserver would, for the next pass."""
    decided = plan(snapshot, now)
    grants = []
    for g in snapshot.grants:
        key = f"{g.metadata.namespace}/{g.metadata.name}"
        spec = (
            g.spec.model_copy(update={"approval": decided.approvals[key]})
            if key in decided.approvals
            else g.spec
        )
        grants.append(g.model_copy(update={"spec": spec, "status": decided.grant_status[key]}))
    nodes = [
        n.model_copy(update={"spec": decided.node_specs[n.metadata.name]}) for n in snapshot.nodes
    ]
    return Snapshot(snapshot.namespaces, snapshot.limits, grants, snapshot.exemptions, nodes)


def host_grant(name: str = "host", **extra: Any) -> GPUGrant:
    return grant(name, access="Host", placement={"nodeName": "gpu-node-1"}, **extra)


def test_host_grant_reserves_devices_and_opens_host_access_while_active() -> None:
    decided = plan(world([host_grant(count=2)]), later(1))
    assert decided.grant_status["u-alice/host"].state == "Active"
    spec = decided.node_specs["gpu-node-1"]
    assert spec.host_access and spec.host_access[0].linux_user == "alice"
    assert spec.host_access[0].device_uuids and len(spec.host_access[0].device_uuids) == 2
    assert spec.reservations and {r.user for r in spec.reservations} == {"alice@lab.example"}
    assert spec.enforcement == "Enforce"


def test_pending_reserving_grants_hold_nothing() -> None:
    pending = grant("wants", user="bob@lab.example", namespace="u-bob", placement={"reserve": True})
    decided = plan(world([pending]), later(1))
    assert decided.grant_status["u-bob/wants"].state == "Pending"
    assert decided.node_specs["gpu-node-1"].reservations is None


def test_expiry_closes_host_access_and_revokes_after_the_grace_period() -> None:
    snapshot = settle(world([host_grant(duration="1h")]), later(1))
    decided = plan(snapshot, later(61))
    assert decided.grant_status["u-alice/host"].state == "Expired"
    spec = decided.node_specs["gpu-node-1"]
    assert spec.host_access is None and spec.reservations is None
    assert spec.revocations and spec.revocations[0].effective_at == later(60) + timedelta(
        minutes=10
    )
    assert spec.revocations[0].reason == "grant expired"


def test_revocation_outlives_the_deleted_grant() -> None:
    snapshot = settle(world([host_grant()]), later(1))
    gone = snapshot.grants[0].model_copy(
        update={
            "metadata": snapshot.grants[0].metadata.model_copy(
                update={"deletion_timestamp": later(5)}
            )
        }
    )
    snapshot = settle(
        Snapshot(snapshot.namespaces, snapshot.limits, [gone], [], snapshot.nodes), later(5)
    )
    assert (
        snapshot.nodes[0].spec.revocations
        and snapshot.nodes[0].spec.revocations[0].reason == "grant deleted"
    )
    # The grant object is gone; the node's own spec still carries the revocation.
    after = plan(Snapshot(snapshot.namespaces, snapshot.limits, [], [], snapshot.nodes), later(6))
    revocations = after.node_specs["gpu-node-1"].revocations
    assert revocations and revocations[0].effective_at == later(15)
    assert (
        plan(Snapshot(snapshot.namespaces, snapshot.limits, [], [], snapshot.nodes), later(200))
        .node_specs["gpu-node-1"]
        .revocations
        is None
    )


def test_two_grants_for_the_last_device_first_one_wins() -> None:
    node = a100_node(gpus=1)
    first = host_grant("first", created=T0)
    second = host_grant("second", created=T0 + timedelta(seconds=1))
    decided = plan(world([second, first], [node]), later(1))
    assert decided.grant_status["u-alice/first"].state == "Active"
    assert decided.grant_status["u-alice/second"].state == "Approved"


def test_host_access_exemption_opens_all_gpus_on_its_nodes() -> None:
    exemption = GPUExemption.model_validate(
        {
            "metadata": {"name": "alice-host"},
            "spec": {
                "subject": {"kind": "User", "name": "alice@lab.example"},
                "exemptFrom": ["HostAccess"],
                "category": "Waiver",
                "reason": "driver debugging",
                "expiresAt": later(120).isoformat(),
                "nodes": ["gpu-node-1"],
            },
        }
    )
    nodes = [a100_node("gpu-node-1"), a100_node("gpu-node-2")]
    decided = plan(world([], nodes, [exemption]), later(1))
    entry = (decided.node_specs["gpu-node-1"].host_access or [])[0]
    assert (
        entry.device_uuids is None
        and entry.until == later(120)
        and entry.source.kind == "GPUExemption"
    )
    assert decided.node_specs["gpu-node-2"].host_access is None
    assert (
        plan(world([], nodes, [exemption]), later(121)).node_specs["gpu-node-1"].host_access is None
    )


def test_enforcement_label_overrides_the_default() -> None:
    node = a100_node(labels={"gpu.ds01.io/enforcement": "Audit"})
    assert plan(world([], [node]), later(1)).node_specs["gpu-node-1"].enforcement == "Audit"


def test_limit_status_counts_accounts_and_reports_conflicts() -> None:
    clash = GPURateLimit.model_validate(
        {
            "metadata": {"name": "course"},
            "spec": {
                "subjects": [{"kind": "Group", "name": "researcher"}],
                "priority": 20,
                "gpu": {"maxGPUEquivalents": 3},
            },
        }
    )
    snapshot = Snapshot(ACCOUNTS, [*LIMITS, clash], [], [], [])
    decided = plan(snapshot, later(1))
    status = decided.limit_status["researcher"]
    assert status.matched_users == 1 and status.subjects == "Group:researcher"
    conflict = next(c for c in status.conditions or () if c.type == "PriorityConflict")
    assert "gpu.maxGPUEquivalents (with GPURateLimit/course)" in conflict.message


def test_bad_account_annotation_makes_grants_there_invalid() -> None:
    broken = Namespace("u-eve", {"gpu.ds01.io/user": "eve"}, {"gpu.ds01.io/user-name": "mallory"})
    snapshot = Snapshot(
        [*ACCOUNTS, broken], LIMITS, [grant("g", user="eve", namespace="u-eve")], [], []
    )
    decided = plan(snapshot, later(1))
    assert decided.grant_status["u-eve/g"].state == "Invalid"
    assert "gpu.ds01.io/user-name" in (decided.grant_status["u-eve/g"].conditions or [])[0].message


def with_workloads(snapshot: Snapshot, workloads: list[dict[str, Any]]) -> Snapshot:
    """The snapshot with the node's agent reporting ``workloads``."""
    nodes = []
    for node in snapshot.nodes:
        body = node.status.model_dump(by_alias=True, mode="json")  # type: ignore[union-attr]
        body["workloads"] = workloads
        nodes.append(node.model_copy(update={"status": type(node.status).model_validate(body)}))
    return Snapshot(
        snapshot.namespaces, snapshot.limits, snapshot.grants, snapshot.exemptions, nodes
    )


def test_usage_is_charged_to_reserved_devices_and_above_the_allowance() -> None:
    node = a100_node(gpus=4)
    snapshot = settle(
        world([host_grant(count=1, duration="3h"), grant("extra", count=2, duration="3h")], [node]),
        later(1),
    )
    held = snapshot.grants[0].status.allocations[0].devices[0].uuid  # type: ignore[union-attr, index]
    others = [d.uuid for d in node.status.devices or () if d.uuid != held]  # type: ignore[union-attr]
    busy = [
        {
            "kind": "HostProcess",
            "name": "python",
            "owner": "alice@lab.example",
            "ownerSource": "ProcessUID",
            "devices": [held],
        },
        {
            "kind": "Pod",
            "name": "train",
            "namespace": "u-alice",
            "owner": "alice@lab.example",
            "ownerSource": "Namespace",
            "devices": others[:2],
        },
    ]
    snapshot = settle(with_workloads(snapshot, busy), later(2))
    host, extra = (g.status.usage for g in snapshot.grants)  # type: ignore[union-attr]
    assert host is not None and extra is not None
    assert (host.in_use, host.reserved_idle) == (1, 0)  # its reserved GPU, in use
    assert extra.in_use == 1  # 2 GPUs used outside, base allowance 1
    assert host.gpu_hours_granted == 3 and extra.gpu_hours_granted == 6
    # Same use an hour later: nothing to write.
    again = plan(snapshot, later(62))
    assert again.grant_status["u-alice/host"].usage is host
    # Use stops: the hour at the old rate is booked, the rate drops to zero.
    stopped = plan(with_workloads(snapshot, []), later(62))
    host_after = stopped.grant_status["u-alice/host"].usage
    assert host_after is not None and host_after.gpu_hours_used == 1.0 and host_after.in_use == 0
    assert host_after.reserved_idle == 1
    assert stopped.in_use == {}
    assert again.in_use["alice@lab.example"] == 3 and again.granted["alice@lab.example"] == 3


def test_usage_is_booked_only_until_the_window_ends() -> None:
    node = a100_node(gpus=2)
    snapshot = settle(world([host_grant(duration="1h")], [node]), later(1))
    held = snapshot.grants[0].status.allocations[0].devices[0].uuid  # type: ignore[union-attr, index]
    busy = [
        {
            "kind": "HostProcess",
            "name": "x",
            "owner": "alice@lab.example",
            "ownerSource": "ProcessUID",
            "devices": [held],
        }
    ]
    snapshot = settle(with_workloads(snapshot, busy), later(1))
    # The operator was away for two hours; the grant ended 59 minutes after the last record.
    record = plan(with_workloads(snapshot, busy), later(181)).grant_status["u-alice/host"].usage
    assert record is not None and record.gpu_hours_used == round(59 / 60, 6)


def test_the_decision_cache_never_changes_an_answer() -> None:
    """Plans with a cache carried across passes equal plans computed from scratch."""
    from controller.policy.plan import DecisionCache

    def versioned(g: GPUGrant, rv: int) -> GPUGrant:
        return g.model_copy(
            update={"metadata": g.metadata.model_copy(update={"resource_version": str(rv)})}
        )

    cache = DecisionCache()
    grants = [
        versioned(host_grant(duration="1h"), 1),
        versioned(grant("extra", duration="30m"), 1),
        versioned(
            grant("bobs", user="bob@lab.example", namespace="u-bob", placement={"reserve": True}), 1
        ),
    ]
    snapshot = world(grants)
    limits = list(snapshot.limits)
    for step, minute in enumerate([1, 1, 2, 29, 30, 31, 59, 60, 61, 90]):
        if minute == 31:  # bob's group gets auto-approval half way through
            limits = [
                *limits,
                GPURateLimit.model_validate(
                    {
                        "metadata": {"name": "bob", "resourceVersion": "7"},
                        "spec": {
                            "subjects": [{"kind": "User", "name": "bob@lab.example"}],
                            "grants": {"approval": "Auto"},
                        },
                    }
                ),
            ]
            snapshot = Snapshot(snapshot.namespaces, limits, snapshot.grants, [], snapshot.nodes)
        cached = plan(snapshot, later(minute), cache=cache)
        fresh = plan(snapshot, later(minute))
        assert cached.grant_status == fresh.grant_status, (step, minute)
        assert cached.node_specs == fresh.node_specs
        assert cached.approvals == fresh.approvals
        assert [e.reason for e in cached.events] == [e.reason for e in fresh.events]
        stored = []
        for g in snapshot.grants:
            key = f"{g.metadata.namespace}/{g.metadata.name}"
            status, approval = fresh.grant_status[key], fresh.approvals.get(key)
            changed = status != g.status or approval is not None
            spec = g.spec.model_copy(update={"approval": approval}) if approval else g.spec
            updated = g.model_copy(update={"status": status, "spec": spec})
            stored.append(
                versioned(updated, int(g.metadata.resource_version or 0) + 1) if changed else g
            )
        nodes = [
            n.model_copy(update={"spec": fresh.node_specs[n.metadata.name]}) for n in snapshot.nodes
        ]
        snapshot = Snapshot(snapshot.namespaces, limits, stored, [], nodes)
    states = {k: s.state for k, s in plan(snapshot, later(91), cache=cache).grant_status.items()}
    assert states == {"u-alice/host": "Expired", "u-alice/extra": "Expired", "u-bob/bobs": "Active"}


def test_lifecycle_exemptions_reach_the_nodes_expanded_to_users() -> None:
    group = GPUExemption.model_validate(
        {
            "metadata": {"name": "researchers-long-runs"},
            "spec": {
                "subject": {"kind": "Group", "name": "researcher"},
                "exemptFrom": ["MaxRuntime", "Budget"],
                "category": "ResearchGrant",
                "reason": "conference week",
                "expiresAt": later(60).isoformat(),
            },
        }
    )
    decided = plan(world([], None, [group]), later(1))
    entries = decided.node_specs["gpu-node-1"].lifecycle_exemptions or []
    assert [(e.user, e.linux_user, e.exempt_from) for e in entries] == [
        ("alice@lab.example", "alice", ["MaxRuntime"])
    ]
    assert (
        plan(world([], None, [group]), later(61)).node_specs["gpu-node-1"].lifecycle_exemptions
        is None
    )


def test_a_settled_grant_is_remembered_as_its_stored_status_not_a_copy() -> None:
    """Memory at scale: once a grant's stored status is what the plan decides, the
    decision cache holds that very object (one status per grant, not two), and the
    plan hands it back, so the writer sees at a glance there is nothing to write."""
    from controller.policy.plan import DecisionCache

    snapshot = world([grant("extra", duration="2h")])
    for minute in (1, 2, 3):  # approved, then Active: then nothing changes
        snapshot = settle(snapshot, later(minute))
    stored = snapshot.grants[0].model_copy(
        update={
            "metadata": snapshot.grants[0].metadata.model_copy(update={"resource_version": "9"})
        }
    )
    settled = Snapshot(snapshot.namespaces, snapshot.limits, [stored], [], snapshot.nodes)
    cache = DecisionCache()
    first = plan(settled, later(4), cache=cache)
    again = plan(settled, later(5), cache=cache)
    assert stored.status is not None and stored.status.state == "Active"
    assert first.grant_status["u-alice/extra"] is stored.status
    assert again.grant_status["u-alice/extra"] is stored.status
    assert plan(settled, later(5)).grant_status == again.grant_status
