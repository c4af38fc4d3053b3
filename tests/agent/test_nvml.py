"""The agent's NVML layer against the fake NVML library, through the real pynvml binding.

Each test starts `Nvml` on a fake node (tests/agent/fakehost.py), changes the
topology file at run time where it needs to, and reads what the agent sees.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading
from collections import Counter
from pathlib import Path

import pynvml
import pytest

from controller.agent.inventory import (
    DeviceNode,
    GpuProcess,
    Inventory,
    XidEvent,
    mig_resource,
)
from controller.agent.nvml import Nvml, NvmlUnavailableError, profile_name
from controller.agent.nvml.devnodes import read_majors
from controller.api.names import GPU_RESOURCE
from controller.devcluster.fakegpu import MigSpec, ProcSpec, a100_node, build
from controller.devcluster.fakegpu.devtree import (
    CAPS_MAJOR,
    NVIDIA_MAJOR,
    UVM_MAJOR,
    cap_minor,
)
from controller.devcluster.fakegpu.holdable import (
    HOLDABLE_MISC,
    MINIMUM_GPUS,
    gpu_minors,
    host_char_devices,
)
from controller.devcluster.fakegpu.topology import PROFILES, mig_uuid
from controller.devcluster.process import wait_until
from tests.agent.fakehost import FakeHost

# ---- inventory ----


def test_inventory_of_eight_a100s(fake_host: FakeHost) -> None:
    inventory = fake_host.start().last_inventory()
    tree = fake_host.tree
    assert tree is not None
    specs = fake_host.topology.gpus
    assert [g.uuid for g in inventory.gpus] == [s.uuid for s in specs]
    assert [g.index for g in inventory.gpus] == list(range(8))
    for gpu, spec in zip(inventory.gpus, specs, strict=True):
        assert gpu.name == "NVIDIA A100-SXM4-40GB"
        assert gpu.memory_mib == 40960
        assert gpu.pci_bus_id == spec.bus_id
        assert gpu.device == DeviceNode(str(tree.dev_root / f"nvidia{spec.minor}"), 195, spec.minor)
        # The reported numbers are those of the node at the reported path.
        st = os.stat(gpu.device.path)
        assert stat.S_ISCHR(st.st_mode)
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (gpu.device.major, gpu.device.minor)
        assert gpu.healthy and gpu.health_reason is None
    assert inventory.driver_version == "550.54.15"
    assert inventory.control == (
        DeviceNode(str(tree.dev_root / "nvidiactl"), NVIDIA_MAJOR, 255),
        DeviceNode(str(tree.dev_root / "nvidia-uvm"), UVM_MAJOR, 0),
        DeviceNode(str(tree.dev_root / "nvidia-uvm-tools"), UVM_MAJOR, 1),
    )
    assert inventory.caps_major == CAPS_MAJOR


def test_nvidia_major_nodes_open_with_enxio(fake_host: FakeHost) -> None:
    """No driver is behind major 195: the answer that tells "allowed" from EPERM "denied"."""
    gpu = fake_host.start().last_inventory().gpus[2]
    with pytest.raises(OSError) as raised:
        os.open(gpu.device.path, os.O_RDWR)
    assert raised.value.errno == errno.ENXIO


def test_misc_mode_maps_gpus_onto_devices_this_host_has_and_can_hold(fake_host: FakeHost) -> None:
    """The minors are chosen from this kernel's own misc devices, so every one can be held."""
    fake_host.topology = a100_node(minors=gpu_minors())
    inventory = fake_host.start(misc=True).last_inventory()
    assert [g.device.minor for g in inventory.gpus] == list(gpu_minors())
    assert len(inventory.gpus) >= MINIMUM_GPUS
    assert {g.device.major for g in inventory.gpus} == {10}  # from the fake /proc/devices
    registered = {(d.major, d.minor): d.name for d in host_char_devices()}
    assert all(registered.get((10, g.device.minor)) in HOLDABLE_MISC for g in inventory.gpus)
    held = [os.open(g.device.path, os.O_RDWR | os.O_NOCTTY) for g in inventory.gpus]
    try:
        for fd, gpu in zip(held, inventory.gpus, strict=True):
            assert os.minor(os.fstat(fd).st_rdev) == gpu.device.minor
    finally:
        for fd in held:
            os.close(fd)


