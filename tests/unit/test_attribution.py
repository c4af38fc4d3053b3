"""Attribution of GPU processes to owners, and the violations it finds."""

from __future__ import annotations

from controller.api.node import GPUNodeSpec
from controller.policy.attribution import (
    ContainerView,
    Memory,
    NodeView,
    PodView,
    ProcessUse,
    attribute,
)
from tests.unit.fixtures import later

GPU0, GPU1 = "GPU-00000000-0000-0000-0000-000000000000", "GPU-11111111-1111-1111-1111-111111111111"
MIG1 = "MIG-11111111-1111-1111-1111-00000000000a"
POD_UID = "0d6f6c4e-2f1b-4c1e-9a7e-0f4f5b7c1a22"
CID = "a" * 64


def view(spec: dict | None = None, **extra) -> NodeView:
    return NodeView(
        spec=GPUNodeSpec.model_validate(spec or {}),
        parents={GPU0: GPU0, GPU1: GPU1, MIG1: GPU1},
        logins={1000: "alice", 1001: "bob", 0: "root"},
        accounts_by_login={"alice": "alice@lab.example", "bob": "bob@lab.example"},
        accounts_by_namespace={"u-alice": "alice@lab.example"},
        **extra,
    )


def use(pid: int, device: str = GPU0, uid: int = 1000, **extra) -> ProcessUse:
    return ProcessUse(
        pid=pid,
        start_ticks=pid * 10,
        device_uuid=device,
        used_memory_mib=512,
        uid=uid,
        comm=extra.pop("comm", "python"),
        **extra,
    )


def test_pod_process_is_owned_by_its_namespace_and_checked_against_podresources() -> None:
    pods = {POD_UID: PodView(POD_UID, "u-alice", "train", frozenset({MIG1}))}
    inside = attribute(
        [use(10, MIG1, uid=0, container_id=CID, pod_uid=POD_UID)],
        view(pods=pods),
        Memory(),
        later(0),
    )
    assert [(w.kind, w.name, w.owner, w.owner_source) for w in inside.workloads] == [
        ("Pod", "train", "alice@lab.example", "Namespace")
    ]
    assert inside.violations == []
    outside = attribute(
        [use(10, GPU0, uid=0, container_id=CID, pod_uid=POD_UID)],
        view(pods=pods),
        Memory(),
        later(0),
    )
    assert [v.kind for v in outside.violations] == ["OutsideAllocation"]
    assert "outside its allocation" in outside.violations[0].message


def test_pod_in_a_non_account_namespace_is_unattributed_unless_system() -> None:
    pods = {POD_UID: PodView(POD_UID, "research-shared", "x", frozenset({GPU0}))}
    result = attribute(
        [use(10, container_id=CID, pod_uid=POD_UID)], view(pods=pods), Memory(), later(0)
    )
    assert [v.kind for v in result.violations] == ["Unattributed"]
    system = {POD_UID: PodView(POD_UID, "kube-system", "dcgm", frozenset())}
    assert (
        attribute(
            [use(10, container_id=CID, pod_uid=POD_UID)], view(pods=system), Memory(), later(0)
        ).violations
        == []
    )


def test_container_owner_from_verified_label_else_from_uid() -> None:
    labelled = {
        CID: ContainerView(CID, "alice-train", frozenset({GPU0}), owner="alice@lab.example")
    }
    result = attribute(
        [use(10, uid=1001, container_id=CID)], view(containers=labelled), Memory(), later(0)
    )
    assert [(w.owner, w.owner_source) for w in result.workloads] == [
        ("alice@lab.example", "GatewayLabel")
    ]
    unlabelled = {CID: ContainerView(CID, "train", frozenset({GPU0}))}
    result = attribute(
        [use(10, uid=1001, container_id=CID)], view(containers=unlabelled), Memory(), later(0)
    )
    assert [(w.owner, w.owner_source) for w in result.workloads] == [
        ("bob@lab.example", "ContainerUID")
    ]


def test_container_without_allocation_using_a_gpu_is_unentitled() -> None:
    bare = {CID: ContainerView(CID, "sneaky", frozenset())}
    result = attribute([use(10, container_id=CID)], view(containers=bare), Memory(), later(0))
    assert [v.kind for v in result.violations] == ["Unentitled"]
    assert "without any GPU allocation" in result.violations[0].message


