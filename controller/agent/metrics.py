"""Prometheus metrics of the agent. Labels are bounded: GPU index and kind, never pids or users."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram

from controller import __version__
from controller.agent.inventory import Inventory, Sample
from controller.api.node import Violation

UTILIZATION = Gauge(
    "ds01_agent_gpu_utilization_percent", "GPU utilisation (absent in MIG mode)", ["gpu"]
)
MEMORY = Gauge("ds01_agent_gpu_memory_used_mib", "GPU memory in use", ["gpu"])
PROCESSES = Gauge(
    "ds01_agent_gpu_processes", "Compute processes on the GPU and its slices", ["gpu"]
)
HEALTHY = Gauge("ds01_agent_gpu_healthy", "1 when the GPU is healthy", ["gpu"])
VIOLATIONS = Gauge("ds01_agent_violations", "Violations seen in the last scan", ["kind"])
SCAN_SECONDS = Histogram(
    "ds01_agent_scan_duration_seconds",
    "Wall time of one scan",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1),
)
SCAN_CPU = Counter("ds01_agent_scan_cpu_seconds_total", "CPU time spent scanning")
INFO = Gauge(
    "ds01_agent_info",
    "1, labelled with the node the agent serves and its version (joins per-GPU series to nodes)",
    ["node", "version"],
)
ENFORCEMENT = Gauge("ds01_agent_enforcement", "1 for the enforcement mode in force", ["mode"])
STATUS_WRITTEN = Gauge(
    "ds01_agent_status_written_timestamp_seconds",
    "When the agent last wrote its GPUNode status (its heartbeat)",
)
MODES = ("Enforce", "Audit", "Off")


def observe(
    inventory: Inventory,
    sample: Sample | None,
    violations: Sequence[Violation],
    wall: float,
    cpu: float,
    *,
    node: str | None = None,
    mode: str | None = None,
) -> None:
    """Record one scan."""
    if node is not None:
        INFO.labels(node=node, version=__version__).set(1)
    if mode is not None:
        for known in MODES:
            ENFORCEMENT.labels(mode=known).set(int(known == mode))
    owner = {gpu.uuid: gpu.uuid for gpu in inventory.gpus}
    owner |= {mig.uuid: gpu.uuid for gpu in inventory.gpus for mig in gpu.mig}
    counts = Tally(owner.get(p.device_uuid) for p in (sample.processes if sample else ()))
    for gpu in inventory.gpus:
        label = str(gpu.index)
        used = sample.utilization.get(gpu.uuid) if sample else None
        if used is not None:
            UTILIZATION.labels(gpu=label).set(used)
        if sample is not None and gpu.uuid in sample.memory_used_mib:
            MEMORY.labels(gpu=label).set(sample.memory_used_mib[gpu.uuid])
        PROCESSES.labels(gpu=label).set(counts.get(gpu.uuid, 0))
        lost = sample is not None and gpu.uuid in sample.lost
        HEALTHY.labels(gpu=label).set(1 if gpu.healthy and not lost else 0)
    kinds = Tally(v.kind for v in violations)
    for kind in ("Unattributed", "Unentitled", "OutsideAllocation"):
        VIOLATIONS.labels(kind=kind).set(kinds.get(kind, 0))
    SCAN_SECONDS.observe(wall)
    SCAN_CPU.inc(cpu)