def test_mig_layout(fake_host: FakeHost) -> None:
    inventory = fake_host.start().last_inventory()
    tree = fake_host.tree
    assert tree is not None
    gpu0, gpu1 = inventory.gpus[0], inventory.gpus[1]
    assert gpu0.mig_enabled and gpu1.mig_enabled
    assert gpu0.mig_total_slices == 7
    layout = [
        (m.profile, m.placement_start, m.gpu_instance_id, m.compute_instance_id, m.slices)
        for m in gpu0.mig
    ]
    assert layout == [("3g.20gb", 4, 1, 0, 3), ("2g.10gb", 0, 2, 0, 2), ("1g.10gb", 2, 3, 0, 1)]
    assert [m.profile for m in gpu1.mig] == ["2g.10gb", "2g.10gb", "1g.5gb", "1g.5gb", "1g.5gb"]
    assert [m.placement_start for m in gpu1.mig] == [0, 2, 4, 5, 6]
    assert gpu0.mig[1].uuid == mig_uuid(0, 2, 0)
    caps = tree.dev_root / "nvidia-caps"
    gi, ci = cap_minor(0, 2), cap_minor(0, 2, 0)
    assert gpu0.mig[1].capabilities == (
        DeviceNode(str(caps / f"nvidia-cap{gi}"), CAPS_MAJOR, gi),
        DeviceNode(str(caps / f"nvidia-cap{ci}"), CAPS_MAJOR, ci),
    )
    for node in gpu0.mig[1].capabilities:
        assert os.major(os.stat(node.path).st_rdev) == CAPS_MAJOR
    assert all(not g.mig_enabled and g.mig == () for g in inventory.gpus[2:])


def test_slots_advertise_whole_gpus_and_mig_profiles(fake_host: FakeHost) -> None:
    slots = fake_host.start().last_inventory().slots()
    assert Counter(s.resource for s in slots) == {
        GPU_RESOURCE: 6,
        mig_resource("2g.10gb"): 3,
        mig_resource("1g.5gb"): 3,
        mig_resource("3g.20gb"): 1,
        mig_resource("1g.10gb"): 1,
    }
    mig_slot = next(s for s in slots if s.resource == mig_resource("3g.20gb"))
    assert mig_slot.mig is not None
    assert mig_slot.devices == (mig_slot.gpu.device, *mig_slot.mig.capabilities)
    assert len(mig_slot.devices) == 3


@pytest.mark.parametrize("gpu_name", sorted(PROFILES))
def test_profile_names_follow_nvidia_naming(gpu_name: str) -> None:
    gpu_memory = 40960 if "40GB" in gpu_name else 81920
    for name, profile in PROFILES[gpu_name].items():
        assert profile_name(profile.slices, profile.slices, profile.memory_mib, gpu_memory) == name
    assert profile_name(3, 1, 20096, 40960) == "1c.3g.20gb"


def test_mig_reconfiguration_is_seen_by_refresh(fake_host: FakeHost) -> None:
    nvml = fake_host.start()
    gpu1 = fake_host.topology.gpu(1)
    gpu1.mig = [MigSpec("7g.40gb", 0, gi=1)]
    gpu2 = fake_host.topology.gpu(2)
    gpu2.mig_enabled = True
    gpu2.mig = [MigSpec("4g.20gb", 0, gi=1), MigSpec("3g.20gb", 4, gi=2)]
    fake_host.write()
    inventory = nvml.inventory()
    assert [m.profile for m in inventory.gpus[1].mig] == ["7g.40gb"]
    assert [m.profile for m in inventory.gpus[2].mig] == ["4g.20gb", "3g.20gb"]
    assert inventory.gpus[2].mig_enabled


# ---- NVLink ----


def test_nvlink_through_nvswitch_joins_every_gpu(fake_host: FakeHost) -> None:
    inventory = fake_host.start().last_inventory()
    for gpu in inventory.gpus:
        assert gpu.nvlink_peers == frozenset(range(8)) - {gpu.index}


def test_nvlink_pairs_are_read_once_and_cached(fake_host: FakeHost) -> None:
    fake_host.topology = a100_node(count=4, mig={}, nvlink=[(0, 1), (2, 3)])
    nvml = fake_host.start()
    assert [g.nvlink_peers for g in nvml.last_inventory().gpus] == [{1}, {0}, {3}, {2}]
    # Links do not change while the driver is loaded: later scans must not ask again.
    fake_host.topology = a100_node(count=4, mig={}, nvlink=[(0, 2), (1, 3)])
    fake_host.write()
    assert [g.nvlink_peers for g in nvml.inventory().gpus] == [{1}, {0}, {3}, {2}]


