"""What the operator's metrics report (`controller.policy.observe`): nodes, accounts, requests."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from controller.api.grant import GrantRevocation
from controller.api.kinds import GPUGrant, GPUNode
from controller.policy.observe import account_facts, ended, node_facts, observe
from controller.policy.plan import Snapshot, plan
from tests.unit.fixtures import T0, a100_node, grant, later
from tests.unit.test_plan import host_grant, settle, world


def reporting(node: GPUNode, at: datetime, mode: str = "Enforce", **status: Any) -> GPUNode:
    """``node`` as its agent reports it at ``at``: heartbeat, mode in force, ``status`` fields."""
    body = node.status.model_dump(by_alias=True, mode="json", exclude_none=True)  # type: ignore[union-attr]
    body |= {
        "agent": {"version": "test", "heartbeatTime": at.isoformat()},
        "enforcement": mode,
        **status,
    }
    return node.model_copy(update={"status": type(node.status).model_validate(body)})


def held_by(snapshot: Snapshot) -> str:
    status = snapshot.grants[0].status
    assert status is not None and status.allocations
    return status.allocations[0].devices[0].uuid


def deleted(snapshot: Snapshot, at: datetime) -> Snapshot:
    """The snapshot after its only grant was deleted at ``at`` (its revocation is in the spec)."""
    gone = snapshot.grants[0]
    gone = gone.model_copy(
        update={"metadata": gone.metadata.model_copy(update={"deletion_timestamp": at})}
    )
    after = settle(Snapshot(snapshot.namespaces, snapshot.limits, [gone], [], snapshot.nodes), at)
    return Snapshot(after.namespaces, after.limits, [], [], after.nodes)


def workload(owner: str, *devices: str) -> dict[str, Any]:
    return {
        "kind": "HostProcess",
        "name": "python train.py",
        "owner": owner,
        "ownerSource": "ProcessUID",
        "devices": list(devices),
    }


def test_a_revoked_holder_still_reported_after_the_grace_period_is_unfinished() -> None:
    # The host grant's deletion at minute 5 revokes it with a 10-minute grace (until minute 15).
    snapshot = settle(world([host_grant()]), later(1))
    device = held_by(snapshot)
    node = deleted(snapshot, later(5)).nodes[0]
    alice = workload("alice@lab.example", device)

    def unfinished(at: datetime, mode: str = "Enforce", *workloads: dict[str, Any]) -> int:
        return node_facts(
            reporting(node, at, mode, workloads=list(workloads)), None
        ).unfinished_revocations

    assert unfinished(later(20), "Enforce", alice) == 1
    assert unfinished(later(10), "Enforce", alice) == 0  # still in its grace period
    assert unfinished(later(20), "Audit", alice) == 0  # Audit ends nothing
    assert unfinished(later(20), "Enforce", workload("bob@lab.example", device)) == 0
    assert unfinished(later(20), "Enforce") == 0  # the holder is gone


def test_a_revocation_of_a_whole_gpu_covers_its_mig_slices() -> None:
    node = a100_node(gpus=2, mig={0: ["3g.20gb", "3g.20gb"]})
    gpu = node.status.devices[0]  # type: ignore[union-attr, index]
    slice_uuid = gpu.mig_instances[0].uuid  # type: ignore[index]
    spec = {
        "enforcement": "Enforce",
        "revocations": [
            {
                "user": "alice@lab.example",
                "deviceUUIDs": [gpu.uuid],
                "reason": "grant deleted",
                "effectiveAt": later(1).isoformat(),
                "until": later(60).isoformat(),
                "source": {"kind": "GPUGrant", "name": "g", "namespace": "u-alice"},
            }
        ],
    }
    node = node.model_copy(update={"spec": type(node.spec).model_validate(spec)})
    seen = reporting(node, later(5), workloads=[workload("alice@lab.example", slice_uuid)])
    assert node_facts(seen, None).unfinished_revocations == 1
    soft = spec | {"revocations": [spec["revocations"][0] | {"soft": True}]}  # type: ignore[operator]
    warned = seen.model_copy(update={"spec": type(node.spec).model_validate(soft)})
    assert node_facts(warned, None).unfinished_revocations == 0


def test_node_facts_report_heartbeat_mode_health_and_violations() -> None:
    node = a100_node(gpus=4, unhealthy=(2,))
    violation = {
        "kind": "Unattributed",
        "deviceUUID": node.status.devices[0].uuid,  # type: ignore[union-attr, index]
        "message": "a process of nobody",
        "since": later(1).isoformat(),
    }
    ready = {
        "type": "AgentReady",
        "status": "True",
        "reason": "Scanning",
        "message": "",
        "lastTransitionTime": later(1).isoformat(),
    }
    seen = reporting(node, later(3), "Audit", violations=[violation], conditions=[ready])
    facts = node_facts(seen, plan(world([], [seen]), later(3)).node_specs["gpu-node-1"])
    assert facts.heartbeat == later(3).timestamp()
    assert (facts.in_force, facts.desired) == ("Audit", "Enforce")
    assert facts.unhealthy_gpus == 1 and facts.gpus == 4 and facts.agent_ready
    assert facts.violations == {"Unattributed": 1, "Unentitled": 0, "OutsideAllocation": 0}
    silent = node_facts(a100_node().model_copy(update={"status": None}), None)
    assert silent.heartbeat is None and silent.in_force is None and not silent.agent_ready


def decided_and_old(grants: list[GPUGrant], now: datetime) -> tuple[Snapshot, Any]:
    snapshot = world(grants)
    return snapshot, plan(snapshot, now).grant_status


def test_a_refusal_is_counted_once_by_its_reason() -> None:
    denied = grant(
        "denied",
        user="bob@lab.example",
        namespace="u-bob",
        approval={"decision": "Denied", "approvedBy": "prof@lab.example", "note": "no"},
    )
    elsewhere = grant("elsewhere", user="alice@lab.example", namespace="u-bob")
    snapshot, decided = decided_and_old([denied, elsewhere], later(1))
    assert decided["u-bob/elsewhere"].state == "Invalid"
    denials, revocations, counted = ended(snapshot.grants, decided, set(), {})
    assert denials == {"Denied": 1, "NotAllowed": 1} and not revocations
    assert counted == {"u-bob/denied": "Denied", "u-bob/elsewhere": "Invalid"}
    # The next pass, before the watch echoes the write: nothing new.
    assert ended(snapshot.grants, decided, set(), counted)[0] == {}
    # A write that failed is counted when it is stored, not before.
    assert ended(snapshot.grants, decided, {"u-bob/denied"}, {})[0] == {"NotAllowed": 1}
    # Stored (after a restart, nothing remembered): nothing new either.
    assert ended(settle(snapshot, later(1)).grants, decided, set(), {})[0] == {}


def test_revocations_count_approved_grants_ended_early_by_how() -> None:
    snapshot = settle(world([host_grant(), grant("extra")]), later(1))
    revoked = snapshot.grants[1].model_copy(
        update={
            "spec": snapshot.grants[1].spec.model_copy(
                update={"revocation": GrantRevocation(reason="paper done", revoked_by="a@b")}
            )
        }
    )
    gone = snapshot.grants[0]
    gone = gone.model_copy(
        update={"metadata": gone.metadata.model_copy(update={"deletion_timestamp": later(2)})}
    )
    grants = [gone, revoked]
    decided = plan(
        Snapshot(snapshot.namespaces, snapshot.limits, grants, [], snapshot.nodes), later(2)
    )
    assert ended(grants, decided.grant_status, set(), {})[1] == {"Deleted": 1, "Revoked": 1}
    # A request withdrawn before anyone approved it revoked nothing.
    asked = grant("asked", user="bob@lab.example", namespace="u-bob")
    asked = asked.model_copy(
        update={
            "spec": asked.spec.model_copy(update={"revocation": GrantRevocation(reason="oops")})
        }
    )
    _, withdrawn = decided_and_old([asked], later(1))
    assert withdrawn["u-bob/asked"].state == "Revoked"
    assert ended([asked], withdrawn, set(), {})[1] == {}


def test_pending_requests_groups_and_accounts_are_observed() -> None:
    pending = grant("wants", user="bob@lab.example", namespace="u-bob", created=T0)
    snapshot = settle(world([host_grant(count=2), pending]), later(1))
    decided = plan(snapshot, later(2))
    seen = observe(snapshot.grants, snapshot.nodes, decided, later(2))
    assert [(p.namespace, p.name, p.subject, p.since) for p in seen.pending] == [
        ("u-bob", "wants", "bob@lab.example", T0.timestamp())
    ]
    assert seen.group_granted == {"researcher": 2.0}
    accounts = {a.subject: a for a in seen.accounts}
    assert accounts["alice@lab.example"].groups == ("researcher",)
    assert accounts["alice@lab.example"].allowance == 3.0  # 1 of her limit + 2 granted
    assert not accounts["bob@lab.example"].over_use
    assert not accounts["bob@lab.example"].budget_exhausted


def test_budget_use_is_brought_forward_to_now_at_the_stored_rate() -> None:
    decided = plan(world([]), later(1))
    document = decided.accounts["u-alice"].document
    assert document is not None
    budget = document.budget.model_copy(
        update={"used_gpu_hours": 2.0, "rate": 1.0, "as_of": later(0), "gpu_hours": "10"}
    )
    facts = account_facts("u-alice", document.model_copy(update={"budget": budget}), later(30))
    assert (facts.budget, facts.budget_used) == (10.0, 2.5)
    unlimited = budget.model_copy(update={"gpu_hours": "Unlimited"})
    assert (
        account_facts(
            "u-alice", document.model_copy(update={"budget": unlimited}), later(30)
        ).budget
        is None
    )


def test_published_series_follow_the_objects_and_a_former_leader_forgets_them() -> None:
    from prometheus_client import REGISTRY

    from controller.operator.observer import Observer, publish

    node = reporting(a100_node(name="obs-node"), later(3), "Enforce")
    seen = observe([], [node], plan(world([], [node]), later(3)), later(3))
    publish(seen)

    def value(metric: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(metric, labels)

    assert value("ds01_node_heartbeat_timestamp_seconds", node="obs-node") == later(3).timestamp()
    assert value("ds01_node_enforcement", node="obs-node", mode="Enforce") == 1
    assert value("ds01_node_enforcement", node="obs-node", mode="Audit") == 0
    # The next pass without the node: its series are gone, not left at their last value.
    publish(observe([], [], plan(world([], []), later(4)), later(4)))
    assert value("ds01_node_heartbeat_timestamp_seconds", node="obs-node") is None
    publish(seen)
    Observer().forget()
    assert value("ds01_node_gpus", node="obs-node") is None
