"""GPU requests through the gateway: concrete devices within the caller's policy.

`--gpus N` and `--gpus device=...` become device nodes of slots chosen by the
shared pure choice (`controller.policy.gpuchoice`): GPU-equivalents held at
once, devices per container, whole-GPU permission and MIG profiles, the
node's reservations (from grants) and revocations. The chosen UUIDs are
recorded on the container in signed labels. Two callers racing for the last
free GPU never get the same one.

The fake node: 8 GPUs, 0 and 1 in MIG mode; GPUs are openable misc devices,
so a container given one can open it.
"""

from __future__ import annotations

import socket
import threading
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

from controller.agent.inventory import Slot
from controller.agent.trust import verify
from tests.agent.enforcehost import KEY
from tests.agent.gatewayhost import ACCOUNTS, AMY, BEN, CAT, IMAGE, GatewayHost, Reply, request

RUN = ("run", "-d", "--network", "none")
SOURCE = {"kind": "GPUGrant", "name": "grant", "namespace": "u-grants"}


def _slots(gateway: GatewayHost) -> list[Slot]:
    inventory = gateway.agent.inventory
    assert inventory is not None
    return inventory.slots()


def _whole(gateway: GatewayHost) -> list[Slot]:
    return [s for s in _slots(gateway) if s.mig is None]


def _devices(gateway: GatewayHost, container: str) -> tuple[str, ...]:
    data = gateway.inspect(container)
    stamp = verify(KEY, data["Name"].lstrip("/"), data["Config"]["Labels"])
    assert stamp is not None
    return stamp.devices


def _later(hours: float = 1) -> str:
    return (datetime.now(UTC) + timedelta(hours=hours)).isoformat().replace("+00:00", "Z")


def test_gpus_n_gets_a_whole_gpu_it_can_open_recorded_in_signed_labels(
    gateway: GatewayHost,
) -> None:
    container = gateway.ok(AMY, *RUN, "--gpus", "1", IMAGE, "sleep", "600")
    (uuid,) = _devices(gateway, container)
    slot = next(s for s in _slots(gateway) if s.uuid == uuid)
    assert slot.mig is None  # users allowed whole GPUs get whole GPUs first
    data = gateway.inspect(container)
    mapped = {d["PathOnHost"]: d["PathInContainer"] for d in data["HostConfig"]["Devices"]}
    inside = mapped[slot.devices[0].path]
    assert any(path.endswith("nvidiactl") for path in mapped)
    assert f"NVIDIA_VISIBLE_DEVICES={uuid}" in data["Config"]["Env"]
    opened = gateway.ok(AMY, "exec", container, "sh", "-c", f"exec 3<{inside} && echo opened")
    assert opened == "opened"
    (record,) = gateway.audit_records("gpu.allocate")
    assert record["user"] == ACCOUNTS[AMY] and record["details"]["devices"] == [uuid]

    # A container that asks for none gets none, whatever its image says.
    plain = gateway.inspect(gateway.ok(BEN, *RUN, IMAGE, "sleep", "600"))
    assert not plain["HostConfig"]["Devices"]
    assert "NVIDIA_VISIBLE_DEVICES=void" in plain["Config"]["Env"]


def test_the_allowance_and_the_per_container_cap_hold(gateway: GatewayHost) -> None:
    """Built-in defaults: 1 GPU-equivalent at once, 1 device per container."""
    error = gateway.refused(AMY, *RUN, "--gpus", "2", IMAGE, "true")
    assert "--gpus" in error and "at most 1 per container" in error
    first = gateway.ok(AMY, *RUN, "--gpus", "1", IMAGE, "sleep", "600")
    error = gateway.refused(AMY, *RUN, "--gpus", "1", IMAGE, "true")
    assert "you hold 1 of your 1 GPU-equivalents" in error
    # A stopped container keeps its GPU for holdAfterStop (15 minutes by default).
    gateway.ok(AMY, "stop", "-t", "0", first)
    assert "GPU-equivalents" in gateway.refused(AMY, *RUN, "--gpus", "1", IMAGE, "true")
    gateway.ok(AMY, "rm", first)
    second = gateway.ok(AMY, *RUN, "--gpus", "1", IMAGE, "sleep", "600")
    assert len(_devices(gateway, second)) == 1
    rejected = gateway.audit_records("gpu.reject")
    assert len(rejected) == 3 and {r["details"]["option"] for r in rejected} == {"--gpus"}
    assert "--gpus all" in gateway.refused(BEN, *RUN, "--gpus", "all", IMAGE, "true")