def test_gpus_without_nvlink_have_no_peers(fake_host: FakeHost) -> None:
    fake_host.topology = a100_node(count=2, mig={}, nvlink="none")
    assert [g.nvlink_peers for g in fake_host.start().last_inventory().gpus] == [set(), set()]


# ---- samples ----


def test_utilisation_is_none_for_mig_gpus(fake_host: FakeHost) -> None:
    for spec in fake_host.topology.gpus:
        spec.util = 10 * spec.index + 5
    nvml = fake_host.start()
    uuids = [g.uuid for g in nvml.last_inventory().gpus]
    sample = nvml.sample()
    assert sample.utilization[uuids[0]] is None
    assert sample.utilization[uuids[1]] is None
    assert [sample.utilization[u] for u in uuids[2:]] == [25, 35, 45, 55, 65, 75]
    # That None is NVML's own answer, for the GPU and for each MIG device.
    mig_handle = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(pynvml.nvmlDeviceGetHandleByIndex(0), 0)
    for handle in (pynvml.nvmlDeviceGetHandleByIndex(0), mig_handle):
        with pytest.raises(pynvml.NVMLError_NotSupported):
            pynvml.nvmlDeviceGetUtilizationRates(handle)


def test_utilisation_memory_and_processes_change_at_run_time(fake_host: FakeHost) -> None:
    nvml = fake_host.start()
    inventory = nvml.last_inventory()
    first = nvml.sample()
    assert first.processes == ()
    assert first.utilization[inventory.gpus[3].uuid] == 0

    topology = fake_host.topology
    topology.gpu(3).util = 87
    topology.gpu(3).used_mib = 2048
    topology.gpu(0).mig[1].used_mib = 300
    topology.processes = [
        ProcSpec(pid=4242, gpu=3, used_mib=1024),
        ProcSpec(pid=4243, gpu=0, gi=2, ci=0, used_mib=512),
        ProcSpec(pid=4244, gpu=5, used_mib=None),
    ]
    fake_host.write()
    second = nvml.sample()
    mig = inventory.gpus[0].mig[1]
    assert second.utilization[inventory.gpus[3].uuid] == 87
    assert second.memory_used_mib[inventory.gpus[3].uuid] == 2048
    assert second.memory_used_mib[mig.uuid] == 300
    assert set(second.processes) == {
        GpuProcess(4242, inventory.gpus[3].uuid, 1024),
        GpuProcess(4243, mig.uuid, 512),  # attributed to its MIG slice, not the GPU
        GpuProcess(4244, inventory.gpus[5].uuid, None),
    }

    topology.processes = []
    fake_host.write()
    assert nvml.sample().processes == ()


# ---- XIDs and health ----


def _gpu(inventory: Inventory, index: int) -> tuple[str, bool, str | None]:
    gpu = inventory.gpus[index]
    return gpu.uuid, gpu.healthy, gpu.health_reason


def test_critical_xid_marks_the_gpu_unhealthy(fake_host: FakeHost) -> None:
    nvml = fake_host.start()
    uuid = nvml.last_inventory().gpus[3].uuid
    fake_host.topology.add_xid(gpu=3, xid=79)
    fake_host.write()
    assert nvml.poll_xids() == [XidEvent(uuid, 79)]
    inventory = nvml.last_inventory()
    assert _gpu(inventory, 3) == (uuid, False, "XID 79")
    assert [g.healthy for g in inventory.gpus] == [i != 3 for i in range(8)]
    assert not next(s for s in inventory.slots() if s.uuid == uuid).healthy
    assert nvml.poll_xids() == []  # delivered once


def test_application_xid_leaves_the_gpu_healthy(fake_host: FakeHost) -> None:
    nvml = fake_host.start()
    uuid = nvml.last_inventory().gpus[4].uuid
    fake_host.topology.add_xid(gpu=4, xid=13)
    fake_host.write()
    assert nvml.poll_xids() == [XidEvent(uuid, 13)]
    assert _gpu(nvml.last_inventory(), 4) == (uuid, True, None)
    assert nvml.unhealthy() == {}


