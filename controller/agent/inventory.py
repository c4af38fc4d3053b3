"""What a node has: GPUs, MIG slices, device nodes, topology. Plain values, no I/O.

The NVML layer (`controller.agent.nvml`) produces these; the device plugin,
workload attribution, kernel enforcement and the GPUNode status consume them.
Keeping them plain (frozen dataclasses) is what lets the transport (gRPC) be
separate from inventory and health, as the NVIDIA device plugin separates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.api import names


def mig_resource(profile: str) -> str:
    """The extended resource name of a MIG profile."""
    return f"{names.MIG_RESOURCE_PREFIX}{profile}"


@dataclass(frozen=True)
class DeviceNode:
    """A character device: where it is and its numbers (for cgroup rules and Allocate)."""

    path: str
    """Path as seen on the host, e.g. `/dev/nvidia3` (under the configured device root)."""
    major: int
    minor: int


@dataclass(frozen=True)
class MigSlice:
    """One MIG instance (GPU instance + compute instance) of a GPU."""

    uuid: str
    profile: str
    slices: int
    placement_start: int
    gpu_instance_id: int
    compute_instance_id: int
    capabilities: tuple[DeviceNode, ...] = ()
    """The `nvidia-caps` devices that grant access to this instance (GI and CI access)."""
    healthy: bool = True


@dataclass(frozen=True)
class Gpu:
    """One physical GPU."""

    index: int
    uuid: str
    name: str
    memory_mib: int
    device: DeviceNode
    pci_bus_id: str | None = None
    mig_enabled: bool = False
    mig_total_slices: int | None = None
    mig: tuple[MigSlice, ...] = ()
    nvlink_peers: frozenset[int] = frozenset()
    """Indexes of GPUs connected to this one by NVLink (cached at start)."""
    healthy: bool = True
    health_reason: str | None = None


@dataclass(frozen=True)
class Inventory:
    """Everything NVML and /proc/devices told us about the node's GPUs."""

    gpus: tuple[Gpu, ...]
    driver_version: str | None = None
    control: tuple[DeviceNode, ...] = ()
    """Devices every GPU user needs: `nvidiactl`, `nvidia-uvm`, `nvidia-uvm-tools`."""
    caps_major: int | None = None
    """Major number of `nvidia-caps` (MIG capability devices), when present."""

    def slots(self) -> list[Slot]:
        """Allocatable units: whole GPUs not in MIG mode, and MIG slices."""
        out: list[Slot] = []
        for gpu in self.gpus:
            if gpu.mig_enabled:
                for mig in gpu.mig:
                    out.append(
                        Slot(
                            uuid=mig.uuid,
                            resource=mig_resource(mig.profile),
                            gpu=gpu,
                            devices=(gpu.device, *mig.capabilities),
                            healthy=gpu.healthy and mig.healthy,
                            mig=mig,
                        )
                    )
            else:
                out.append(
                    Slot(
                        uuid=gpu.uuid,
                        resource=names.GPU_RESOURCE,
                        gpu=gpu,
                        devices=(gpu.device,),
                        healthy=gpu.healthy,
                    )
                )
        return out


@dataclass(frozen=True)
class Slot:
    """A unit the device plugin advertises and a workload is allocated: by UUID, never index."""

    uuid: str
    resource: str
    gpu: Gpu
    devices: tuple[DeviceNode, ...]
    """Device nodes a container needs for this slot (besides the control devices)."""
    healthy: bool = True
    mig: MigSlice | None = field(default=None)


@dataclass(frozen=True)
class GpuProcess:
    """A process NVML reports on a device."""

    pid: int
    device_uuid: str
    """The GPU's UUID, or the MIG slice's UUID when NVML attributes it to one."""
    used_memory_mib: int | None = None


@dataclass(frozen=True)
class XidEvent:
    """An XID error NVML reported for a device."""

    device_uuid: str
    xid: int


@dataclass(frozen=True)
class Sample:
    """One scan's live readings."""

    utilization: dict[str, int | None]
    """GPU UUID -> utilisation percent; None where NVML reports none (MIG mode)."""
    memory_used_mib: dict[str, int]
    processes: tuple[GpuProcess, ...]
    lost: frozenset[str] = frozenset()
    """UUIDs of GPUs that stopped answering (fell off the bus): unhealthy, not a crash."""