def test_a_larger_policy_allows_more_devices_per_container(gateway: GatewayHost) -> None:
    gateway.limits(
        (
            "amy",
            {
                "subjects": [{"kind": "User", "name": ACCOUNTS[AMY]}],
                "gpu": {"maxGPUEquivalents": 3, "maxDevicesPerWorkload": 2},
            },
        )
    )
    container = gateway.ok(AMY, *RUN, "--gpus", "2", IMAGE, "sleep", "600")
    devices = _devices(gateway, container)
    assert len(set(devices)) == 2
    assert all(s.mig is None for s in _slots(gateway) if s.uuid in devices)
    assert "at most 2 per container" in gateway.refused(AMY, *RUN, "--gpus", "3", IMAGE, "true")
    # Two more whole GPUs would make 4 of 3 GPU-equivalents: MIG slices still fit.
    slices = _devices(gateway, gateway.ok(AMY, *RUN, "--gpus", "2", IMAGE, "sleep", "600"))
    assert len(slices) == 2 and set(slices).isdisjoint(devices)
    held = [s for s in _slots(gateway) if s.uuid in slices]
    assert all(s.mig is not None for s in held)
    assert sum(Fraction(s.mig.slices, 7) for s in held if s.mig) <= 1


def test_without_full_gpu_permission_only_allowed_mig_slices_are_given(
    gateway: GatewayHost,
) -> None:
    gateway.limits(
        (
            "amy",
            {
                "subjects": [{"kind": "User", "name": ACCOUNTS[AMY]}],
                "gpu": {"allowFullGPUs": False, "allowedMIGProfiles": ["1g.5gb"]},
            },
        )
    )
    container = gateway.ok(AMY, *RUN, "--gpus", "1", IMAGE, "sleep", "600")
    (uuid,) = _devices(gateway, container)
    slot = next(s for s in _slots(gateway) if s.uuid == uuid)
    assert slot.mig is not None and slot.mig.profile == "1g.5gb"
    host_paths = {d["PathOnHost"] for d in gateway.inspect(container)["HostConfig"]["Devices"]}
    assert {n.path for n in slot.devices} <= host_paths  # the GPU and its MIG capabilities
    whole = _whole(gateway)[0].uuid
    error = gateway.refused(AMY, *RUN, "--gpus", f"device={whole}", IMAGE, "true")
    assert "whole GPUs are not allowed" in error


def test_explicit_devices_are_given_only_when_free_and_allowed(gateway: GatewayHost) -> None:
    whole = _whole(gateway)
    amy = gateway.ok(AMY, *RUN, "--gpus", f"device={whole[3].uuid}", IMAGE, "sleep", "600")
    assert _devices(gateway, amy) == (whole[3].uuid,)
    error = gateway.refused(BEN, *RUN, "--gpus", f"device={whole[3].uuid}", IMAGE, "true")
    assert "in use by another container" in error
    error = gateway.refused(BEN, *RUN, "--gpus", "device=0", IMAGE, "true")
    assert "MIG mode" in error  # GPU 0 is split: name a slice
    error = gateway.refused(BEN, *RUN, "--gpus", "device=GPU-nope", IMAGE, "true")
    assert "no such GPU" in error
    # Index form of a whole GPU names that GPU.
    ben = gateway.ok(BEN, *RUN, "--gpus", f"device={whole[0].gpu.index}", IMAGE, "sleep", "600")
    assert _devices(gateway, ben) == (whole[0].uuid,)


