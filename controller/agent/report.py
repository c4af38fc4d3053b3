"""The GPUNode status an agent publishes: inventory, health, use, workloads, violations.

Built from plain values (the inventory, one scan's sample, the attribution),
so what is reported is decided in one place and tested without a cluster.
Lists are bounded by the CRD; what does not fit is counted, not dropped silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from controller import __version__
from controller.agent.inventory import Gpu, Inventory, MigSlice, Sample
from controller.api.base import Condition
from controller.api.node import (
    AgentInfo,
    DeviceNumbers,
    EnforcementMode,
    GPUDevice,
    GPUNodeStatus,
    MIGInstance,
    Violation,
    WorkloadReport,
)
from controller.policy.conditions import Want, merge

MAX_WORKLOADS = 1024
MAX_VIOLATIONS = 1024


@dataclass(frozen=True)
class Health:
    """How the agent itself is doing, for its conditions."""

    inventory_ok: bool = True
    inventory_message: str = "NVML answered"
    policy_message: str = (
        "attributing GPU use against the GPUNode spec; kernel enforcement is not in this "
        "version yet, so the node reports only (Audit)"
    )


def devices(inventory: Inventory, sample: Sample | None) -> list[GPUDevice]:
    """The inventory as GPUNode status devices, with this scan's readings.

    NVML's answers are taken as they come, never trusted to fit the schema: a reading
    out of range (utilisation over 100, negative memory) is dropped, a MIG slice that
    cannot be described is left out and its GPU reported Unhealthy (it cannot be
    allocated correctly), and a GPU that cannot even be named (UUID, index, device
    numbers, or a UUID another GPU already has) is left out; `status` says so. The
    other GPUs are reported as usual.
    """
    return _reportable(inventory, sample)[0]


def _reportable(inventory: Inventory, sample: Sample | None) -> tuple[list[GPUDevice], list[int]]:
    """The devices to report, and the NVML indexes of the GPUs left out."""
    out: list[GPUDevice] = []
    left_out: list[int] = []
    for gpu in inventory.gpus:
        try:
            device = _device(gpu, sample)
        except ValidationError:
            left_out.append(gpu.index)
            continue
        if any(d.uuid == device.uuid for d in out):
            left_out.append(gpu.index)
            continue
        out.append(device)
    return out, left_out


def _in_range(value: int | None, low: int, high: int | None = None) -> int | None:
    if not isinstance(value, int) or value < low or (high is not None and value > high):
        return None
    return value


def _slice(mig: MigSlice, gpu_ok: bool) -> MIGInstance | None:
    try:
        return MIGInstance(
            uuid=mig.uuid,
            profile=mig.profile,
            slices=mig.slices,
            placement_start=mig.placement_start,
            gpu_instance_id=mig.gpu_instance_id,
            compute_instance_id=mig.compute_instance_id,
            capability_device=DeviceNumbers(
                major=mig.capabilities[0].major, minor=mig.capabilities[0].minor
            )
            if mig.capabilities
            else None,
            health="Healthy" if mig.healthy and gpu_ok else "Unhealthy",
        )
    except ValidationError:
        return None


def _device(gpu: Gpu, sample: Sample | None) -> GPUDevice:
    lost = sample is not None and gpu.uuid in sample.lost
    ok = gpu.healthy and not lost
    instances = [_slice(m, ok) for m in gpu.mig]
    readable = [m for m in instances if m is not None][:8]
    unreadable = len(gpu.mig) - len(readable)
    reason = "fell off the bus: NVML lost the GPU" if lost else gpu.health_reason
    if unreadable:
        ok = False
        reason = f"NVML reported {unreadable} MIG slice(s) that cannot be described"
    peers = sorted(p for p in gpu.nvlink_peers if _in_range(p, 0, 63) is not None)
    return GPUDevice(
        uuid=gpu.uuid,
        index=gpu.index,
        model=gpu.name[:256],
        memory_mib=gpu.memory_mib,
        device=DeviceNumbers(major=gpu.device.major, minor=gpu.device.minor),
        pci_bus_id=gpu.pci_bus_id if gpu.pci_bus_id and len(gpu.pci_bus_id) <= 32 else None,
        mig_enabled=gpu.mig_enabled,
        mig_total_slices=_in_range(gpu.mig_total_slices, 0, 8),
        mig_instances=readable or None,
        health="Healthy" if ok else "Unhealthy",
        health_reason=reason[:256] if reason else None,
        utilization_percent=_in_range(sample.utilization.get(gpu.uuid), 0, 100) if sample else None,
        memory_used_mib=_in_range(sample.memory_used_mib.get(gpu.uuid), 0) if sample else None,
        nvlink_peers=peers[:63] or None,
    )


def status(
    *,
    inventory: Inventory,
    sample: Sample | None,
    workloads: Sequence[WorkloadReport],
    violations: Sequence[Violation],
    mode: EnforcementMode,
    applied_generation: int | None,
    observed_generation: int | None = None,
    previous: GPUNodeStatus | None,
    health: Health,
    cgroup_version: str | None,
    now: datetime,
) -> GPUNodeStatus:
    """The status to publish. `agent.heartbeatTime` is `now`; compare without it."""
    reported, left_out = _reportable(inventory, sample)
    healthy = sum(
        sum(1 for m in d.mig_instances or () if m.health == "Healthy")
        if d.mig_enabled
        else (d.health == "Healthy")
        for d in reported
    )
    wanted = [
        Want(
            "AgentReady", True, "Scanning", f"agent {__version__} scanning; {health.policy_message}"
        ),
        Want(
            "InventoryCurrent",
            health.inventory_ok and not left_out,
            "NVMLUnreadable"
            if left_out
            else ("NVMLAnswered" if health.inventory_ok else "NVMLUnavailable"),
            f"left out GPU(s) {left_out[:16]}: NVML reported values that cannot be "
            f"described (UUID, index or device numbers); {health.inventory_message}"
            if left_out
            else health.inventory_message,
        ),
    ]
    old_conditions: list[Condition] = list(previous.conditions or ()) if previous else []
    return GPUNodeStatus(
        observed_generation=observed_generation,
        applied_generation=applied_generation,
        enforcement=mode,
        agent=AgentInfo(
            version=__version__,
            heartbeat_time=now,
            driver_version=inventory.driver_version,
            cgroup_version=cgroup_version,
        ),
        conditions=merge(old_conditions, wanted, now, applied_generation),
        gpus=len(inventory.gpus),
        healthy_devices=healthy,
        devices=reported or None,
        workloads=list(workloads[:MAX_WORKLOADS]) or None,
        violations=list(violations[:MAX_VIOLATIONS]) or None,
        workload_count=len(workloads),
        violation_count=len(violations),
    )


def without_heartbeat(report: GPUNodeStatus) -> GPUNodeStatus:
    """The status with its clock-driven parts removed, to decide whether it changed."""
    agent = (
        report.agent.model_copy(update={"heartbeat_time": datetime.min}) if report.agent else None
    )
    return report.model_copy(update={"agent": agent})