def test_xid_naming_a_gpu_instance_marks_only_that_mig_slice(fake_host: FakeHost) -> None:
    nvml = fake_host.start()
    fake_host.topology.add_xid(gpu=1, xid=94, gi=2, ci=0)
    fake_host.write()
    target = mig_uuid(1, 2, 0)
    assert nvml.poll_xids() == [XidEvent(target, 94)]
    gpu1 = nvml.last_inventory().gpus[1]
    assert gpu1.healthy
    assert [m.healthy for m in gpu1.mig] == [m.uuid != target for m in gpu1.mig]
    unhealthy_slots = [s.uuid for s in nvml.last_inventory().slots() if not s.healthy]
    assert unhealthy_slots == [target]


def test_xids_from_before_start_are_not_replayed(fake_host: FakeHost) -> None:
    fake_host.topology.add_xid(gpu=2, xid=79)
    nvml = fake_host.start()
    assert nvml.poll_xids() == []
    assert all(g.healthy for g in nvml.last_inventory().gpus)


def test_a_waiting_poll_returns_when_an_xid_arrives(fake_host: FakeHost) -> None:
    """A dedicated thread may wait long in NVML: the event ends the wait, not the timeout,
    and scans meanwhile do not queue behind that wait."""
    nvml = fake_host.start()
    uuid = nvml.last_inventory().gpus[7].uuid
    seen: list[XidEvent] = []
    waiter = threading.Thread(target=lambda: seen.extend(nvml.poll_xids(timeout_ms=60_000)))
    waiter.start()
    wait_until(nvml._wait_lock.locked, 10, "the waiter inside nvmlEventSetWait", 0.001)
    assert len(nvml.scan().inventory.gpus) == 8
    assert waiter.is_alive()  # the scan returned while the waiter still waits
    fake_host.topology.add_xid(gpu=7, xid=79)
    fake_host.write()
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    assert seen == [XidEvent(uuid, 79)]


def test_scan_polls_refreshes_and_samples(fake_host: FakeHost) -> None:
    nvml = fake_host.start()
    fake_host.topology.add_xid(gpu=6, xid=48)
    fake_host.topology.processes = [ProcSpec(pid=77, gpu=6, used_mib=64)]
    fake_host.write()
    scan = nvml.scan()
    uuid = scan.inventory.gpus[6].uuid
    assert scan.xids == (XidEvent(uuid, 48),)
    assert _gpu(scan.inventory, 6) == (uuid, False, "XID 48")
    assert scan.sample.processes == (GpuProcess(77, uuid, 64),)


def test_xid_unhealthy_until_marked_healthy(fake_host: FakeHost) -> None:
    nvml = fake_host.start()
    uuid = nvml.last_inventory().gpus[3].uuid
    fake_host.topology.add_xid(gpu=3, xid=79)
    fake_host.write()
    nvml.scan()
    assert not nvml.scan().inventory.gpus[3].healthy  # sticky across scans by default
    assert nvml.mark_healthy(uuid) is True
    assert _gpu(nvml.scan().inventory, 3) == (uuid, True, None)
    assert nvml.mark_healthy(uuid) is False


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_xid_recovery_rule_after_a_quiet_period(fake_host: FakeHost) -> None:
    clock = _Clock()
    nvml = fake_host.start(xid_recovery_s=600, clock=clock)
    fake_host.topology.add_xid(gpu=2, xid=79)
    fake_host.write()
    nvml.scan()
    clock.now += 599
    assert not nvml.scan().inventory.gpus[2].healthy
    fake_host.topology.add_xid(gpu=2, xid=79)  # a new critical XID restarts the period
    fake_host.write()
    nvml.scan()
    clock.now += 400
    assert not nvml.scan().inventory.gpus[2].healthy
    clock.now += 200
    assert nvml.scan().inventory.gpus[2].healthy


# ---- lost GPUs ----


def test_lost_gpu_is_reported_without_an_exception_and_recovers(fake_host: FakeHost) -> None:
    nvml = fake_host.start()
    uuid = nvml.last_inventory().gpus[5].uuid
    fake_host.topology.gpu(5).lost = True
    fake_host.write()
    scan = nvml.scan()
    assert scan.sample.lost == {uuid}
    gpu_uuid, healthy, reason = _gpu(scan.inventory, 5)
    assert (gpu_uuid, healthy) == (uuid, False)
    assert reason is not None and reason.startswith("lost: GPU is lost")
    assert uuid not in scan.sample.utilization
    assert len(scan.sample.utilization) == 7  # the others still answer

    fake_host.topology.gpu(5).lost = False
    fake_host.write()
    scan = nvml.scan()
    assert scan.sample.lost == frozenset()
    assert _gpu(scan.inventory, 5) == (uuid, True, None)
    assert scan.sample.utilization[uuid] == 0


