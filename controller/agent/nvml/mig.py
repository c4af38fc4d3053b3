"""MIG devices of one GPU, read through NVML.

A MIG device's profile name is derived the way NVIDIA names them: compute
slices, then memory in GB, where the memory is the instance's share of the
GPU rounded up to an eighth and multiplied by the GPU's memory in whole GB
(9856 MiB on a 40 GB A100 is "10gb", 4864 MiB is "5gb"). A compute instance
smaller than its GPU instance gets the `1c.3g.20gb` form. Media-extension
variants (`+me`) cannot be told apart from the attributes and are not named.
"""

from __future__ import annotations

from dataclasses import dataclass

import pynvml

from controller.agent.inventory import MigSlice
from controller.agent.nvml.binding import Handle, text
from controller.agent.nvml.devnodes import DeviceNumbers

NO_PLACEMENT = -1
"""placement_start when NVML would not tell (GPU instance queries need privileges)."""


def profile_name(gi_slices: int, ci_slices: int, memory_mib: int, gpu_memory_mib: int) -> str:
    eighths = -(-memory_mib * 8 // gpu_memory_mib)  # ceil, in integers
    gpu_gb = -(-gpu_memory_mib // 1024)
    gb = round(eighths * gpu_gb / 8)
    base = f"{gi_slices}g.{gb}gb"
    return base if ci_slices >= gi_slices else f"{ci_slices}c.{base}"


@dataclass
class MigDevice:
    """A MIG slice as last read, with the handle to query it in later scans."""

    slice: MigSlice
    handle: Handle


def mig_handles(gpu: Handle, max_count: int) -> list[Handle]:
    """The GPU's MIG device handles; NVML leaves gaps (NOT_FOUND) where none exists."""
    handles = []
    for index in range(max_count):
        try:
            handles.append(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, index))
        except pynvml.NVMLError_NotFound:
            continue
    return handles


def read_slice(
    handle: Handle,
    uuid: str,
    *,
    parent: Handle,
    gpu_minor: int,
    gpu_memory_mib: int,
    devices: DeviceNumbers,
) -> MigSlice:
    """Everything about one MIG device; NVML errors propagate to the caller's GPU loop."""
    gi = int(pynvml.nvmlDeviceGetGpuInstanceId(handle))
    ci = int(pynvml.nvmlDeviceGetComputeInstanceId(handle))
    attributes = pynvml.nvmlDeviceGetAttributes(handle)
    gi_slices = int(attributes.gpuInstanceSliceCount)
    ci_slices = int(attributes.computeInstanceSliceCount)
    try:
        info = pynvml.nvmlGpuInstanceGetInfo(pynvml.nvmlDeviceGetGpuInstanceById(parent, gi))
        start = int(info.placement.start)
    except pynvml.NVMLError_NoPermission:
        start = NO_PLACEMENT
    return MigSlice(
        uuid=text(uuid),
        profile=profile_name(gi_slices, ci_slices, int(attributes.memorySizeMB), gpu_memory_mib),
        slices=gi_slices,
        placement_start=start,
        gpu_instance_id=gi,
        compute_instance_id=ci,
        capabilities=devices.mig_capabilities(gpu_minor, gi, ci),
    )