def test_reservations_and_revocations_of_the_node_spec_are_honoured(gateway: GatewayHost) -> None:
    whole = _whole(gateway)
    reserved, revoked = whole[0].uuid, whole[1].uuid
    gateway.policy(
        reservations=[
            {"deviceUUID": reserved, "user": ACCOUNTS[BEN], "until": _later(), "source": SOURCE}
        ],
        revocations=[
            {
                "user": ACCOUNTS[AMY],
                "deviceUUIDs": [revoked],
                "reason": "grant ended",
                "effectiveAt": _later(-0.1),
                "until": _later(),
                "source": SOURCE,
            }
        ],
    )
    error = gateway.refused(AMY, *RUN, "--gpus", f"device={reserved}", IMAGE, "true")
    assert "reserved for someone else" in error
    error = gateway.refused(AMY, *RUN, "--gpus", f"device={revoked}", IMAGE, "true")
    assert "revoked" in error
    amy = gateway.ok(AMY, *RUN, "--gpus", "1", IMAGE, "sleep", "600")
    assert set(_devices(gateway, amy)).isdisjoint({reserved, revoked})

    # Ben's reservation is his first, and on top of his allowance of 1.
    ben = gateway.ok(BEN, *RUN, "--gpus", "1", IMAGE, "sleep", "600")
    assert _devices(gateway, ben) == (reserved,)
    more = gateway.ok(BEN, *RUN, "--gpus", "1", IMAGE, "sleep", "600")
    assert reserved not in _devices(gateway, more)
    given = {r["details"]["container"]: r["details"] for r in gateway.audit_records("gpu.allocate")}
    assert [d["fromReservation"] for d in given.values()] == [[], [reserved], []]


def _gpu_body(name: str) -> dict[str, Any]:
    return {
        "Image": IMAGE,
        "Cmd": ["sleep", "600"],
        "HostConfig": {
            "NetworkMode": "none",
            "DeviceRequests": [{"Driver": "", "Count": 1, "Capabilities": [["gpu"]]}],
        },
        "Labels": {"round": name},
    }


def _race(gateway: GatewayHost, round_: int) -> list[tuple[str, Reply]]:
    """Three creates each from Amy, Ben and Cat, released together; every reply."""
    sockets = [(login, sock) for login in (AMY, BEN, CAT) for sock in gateway.connect(login, 3)]
    replies: list[tuple[str, Reply]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(sockets))

    def create(login: str, sock: socket.socket, index: int) -> None:
        barrier.wait(60)
        with sock:
            reply = request(
                sock,
                "POST",
                f"/v1.41/containers/create?name=last-{round_}-{index}",
                _gpu_body(str(round_)),
            )
        with lock:
            replies.append((login, reply))

    threads = [
        threading.Thread(target=create, args=(login, sock, i))
        for i, (login, sock) in enumerate(sockets)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return replies


def test_two_callers_racing_for_the_last_gpu_never_get_the_same_one(
    gateway: GatewayHost,
) -> None:
    """Every device but one is reserved for someone else; nine creates race for it, three times."""
    slots = _slots(gateway)
    last = _whole(gateway)[-1].uuid
    gateway.policy(
        reservations=[
            {"deviceUUID": s.uuid, "user": "zed@lab.example", "until": _later(), "source": SOURCE}
            for s in slots
            if s.uuid != last
        ]
    )
    for round_ in range(3):
        replies = _race(gateway, round_)
        won = [(login, r) for login, r in replies if r.status == 201]
        lost = [r for _, r in replies if r.status != 201]
        assert len(replies) == 9 and len(won) == 1, [(r.status, r.body[:200]) for _, r in replies]
        assert all(r.status == 409 and "not enough free devices" in r.message for r in lost)
        winner = won[0][1].json()["Id"]
        assert _devices(gateway, winner) == (last,)
        holders = [
            c for c in gateway.containers() if gateway.inspect(c)["Config"]["Labels"].get("round")
        ]
        assert holders == [winner]
        gateway.engine.docker("rm", "-f", winner)


def test_a_stopped_container_keeps_its_gpu_only_for_hold_after_stop(gateway: GatewayHost) -> None:
    gateway.limits(
        (
            "amy",
            {
                "subjects": [{"kind": "User", "name": ACCOUNTS[AMY]}],
                "lifecycle": {"holdAfterStop": "0s"},
            },
        )
    )
    amy = gateway.ok(AMY, *RUN, "--gpus", "1", IMAGE, "sleep", "600")
    (uuid,) = _devices(gateway, amy)
    take = (*RUN, "--gpus", f"device={uuid}", IMAGE, "sleep", "600")
    assert "in use by another container" in gateway.refused(BEN, *take)
    gateway.ok(AMY, "stop", "-t", "0", amy)
    ben = gateway.ok(BEN, *take)  # released at once: Amy's holdAfterStop is 0s
    assert _devices(gateway, ben) == (uuid,)
    error = gateway.refused(AMY, "start", amy)
    assert "were given to another container" in error
    assert not gateway.inspect(amy)["State"]["Running"]