def test_host_process_needs_two_scans_then_host_access() -> None:
    first = attribute([use(20)], view(), Memory(), later(0))
    assert first.workloads == [] and first.violations == []
    second = attribute([use(20)], view(), first.memory, later(1))
    assert [(w.kind, w.owner, w.owner_source) for w in second.workloads] == [
        ("HostProcess", "alice@lab.example", "ProcessUID")
    ]
    assert [v.kind for v in second.violations] == ["Unentitled"]
    granted = view(
        {
            "hostAccess": [
                {
                    "user": "alice@lab.example",
                    "linuxUser": "alice",
                    "deviceUUIDs": [GPU0],
                    "until": later(60).isoformat(),
                    "source": {"kind": "GPUGrant", "name": "g", "namespace": "u-alice"},
                }
            ]
        }
    )
    assert attribute([use(20)], granted, first.memory, later(1)).violations == []
    other_gpu = attribute([use(20, GPU1)], granted, Memory(frozenset({(20, 200)})), later(1))
    assert [v.kind for v in other_gpu.violations] == ["Unentitled"]
    expired = attribute([use(20)], granted, first.memory, later(61))
    assert [v.kind for v in expired.violations] == ["Unentitled"]


def test_a_restarted_pid_is_a_new_process() -> None:
    seen = Memory(frozenset({(20, 999)}))  # same pid, different start time
    assert attribute([use(20)], view(), seen, later(1)).workloads == []


def test_unknown_uid_is_unattributed_and_system_tools_are_ignored() -> None:
    memory = Memory(frozenset({(30, 300), (31, 310)}))
    result = attribute(
        [use(30, uid=4242), use(31, uid=0, comm="nvidia-smi")], view(), memory, later(0)
    )
    assert [(w.owner, w.owner_source) for w in result.workloads] == [(None, "Unknown")]
    assert [v.kind for v in result.violations] == ["Unattributed"]


def test_someone_elses_reservation_is_unentitled_even_with_an_allocation() -> None:
    spec = {
        "reservations": [
            {
                "deviceUUID": GPU1,
                "user": "bob@lab.example",
                "until": later(60).isoformat(),
                "source": {"kind": "GPUGrant", "name": "b", "namespace": "u-bob"},
            }
        ]
    }
    containers = {CID: ContainerView(CID, "c", frozenset({MIG1}), owner="alice@lab.example")}
    result = attribute(
        [use(10, MIG1, container_id=CID)], view(spec, containers=containers), Memory(), later(0)
    )
    assert [v.kind for v in result.violations] == ["Unentitled"]
    assert "reserved for bob@lab.example" in result.violations[0].message


def test_violations_keep_their_first_sighting() -> None:
    bare = view(containers={CID: ContainerView(CID, "x", frozenset())})
    first = attribute([use(10, container_id=CID)], bare, Memory(), later(0))
    again = attribute([use(10, container_id=CID)], bare, first.memory, later(5))
    assert again.violations[0].since == later(0) and again.workloads[0].started_at == later(0)
    gone = attribute([], bare, again.memory, later(6))
    assert gone.memory.first_seen == {}


def test_a_user_process_named_like_a_system_tool_is_still_the_user_s() -> None:
    """A process's name is whatever it sets: a user's `nvidia-smi` hides nothing."""
    memory = Memory()
    for comm in ("python", "nvidia-smi", "nvidia-persistenced"):
        first = attribute([use(10, uid=1000, comm=comm)], view(), memory, later(0))
        second = attribute([use(10, uid=1000, comm=comm)], view(), first.memory, later(10))
        assert [w.owner for w in second.workloads] == ["alice@lab.example"], comm
        assert [v.kind for v in second.violations] == ["Unentitled"], comm
    for uid in (0, 110):  # root, and a system account (the persistence daemon's own)
        daemon = attribute(
            [use(11, uid=uid, comm="nvidia-persistenced")], view(), Memory(), later(0)
        )
        again = attribute(
            [use(11, uid=uid, comm="nvidia-persistenced")], view(), daemon.memory, later(10)
        )
        assert again.workloads == [] and again.violations == []
