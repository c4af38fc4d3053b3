"""Fake /proc and /dev trees with real character devices for a fake NVML topology.

Two modes (DESIGN.md section 7, engineering notes "Measured on this workplace's
machines"):

- NVIDIA numbers (default): `/dev/nvidiaN` is `c 195:N`. With no driver behind
  it, opening gives ENXIO when allowed and EPERM when a device cgroup denies
  it: the pair of answers tests use to prove allowed vs denied.
- misc: GPUs are mapped onto misc devices (major 10) that this host's kernel
  has and that are harmless to hold open (`holdable.gpu_minors`, chosen at run
  time), so a test (or a newcomer on `ds01 dev up`'s simulated node) can hold
  a "GPU" open and see revocation end the holder. The fake `/proc/devices`
  then registers `nvidia` at major 10, and the topology's minors must be
  among the chosen ones.

`nvidia-uvm` and `nvidia-caps` get majors that are dynamic on real hosts and
unused on this kernel (opening gives ENXIO). The MIG minors file follows the
driver's layout (`config 1`, `monitor 2`, then per GPU minor 15 GPU instances
of 9 minors each: the GI's access, then its 8 compute instances).
Creating nodes needs root (mknod); CI runs as root.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from controller.devcluster.fakegpu.holdable import MISC_MAJOR, gpu_minors
from controller.devcluster.fakegpu.topology import Topology

NVIDIA_MAJOR = 195
UVM_MAJOR = 511
CAPS_MAJOR = 510


_GI_PER_GPU, _MINORS_PER_GI, _CI_PER_GI = 15, 9, 8

_HOST_CHAR_DEVICES = ((1, "mem"), (4, "tty"), (5, "/dev/tty"), (10, "misc"), (136, "pts"))


def cap_minor(gpu_minor: int, gi: int, ci: int | None = None) -> int:
    """The nvidia-caps minor of a GPU instance's access (ci None) or a compute instance's."""
    gi_minor = 3 + gpu_minor * _GI_PER_GPU * _MINORS_PER_GI + gi * _MINORS_PER_GI
    return gi_minor if ci is None else gi_minor + 1 + ci


@dataclass(frozen=True)
class DevTree:
    proc_root: Path
    dev_root: Path
    nvidia_major: int

    def gpu_path(self, minor: int) -> Path:
        return self.dev_root / f"nvidia{minor}"


def _mknod(path: Path, major: int, minor: int, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | mode, os.makedev(major, minor))
    os.chmod(path, mode)  # mknod applies the umask


def _proc_devices(nvidia_major: int) -> str:
    lines = ["Character devices:"]
    char = [*_HOST_CHAR_DEVICES, (nvidia_major, "nvidia"), (CAPS_MAJOR, "nvidia-caps")]
    char.append((UVM_MAJOR, "nvidia-uvm"))
    lines += [f"{major:3d} {name}" for major, name in sorted(char)]
    lines += ["", "Block devices:", "  7 loop", "259 blkext"]
    return "\n".join(lines) + "\n"


def _mig_minors(gpu_minors: list[int]) -> str:
    lines = ["config 1", "monitor 2"]
    for minor in sorted(gpu_minors):
        for gi in range(_GI_PER_GPU):
            lines.append(f"gpu{minor}/gi{gi}/access {cap_minor(minor, gi)}")
            lines += [
                f"gpu{minor}/gi{gi}/ci{ci}/access {cap_minor(minor, gi, ci)}"
                for ci in range(_CI_PER_GI)
            ]
    return "\n".join(lines) + "\n"


def make_devtree(root: Path, topology: Topology, *, misc: bool = False) -> DevTree:
    """Create `root/proc` and `root/dev` for the topology; see the module docstring."""
    nvidia_major = MISC_MAJOR if misc else NVIDIA_MAJOR
    minors = [gpu.minor for gpu in topology.gpus]
    if misc and not set(minors) <= set(gpu_minors()):
        raise ValueError(
            f"misc mode needs GPU minors among this host's holdable devices {gpu_minors()}:"
            f" {minors}"
        )
    proc, dev = root / "proc", root / "dev"
    (proc / "driver" / "nvidia-caps").mkdir(parents=True, exist_ok=True)
    (proc / "devices").write_text(_proc_devices(nvidia_major))
    (proc / "driver" / "nvidia-caps" / "mig-minors").write_text(_mig_minors(minors))
    for minor in minors:
        _mknod(dev / f"nvidia{minor}", nvidia_major, minor, 0o666)
    _mknod(dev / "nvidiactl", nvidia_major, 255, 0o666)
    _mknod(dev / "nvidia-uvm", UVM_MAJOR, 0, 0o666)
    _mknod(dev / "nvidia-uvm-tools", UVM_MAJOR, 1, 0o666)
    caps = dev / "nvidia-caps"
    _mknod(caps / "nvidia-cap1", CAPS_MAJOR, 1, 0o400)
    _mknod(caps / "nvidia-cap2", CAPS_MAJOR, 2, 0o444)
    for gpu in topology.gpus:
        for mig in gpu.mig:
            for minor in (cap_minor(gpu.minor, mig.gi), cap_minor(gpu.minor, mig.gi, mig.ci)):
                if not (caps / f"nvidia-cap{minor}").exists():
                    _mknod(caps / f"nvidia-cap{minor}", CAPS_MAJOR, minor, 0o444)
    tree = DevTree(proc_root=proc, dev_root=dev, nvidia_major=nvidia_major)
    if misc:
        _check_openable(tree.gpu_path(minors[0]))
    return tree


def _check_openable(path: Path) -> None:
    """Fail loudly (not skip) when the filesystem refuses device nodes (a nodev mount)."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_NOCTTY))
    except OSError as exc:
        hint = " (is the temporary directory mounted nodev?)" if exc.errno == errno.EACCES else ""
        raise RuntimeError(f"cannot open misc device node {path}: {exc}{hint}") from exc
