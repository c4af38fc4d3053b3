"""The GPUNode status an agent publishes: inventory, health, use, workloads, violations.

Built from plain values (the inventory, one scan's sample, the attribution),
so what is reported is decided in one place and tested without a cluster.
Lists are bounded by the CRD; what does not fit is counted, not dropped silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from controller import __version__
from controller.agent.inventory import Inventory, Sample
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
    """The inventory as GPUNode status devices, with this scan's readings."""
    out = []
    for gpu in inventory.gpus:
        lost = sample is not None and gpu.uuid in sample.lost
        instances = [
            MIGInstance(
                uuid=m.uuid,
                profile=m.profile,
                slices=m.slices,
                placement_start=m.placement_start,
                gpu_instance_id=m.gpu_instance_id,
                compute_instance_id=m.compute_instance_id,
                capability_device=DeviceNumbers(
                    major=m.capabilities[0].major, minor=m.capabilities[0].minor
                )
                if m.capabilities
                else None,
                health="Healthy" if m.healthy and gpu.healthy and not lost else "Unhealthy",
            )
            for m in gpu.mig
        ]
        out.append(
            GPUDevice(
                uuid=gpu.uuid,
                index=gpu.index,
                model=gpu.name[:256],
                memory_mib=gpu.memory_mib,
                device=DeviceNumbers(major=gpu.device.major, minor=gpu.device.minor),
                pci_bus_id=gpu.pci_bus_id,
                mig_enabled=gpu.mig_enabled,
                mig_total_slices=gpu.mig_total_slices,
                mig_instances=instances or None,
                health="Unhealthy" if lost or not gpu.healthy else "Healthy",
                health_reason=(
                    "fell off the bus: NVML lost the GPU" if lost else gpu.health_reason
                ),
                utilization_percent=sample.utilization.get(gpu.uuid) if sample else None,
                memory_used_mib=sample.memory_used_mib.get(gpu.uuid) if sample else None,
                nvlink_peers=sorted(gpu.nvlink_peers) or None,
            )
        )
    return out


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
    reported = devices(inventory, sample)
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
            health.inventory_ok,
            "NVMLAnswered" if health.inventory_ok else "NVMLUnavailable",
            health.inventory_message,
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
