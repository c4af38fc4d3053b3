"""The fake NVML's topology file, written from dataclasses so tests stay readable.

The format (one `key=value` record per line) is documented in topology.c. A
test builds a `Topology` (usually `a100_node()`), changes it at run time and
calls `write()` again; the fake library notices the new file at its next call.

MIG layouts are checked against the real profile tables of the A100 (profile
ids, slices, memory, allowed placements from NVIDIA's MIG user guide), so a
test (or `ds01 dev up`) cannot describe a layout a real GPU would refuse.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

TOPOLOGY_ENV = "DS01_FAKE_NVML_TOPOLOGY"
"""Environment variable the fake library reads, at every call, for the topology path."""

_NAMESPACE = uuid.UUID("6f1d2c1e-8d0f-4c57-9a53-0d5c01a2b3c4")


@dataclass(frozen=True)
class MigProfile:
    """A GPU instance profile as `nvidia-smi mig -lgip` lists it."""

    gi_profile_id: int
    slices: int
    memory_mib: int
    placement_size: int
    """Memory slices the placement occupies (8 on an A100)."""
    starts: tuple[int, ...]


A100_40GB = {
    "1g.5gb": MigProfile(19, 1, 4864, 1, (0, 1, 2, 3, 4, 5, 6)),
    "1g.10gb": MigProfile(15, 1, 9856, 2, (0, 2, 4, 6)),
    "2g.10gb": MigProfile(14, 2, 9856, 2, (0, 2, 4)),
    "3g.20gb": MigProfile(9, 3, 20096, 4, (0, 4)),
    "4g.20gb": MigProfile(5, 4, 20096, 4, (0,)),
    "7g.40gb": MigProfile(0, 7, 40448, 8, (0,)),
}
A100_80GB = {
    "1g.10gb": MigProfile(19, 1, 9728, 1, (0, 1, 2, 3, 4, 5, 6)),
    "1g.20gb": MigProfile(15, 1, 19968, 2, (0, 2, 4, 6)),
    "2g.20gb": MigProfile(14, 2, 19968, 2, (0, 2, 4)),
    "3g.40gb": MigProfile(9, 3, 40192, 4, (0, 4)),
    "4g.40gb": MigProfile(5, 4, 40192, 4, (0,)),
    "7g.80gb": MigProfile(0, 7, 80896, 8, (0,)),
}
PROFILES = {"NVIDIA A100-SXM4-40GB": A100_40GB, "NVIDIA A100-SXM4-80GB": A100_80GB}


@dataclass(frozen=True)
class GpuModel:
    """What NVML says about a board: its name, memory and PCI device id."""

    name: str
    memory_mib: int
    pci_device_id: int


A100_SXM4_40GB = GpuModel("NVIDIA A100-SXM4-40GB", 40960, 0x20B010DE)
A100_SXM4_80GB = GpuModel("NVIDIA A100-SXM4-80GB", 81920, 0x20B210DE)

DGX_A100_BUS_IDS = tuple(
    f"00000000:{bus:02X}:00.0" for bus in (0x07, 0x0F, 0x47, 0x4E, 0x87, 0x90, 0xB7, 0xBD)
)
NVSWITCH_BUS_IDS = tuple(f"00000000:{bus:02X}:00.0" for bus in range(0xC4, 0xCA))
NVLINK_SWITCH, NVLINK_GPU = 2, 0


def gpu_uuid(index: int) -> str:
    return f"GPU-{uuid.uuid5(_NAMESPACE, f'gpu-{index}')}"


def mig_uuid(gpu: int, gi: int, ci: int) -> str:
    return f"MIG-{uuid.uuid5(_NAMESPACE, f'mig-{gpu}-{gi}-{ci}')}"


@dataclass
class MigSpec:
    """One MIG device: a GPU instance and its (single, by default) compute instance."""

    profile: str
    placement_start: int
    gi: int
    ci: int = 0
    ci_slices: int | None = None
    """Compute slices of the CI; None: the whole GPU instance (the usual case)."""
    uuid: str = ""
    used_mib: int = 0


@dataclass
class LinkSpec:
    """An active NVLink: to another GPU's PCI bus id, or to an NVSwitch."""

    link: int
    remote_bus_id: str
    remote_type: int = NVLINK_GPU