def test_gpu_lost_between_refresh_and_sample(fake_host: FakeHost) -> None:
    nvml = fake_host.start()
    uuid = nvml.inventory().gpus[0].uuid
    fake_host.topology.gpu(0).lost = True
    fake_host.write()
    sample = nvml.sample()
    assert sample.lost == {uuid}
    assert not any(p.device_uuid == uuid for p in sample.processes)
    assert not nvml.last_inventory().gpus[0].healthy
    # Its MIG slices are unusable with it.
    assert not any(s.healthy for s in nvml.last_inventory().slots() if s.gpu.uuid == uuid)


def test_gpu_lost_before_start_joins_when_it_answers(fake_host: FakeHost) -> None:
    fake_host.topology.gpu(7).lost = True
    nvml = fake_host.start()
    assert [g.index for g in nvml.last_inventory().gpus] == list(range(7))
    fake_host.topology.gpu(7).lost = False
    fake_host.write()
    inventory = nvml.inventory()
    assert [g.index for g in inventory.gpus] == list(range(8))
    assert inventory.gpus[7].nvlink_peers == frozenset(range(7))


def test_failed_event_wait_probes_gpus_instead_of_raising(fake_host: FakeHost) -> None:
    nvml = fake_host.start()
    uuid = nvml.last_inventory().gpus[6].uuid
    fake_host.topology.wait_error = pynvml.NVML_ERROR_GPU_IS_LOST
    fake_host.topology.gpu(6).lost = True
    fake_host.write()
    assert nvml.poll_xids() == []
    assert set(nvml.unhealthy()) == {uuid}


# ---- start and the fake itself ----


def test_start_fails_closed_without_an_nvidia_major(fake_host: FakeHost) -> None:
    tree = fake_host.make_tree()
    (tree.proc_root / "devices").write_text("Character devices:\n  1 mem\n\nBlock devices:\n")
    fake_host.write()
    nvml = Nvml(library=fake_host.library, proc_root=tree.proc_root, dev_root=tree.dev_root)
    with pytest.raises(NvmlUnavailableError, match="no NVIDIA character device"):
        nvml.start()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()  # the failed start shut NVML down again


def test_start_fails_when_the_driver_is_not_loaded(fake_host: FakeHost) -> None:
    tree = fake_host.make_tree()  # the topology file is never written: no "driver"
    nvml = Nvml(library=fake_host.library, proc_root=tree.proc_root, dev_root=tree.dev_root)
    with pytest.raises(NvmlUnavailableError, match="Driver Not Loaded"):
        nvml.start()


def test_proc_devices_accepts_the_older_frontend_name(tmp_path: Path) -> None:
    (tmp_path / "devices").write_text(
        "Character devices:\n195 nvidia-frontend\n236 nvidia-caps\n\nBlock devices:\n237 nvidia-uvm\n"
    )
    majors = read_majors(tmp_path)
    assert (majors.nvidia, majors.caps, majors.uvm) == (195, 236, None)  # block section ignored


def test_fake_structs_match_the_binding(fake_nvml_library: Path) -> None:
    sizes = ctypes.CDLL(str(fake_nvml_library)).fake_nvml_struct_size
    sizes.argtypes, sizes.restype = [ctypes.c_char_p], ctypes.c_long
    for name in (
        "nvmlPciInfo_t",
        "c_nvmlMemory_t",
        "c_nvmlUtilization_t",
        "c_nvmlProcessInfo_v3_t",
        "c_nvmlEventData_t",
        "c_nvmlDeviceAttributes",
        "c_nvmlGpuInstanceInfo_t",
    ):
        assert sizes(name.encode()) == ctypes.sizeof(getattr(pynvml, name)), name


def test_fake_is_rebuilt_only_when_its_source_changes(tmp_path: Path) -> None:
    library = build(tmp_path)
    built = library.stat()
    assert build(tmp_path).stat().st_ino == built.st_ino
    (tmp_path / f"{library.name}.sha256").write_text("stale")
    assert build(tmp_path).stat().st_ino != built.st_ino
