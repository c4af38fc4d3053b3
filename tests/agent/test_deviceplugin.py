"""The device plugin against a simulated kubelet: real gRPC over real unix sockets.

The test plays the kubelet: `SimulatedKubelet` serves Registration on a
temporary `kubelet.sock` and, like kubelet, dials each plugin back and keeps a
ListAndWatch stream; the tests drive every DevicePlugin call through the
generated stubs on the plugin's own socket.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from controller.agent.deviceplugin import codegen
from controller.agent.deviceplugin.allocate import host_path
from controller.agent.deviceplugin.manager import DevicePluginManager
from controller.agent.deviceplugin.preferred import preferred
from controller.agent.deviceplugin.proto import deviceplugin_v1beta1_pb2 as pb
from controller.agent.deviceplugin.proto import deviceplugin_v1beta1_pb2_grpc as pb_grpc
from controller.agent.deviceplugin.server import socket_name, unix_channel
from controller.agent.deviceplugin.simkubelet import SimulatedKubelet
from controller.agent.inventory import (
    DeviceNode,
    Gpu,
    Inventory,
    MigSlice,
    mig_resource,
)
from controller.api.names import GPU_RESOURCE
from controller.devcluster.process import wait_until

MIG_1G = mig_resource("1g.10gb")
MIG_3G = mig_resource("3g.40gb")
CONTROL = (
    DeviceNode("/dev/nvidiactl", 195, 255),
    DeviceNode("/dev/nvidia-uvm", 510, 0),
    DeviceNode("/dev/nvidia-uvm-tools", 510, 1),
)
CONTROL_PATHS = ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]


def cap(minor: int) -> DeviceNode:
    return DeviceNode(f"/dev/nvidia-caps/nvidia-cap{minor}", 237, minor)


def gpu(index: int, peers: Iterable[int] = (), **kw: Any) -> Gpu:
    return Gpu(
        index=index,
        uuid=f"GPU-{index:08d}-0000-0000-0000-000000000000",
        name="NVIDIA A100-SXM4-80GB",
        memory_mib=81920,
        device=DeviceNode(f"/dev/nvidia{index}", 195, index),
        pci_bus_id=f"0000:{0x10 + index:02x}:00.0",
        nvlink_peers=frozenset(peers),
        **kw,
    )


def mig(n: int, profile: str, start: int, caps: tuple[int, int]) -> MigSlice:
    return MigSlice(
        uuid=f"MIG-{n:08d}-0000-0000-0000-000000000000",
        profile=profile,
        slices=1 if profile.startswith("1g") else 3,
        placement_start=start,
        gpu_instance_id=n,
        compute_instance_id=0,
        capabilities=(cap(caps[0]), cap(caps[1])),
    )


MIG_A = mig(1, "1g.10gb", 0, (12, 13))
MIG_B = mig(2, "1g.10gb", 1, (21, 22))
MIG_C = mig(3, "3g.40gb", 4, (30, 31))


def node_inventory() -> Inventory:
    """GPUs 0 and 1 have no NVLink; 2 and 3 are NVLink peers; GPU 4 is in MIG mode."""
    return Inventory(
        gpus=(
            gpu(0),
            gpu(1),
            gpu(2, {3}),
            gpu(3, {2}),
            gpu(4, mig_enabled=True, mig_total_slices=7, mig=(MIG_A, MIG_B, MIG_C)),
        ),
        driver_version="580.82.07",
        control=CONTROL,
    )


INV = node_inventory()
UUID = [g.uuid for g in INV.gpus]


@pytest.fixture
def plugin_dir() -> Iterator[Path]:
    # Short path: a unix socket path must fit in 108 bytes.
    path = Path(tempfile.mkdtemp(prefix="dp-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def kubelet(plugin_dir: Path) -> Iterator[SimulatedKubelet]:
    sim = SimulatedKubelet(plugin_dir)
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def manager(plugin_dir: Path, kubelet: SimulatedKubelet) -> Iterator[DevicePluginManager]:
    plugins = DevicePluginManager(INV, plugin_dir, check_interval_s=0.05)
    plugins.start()
    yield plugins
    plugins.stop()


@pytest.fixture
def stub(plugin_dir: Path) -> Iterator[Callable[[str], pb_grpc.DevicePluginStub]]:
    channels: list[grpc.Channel] = []

    def connect(resource: str) -> pb_grpc.DevicePluginStub:
        channel = unix_channel(plugin_dir / socket_name(resource))
        channels.append(channel)
        return pb_grpc.DevicePluginStub(channel)

    yield connect
    for channel in channels:
        channel.close()


def healthy(*uuids: str) -> list[tuple[str, str]]:
    return [(u, "Healthy") for u in uuids]


def test_generated_modules_match_the_protos() -> None:
    assert codegen.drift() == [], "run `python -m controller.agent.deviceplugin.codegen`"


def test_method_paths_are_kubelets() -> None:
    services = pb.DESCRIPTOR.services_by_name
    assert services["Registration"].full_name == "v1beta1.Registration"
    assert sorted(m.name for m in services["DevicePlugin"].methods) == [
        "Allocate",
        "GetDevicePluginOptions",
        "GetPreferredAllocation",
        "ListAndWatch",
        "PreStartContainer",
    ]
    assert services["DevicePlugin"].full_name == "v1beta1.DevicePlugin"
    generated = Path(pb_grpc.__file__).read_text()
    for path in ["/v1beta1.Registration/Register", "/v1beta1.DevicePlugin/ListAndWatch"]:
        assert f"'{path}'" in generated


def test_each_resource_serves_then_registers(
    manager: DevicePluginManager, kubelet: SimulatedKubelet
) -> None:
    resources = [GPU_RESOURCE, MIG_1G, MIG_3G]
    wait_until(lambda: all(kubelet.registered(r) == 1 for r in resources), 10, "3 registrations")
    by_resource = {r.resource_name: r for r in kubelet.registrations}
    assert sorted(by_resource) == sorted(resources)
    reg = by_resource[MIG_1G]
    assert (reg.version, reg.endpoint) == ("v1beta1", "ds01-mig-1g.10gb.sock")
    assert reg.get_preferred_allocation_available and not reg.pre_start_required
    # kubelet dialled each endpoint back after Register: the plugin was serving by then.
    wait_until(lambda: kubelet.latest(MIG_1G) is not None, 10, "kubelet's first MIG list")
    assert kubelet.latest(MIG_1G) == healthy(MIG_A.uuid, MIG_B.uuid)
    assert all(s.registered and s.last_error is None for s in manager.status())


def test_options_initial_list_and_prestart(
    manager: DevicePluginManager, stub: Callable[[str], pb_grpc.DevicePluginStub]
) -> None:
    gpus = stub(GPU_RESOURCE)
    options = gpus.GetDevicePluginOptions(pb.Empty(), timeout=5)
    assert options.get_preferred_allocation_available and not options.pre_start_required
    stream = gpus.ListAndWatch(pb.Empty(), timeout=30)
    first = next(stream)
    stream.cancel()
    assert [(d.ID, d.health) for d in first.devices] == healthy(*UUID[:4])
    assert not first.devices[0].HasField("topology")
    assert (
        stub(MIG_3G).PreStartContainer(
            pb.PreStartContainerRequest(devices_ids=[MIG_C.uuid]), timeout=5
        )
        == pb.PreStartContainerResponse()
    )


def test_health_flip_and_recovery_are_streamed(
    manager: DevicePluginManager,
    kubelet: SimulatedKubelet,
    stub: Callable[[str], pb_grpc.DevicePluginStub],
) -> None:
    stream = stub(GPU_RESOURCE).ListAndWatch(pb.Empty(), timeout=30)
    mig_stream = stub(MIG_1G).ListAndWatch(pb.Empty(), timeout=30)
    next(stream), next(mig_stream)

    assert manager.set_health(UUID[1], False, "XID 79")
    down = next(stream)
    assert [(d.ID, d.health) for d in down.devices][1] == (UUID[1], "Unhealthy")
    assert [d.health for d in down.devices].count("Unhealthy") == 1

    assert manager.set_health(UUID[1], True)
    assert all(d.health == "Healthy" for d in next(stream).devices)

    # A MIG-mode GPU's failure takes its slices down; an inventory update brings them back.
    assert manager.set_health(UUID[4], False, "fell off the bus")
    assert {d.health for d in next(mig_stream).devices} == {"Unhealthy"}
    down_list = [(MIG_A.uuid, "Unhealthy"), (MIG_B.uuid, "Unhealthy")]
    wait_until(lambda: kubelet.latest(MIG_1G) == down_list, 10, "kubelet sees the failure")
    manager.update(node_inventory())
    assert {d.health for d in next(mig_stream).devices} == {"Healthy"}
    wait_until(
        lambda: kubelet.latest(MIG_1G) == healthy(MIG_A.uuid, MIG_B.uuid),
        10,
        "kubelet sees recovery",
    )
    stream.cancel()
    mig_stream.cancel()
    assert manager.set_health("GPU-not-here", False) is False


def test_preferred_allocation_prefers_the_nvlink_pair(
    manager: DevicePluginManager, stub: Callable[[str], pb_grpc.DevicePluginStub]
) -> None:
    def ask(available: list[str], must: list[str], size: int) -> list[str]:
        request = pb.ContainerPreferredAllocationRequest(
            available_deviceIDs=available, must_include_deviceIDs=must, allocation_size=size
        )
        response = stub(GPU_RESOURCE).GetPreferredAllocation(
            pb.PreferredAllocationRequest(container_requests=[request]), timeout=5
        )
        return list(response.container_responses[0].deviceIDs)

    everything = UUID[:4]
    assert ask(everything, [], 2) == [UUID[2], UUID[3]]  # not the lower-indexed 0 and 1
    assert ask(everything, [UUID[3]], 2) == [UUID[3], UUID[2]]
    assert ask(everything, [], 1) == [UUID[0]]  # a 1-GPU job leaves the NVLink pair whole
    assert ask([UUID[0], UUID[1], UUID[2]], [], 2) == [UUID[0], UUID[1]]


def test_preferred_allocation_on_two_nvlink_quads() -> None:
    quads = Inventory(
        gpus=tuple(gpu(i, {j for j in range(8) if j // 4 == i // 4 and j != i}) for i in range(8))
    )
    slots = {s.uuid: s for s in quads.slots()}
    ids = list(slots)
    assert preferred(slots, ids, [], 4) == ids[:4]
    assert preferred(slots, ids, [ids[5]], 4) == [ids[5], ids[4], ids[6], ids[7]]
    assert preferred(slots, ids[1:], [], 3) == ids[1:4]  # the partial quad, not the whole one
    assert preferred(slots, [*ids[:2], "GPU-stale"], [], 3) == [*ids[:2], "GPU-stale"]


def test_allocate_whole_gpu(
    manager: DevicePluginManager, stub: Callable[[str], pb_grpc.DevicePluginStub]
) -> None:
    request = pb.AllocateRequest(
        container_requests=[
            pb.ContainerAllocateRequest(devices_ids=[UUID[2]]),
            pb.ContainerAllocateRequest(devices_ids=[UUID[0], UUID[3]]),
        ]
    )
    first, second = stub(GPU_RESOURCE).Allocate(request, timeout=5).container_responses
    assert [(d.host_path, d.container_path, d.permissions) for d in first.devices] == [
        (p, p, "rw") for p in ["/dev/nvidia2", *CONTROL_PATHS]
    ]
    assert [c.name for c in first.cdi_devices] == [f"nvidia.com/gpu={UUID[2]}"]
    assert dict(first.envs) == {"NVIDIA_VISIBLE_DEVICES": UUID[2]}
    assert [d.host_path for d in second.devices] == ["/dev/nvidia0", "/dev/nvidia3", *CONTROL_PATHS]
    assert dict(second.envs) == {"NVIDIA_VISIBLE_DEVICES": f"{UUID[0]},{UUID[3]}"}


def test_allocate_mig_slices_with_capability_devices(
    manager: DevicePluginManager, stub: Callable[[str], pb_grpc.DevicePluginStub]
) -> None:
    request = pb.AllocateRequest(
        container_requests=[pb.ContainerAllocateRequest(devices_ids=[MIG_A.uuid, MIG_B.uuid])]
    )
    (response,) = stub(MIG_1G).Allocate(request, timeout=5).container_responses
    assert [d.host_path for d in response.devices] == [
        "/dev/nvidia4",  # once, though both slices live on it
        "/dev/nvidia-caps/nvidia-cap12",
        "/dev/nvidia-caps/nvidia-cap13",
        "/dev/nvidia-caps/nvidia-cap21",
        "/dev/nvidia-caps/nvidia-cap22",
        *CONTROL_PATHS,
    ]
    assert {d.permissions for d in response.devices} == {"rw"}
    assert [c.name for c in response.cdi_devices] == [
        f"nvidia.com/gpu={MIG_A.uuid}",
        f"nvidia.com/gpu={MIG_B.uuid}",
    ]
    assert "/dev/nvidia-caps/nvidia-cap30" not in {d.host_path for d in response.devices}


def test_allocate_refuses_unknown_ids_by_name(
    manager: DevicePluginManager, stub: Callable[[str], pb_grpc.DevicePluginStub]
) -> None:
    # A MIG slice is not a device of the whole-GPU resource either.
    request = pb.AllocateRequest(
        container_requests=[
            pb.ContainerAllocateRequest(devices_ids=[UUID[0], "GPU-bogus", MIG_C.uuid])
        ]
    )
    with pytest.raises(grpc.RpcError) as refused:
        stub(GPU_RESOURCE).Allocate(request, timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "GPU-bogus" in refused.value.details() and MIG_C.uuid in refused.value.details()
    assert UUID[0] not in refused.value.details()


def test_kubelet_restart_is_followed_by_reregistration(
    manager: DevicePluginManager,
    kubelet: SimulatedKubelet,
    plugin_dir: Path,
    stub: Callable[[str], pb_grpc.DevicePluginStub],
) -> None:
    resources = [GPU_RESOURCE, MIG_1G, MIG_3G]
    wait_until(
        lambda: all(kubelet.registered(r) == 1 for r in resources), 10, "first registrations"
    )
    kubelet.restart()  # deletes kubelet.sock and our sockets, serves a new kubelet.sock
    wait_until(lambda: all(kubelet.registered(r) == 2 for r in resources), 10, "re-registrations")
    assert all((plugin_dir / socket_name(r)).exists() for r in resources)
    # kubelet records a Register before the plugin sees its answer: poll the plugin's count.
    wait_until(lambda: [s.registrations for s in manager.status()] == [2, 2, 2], 10, "counted")
    assert all(s.registered and s.serving for s in manager.status())
    request = pb.AllocateRequest(
        container_requests=[pb.ContainerAllocateRequest(devices_ids=[UUID[1]])]
    )
    (response,) = stub(GPU_RESOURCE).Allocate(request, timeout=5).container_responses
    assert response.devices[0].host_path == "/dev/nvidia1"

    # Only our socket removed (kubelet unchanged): served again and registered again.
    (plugin_dir / socket_name(MIG_3G)).unlink()
    wait_until(lambda: kubelet.registered(MIG_3G) == 3, 10, "MIG 3g re-registration")
    assert (plugin_dir / socket_name(MIG_3G)).exists()


def test_late_kubelet_resources_coming_and_going_and_clean_stop(plugin_dir: Path) -> None:
    plugins = DevicePluginManager(INV, plugin_dir, check_interval_s=0.05)
    plugins.start()  # no kubelet yet: serving, not registered, nothing raised
    kubelet = SimulatedKubelet(plugin_dir)
    try:
        assert not any(s.registered for s in plugins.status())
        assert (plugin_dir / socket_name(GPU_RESOURCE)).exists()
        kubelet.start()
        wait_until(
            lambda: all(s.registered for s in plugins.status()),
            10,
            "registration once kubelet is up",
        )

        # GPU 4 reconfigured: the 3g profile goes, a 2g profile appears.
        two_g = replace(MIG_C, uuid="MIG-00000009-0000-0000-0000-000000000000", profile="2g.20gb")
        reconfigured = replace(
            INV, gpus=(*INV.gpus[:4], replace(INV.gpus[4], mig=(MIG_A, MIG_B, two_g)))
        )
        plugins.update(reconfigured)
        wait_until(
            lambda: kubelet.registered(mig_resource("2g.20gb")) == 1, 10, "new profile registered"
        )
        assert not (plugin_dir / socket_name(MIG_3G)).exists()
        assert [s.resource for s in plugins.status()] == [
            GPU_RESOURCE,
            MIG_1G,
            mig_resource("2g.20gb"),
        ]
    finally:
        plugins.stop()
        kubelet_sock_present = kubelet.socket.exists()
        kubelet.stop()
    assert sorted(p.name for p in plugin_dir.iterdir()) == []
    assert kubelet_sock_present  # stop removed only our sockets


def test_host_paths_under_a_device_root_map_back_to_dev() -> None:
    assert host_path(DeviceNode("/host/dev/nvidia3", 195, 3), "/host/dev") == "/dev/nvidia3"
    assert host_path(DeviceNode("/dev/nvidia3", 195, 3), "/host/dev") == "/dev/nvidia3"
    assert host_path(DeviceNode("/dev/nvidia3", 195, 3)) == "/dev/nvidia3"