@dataclass
class GpuSpec:
    index: int
    uuid: str
    minor: int
    bus_id: str
    name: str = "NVIDIA A100-SXM4-40GB"
    memory_mib: int = 40960
    pci_device_id: int = 0x20B010DE
    used_mib: int = 0
    util: int = 0
    mem_util: int = 0
    mig_capable: bool = True
    mig_enabled: bool = False
    mig_max: int = 7
    lost: bool = False
    nvlink_count: int = 12
    links: list[LinkSpec] = field(default_factory=list)
    mig: list[MigSpec] = field(default_factory=list)


@dataclass
class ProcSpec:
    """A compute process; on a MIG-mode GPU it must name its GPU and compute instance."""

    pid: int
    gpu: int
    used_mib: int | None = 0
    """None: NVML reports the value as not available."""
    gi: int | None = None
    ci: int | None = None


@dataclass
class XidSpec:
    gpu: int
    xid: int
    gi: int | None = None
    ci: int | None = None
    seq: int = 0


def _opt(value: int | None) -> int:
    return -1 if value is None else value


@dataclass
class Topology:
    gpus: list[GpuSpec]
    processes: list[ProcSpec] = field(default_factory=list)
    xids: list[XidSpec] = field(default_factory=list)
    driver: str = "550.54.15"
    wait_error: int = 0
    """An NVML error code nvmlEventSetWait returns instead of waiting (0: none)."""

    def gpu(self, index: int) -> GpuSpec:
        return self.gpus[index]

    def add_xid(self, gpu: int, xid: int, gi: int | None = None, ci: int | None = None) -> XidSpec:
        """Record an XID that happens now: event sets created before it will deliver it."""
        event = XidSpec(gpu, xid, gi, ci, seq=max((x.seq for x in self.xids), default=0) + 1)
        self.xids.append(event)
        return event

    def render(self) -> str:
        lines = [f"driver {self.driver}", f"wait_error {self.wait_error}"]
        for gpu in self.gpus:
            lines.append(
                f"gpu index={gpu.index} uuid={gpu.uuid} minor={gpu.minor} bus={gpu.bus_id}"
                f" pciid={gpu.pci_device_id:#x} memory={gpu.memory_mib} used={gpu.used_mib}"
                f" util={gpu.util} memutil={gpu.mem_util} migcapable={int(gpu.mig_capable)}"
                f" mig={int(gpu.mig_enabled)} migmax={gpu.mig_max} lost={int(gpu.lost)}"
                f" links={gpu.nvlink_count} name={gpu.name}"
            )
            lines.extend(_mig_lines(gpu))
            lines.extend(
                f"link gpu={gpu.index} link={k.link} type={k.remote_type} bus={k.remote_bus_id}"
                for k in gpu.links
            )
        lines.extend(
            f"proc pid={p.pid} gpu={p.gpu} gi={_opt(p.gi)} ci={_opt(p.ci)} used={_opt(p.used_mib)}"
            for p in self.processes
        )
        lines.extend(
            f"xid seq={x.seq} gpu={x.gpu} xid={x.xid} gi={_opt(x.gi)} ci={_opt(x.ci)}"
            for x in self.xids
        )
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> None:
        """Replace `path` atomically, with an mtime strictly newer than the old file's.

        The fake re-parses only when (inode, size, mtime) change; coarse kernel
        timestamps could repeat between two quick writes, so the mtime is set.
        """
        text = self.render()
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        partial.write_text(text)
        previous = path.stat().st_mtime_ns if path.exists() else 0
        stamp = max(time.time_ns(), previous + 1)
        os.utime(partial, ns=(stamp, stamp))
        os.replace(partial, path)


def _mig_lines(gpu: GpuSpec) -> list[str]:
    if gpu.mig and not gpu.mig_enabled:
        raise ValueError(f"GPU {gpu.index} has MIG devices but MIG mode is off")
    profiles = PROFILES.get(gpu.name, {})
    used: set[int] = set()
    lines = []
    for index, mig in enumerate(gpu.mig):
        profile = profiles.get(mig.profile)
        if profile is None:
            raise ValueError(f"{gpu.name} has no MIG profile {mig.profile}")
        if mig.placement_start not in profile.starts:
            raise ValueError(f"{mig.profile} cannot start at {mig.placement_start}")
        taken = set(range(mig.placement_start, mig.placement_start + profile.placement_size))
        if taken & used:
            raise ValueError(f"GPU {gpu.index}: {mig.profile} overlaps another instance")
        used |= taken
        name = f"{gpu.name} MIG {mig.profile}"
        if mig.ci_slices is not None and mig.ci_slices != profile.slices:
            name = f"{gpu.name} MIG {mig.ci_slices}c.{mig.profile}"
        mig_id = mig.uuid or mig_uuid(gpu.index, mig.gi, mig.ci)
        lines.append(
            f"mig gpu={gpu.index} index={index} uuid={mig_id}"
            f" gi={mig.gi} ci={mig.ci} profile={profile.gi_profile_id} gislices={profile.slices}"
            f" cislices={mig.ci_slices or profile.slices} start={mig.placement_start}"
            f" size={profile.placement_size} memory={profile.memory_mib} used={mig.used_mib}"
            f" name={name}"
        )
    return lines


DEFAULT_MIG: Mapping[int, Sequence[tuple[str, int]]] = {
    0: (("3g.20gb", 4), ("2g.10gb", 0), ("1g.10gb", 2)),
    1: (("2g.10gb", 0), ("2g.10gb", 2), ("1g.5gb", 4), ("1g.5gb", 5), ("1g.5gb", 6)),
}
"""GPU index -> (profile, placement start): GPUs 0 and 1 of `a100_node` in MIG mode."""


def packed(model: GpuModel, profiles: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """Place ``profiles`` in order, each at its first allowed start still free.

    For layouts given as a list of profiles (as `controller.devcluster.simnode`
    describes its node): the (profile, start) pairs `a100_node` takes.
    """
    table = PROFILES[model.name]
    used: set[int] = set()
    placed = []
    for name in profiles:
        profile = table[name]
        for start in profile.starts:
            taken = set(range(start, start + profile.placement_size))
            if not taken & used:
                used |= taken
                placed.append((name, start))
                break
        else:
            raise ValueError(f"{model.name}: no room left for {name} in {list(profiles)}")
    return tuple(placed)


def a100_node(
    *,
    count: int | None = None,
    minors: Sequence[int] | None = None,
    mig: Mapping[int, Sequence[tuple[str, int]]] = DEFAULT_MIG,
    nvlink: str | Iterable[tuple[int, int]] = "switch",
    model: GpuModel = A100_SXM4_40GB,
) -> Topology:
    """A DGX-A100-like node: `count` A100-SXM4 boards (40GB unless `model` says), some in MIG mode.

    `minors` maps indexes to device minors (default: the index, as on real
    hosts); `count` defaults to one GPU per minor, else 8. `mig` uses the
    model's profile names (`DEFAULT_MIG` is for the 40GB board). `nvlink` is
    "switch" (every GPU's 12 links go to NVSwitches, as on a DGX A100), "none",
    or GPU index pairs joined by direct links.
    """
    if count is None:
        count = 8 if minors is None else len(minors)
    minors = list(range(count)) if minors is None else list(minors)
    if len(minors) < count:
        raise ValueError(f"{count} GPUs need {count} minors: {minors}")
    gpus = [
        GpuSpec(
            index=i,
            uuid=gpu_uuid(i),
            minor=minors[i],
            bus_id=DGX_A100_BUS_IDS[i % 8],
            name=model.name,
            memory_mib=model.memory_mib,
            pci_device_id=model.pci_device_id,
        )
        for i in range(count)
    ]
    for index, layout in mig.items():
        gpu = gpus[index]
        gpu.mig_enabled = True
        gpu.mig = [MigSpec(p, start, gi=n + 1) for n, (p, start) in enumerate(layout)]
    if nvlink == "switch":
        for gpu in gpus:
            gpu.links = [
                LinkSpec(k, NVSWITCH_BUS_IDS[k // 2], NVLINK_SWITCH)
                for k in range(gpu.nvlink_count)
            ]
    elif nvlink == "none":
        for gpu in gpus:
            gpu.nvlink_count = 0
    elif isinstance(nvlink, str):
        raise ValueError(f"nvlink: {nvlink!r}")
    else:
        for a, b in nvlink:
            for here, there in ((gpus[a], gpus[b]), (gpus[b], gpus[a])):
                here.links.append(LinkSpec(len(here.links), there.bus_id, NVLINK_GPU))
    return Topology(gpus=gpus)
