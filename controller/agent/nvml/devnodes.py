"""Device numbers and paths from the proc and dev roots.

The `nvidia` major is 195 on every real host, but `nvidia-uvm` and
`nvidia-caps` are allocated dynamically, so all three are read from
`/proc/devices` (tests also point the `nvidia` major at openable misc devices
this way). MIG instances are reached through `nvidia-caps` capability devices
whose minors the driver lists in `/proc/driver/nvidia-caps/mig-minors`, keyed
by the parent GPU's minor number (not its NVML index), GPU instance and
compute instance. Paths are computed under the configured device root; the
nodes are not opened or created here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from controller.agent.inventory import DeviceNode
from controller.agent.nvml.binding import NvmlUnavailableError

NVIDIA_NAMES = ("nvidia", "nvidia-frontend")
"""Recent drivers register the GPU major as `nvidia`, older ones as `nvidia-frontend`."""
CONTROL_MINOR = 255
UVM_MINOR, UVM_TOOLS_MINOR = 0, 1


@dataclass(frozen=True)
class Majors:
    nvidia: int
    uvm: int | None
    caps: int | None


def read_char_majors(proc_root: Path) -> dict[str, int]:
    """Name -> major of the character devices in `/proc/devices` (the block section is skipped)."""
    majors: dict[str, int] = {}
    in_char = False
    for line in (proc_root / "devices").read_text().splitlines():
        if line.endswith(":"):
            in_char = line.strip() == "Character devices:"
            continue
        fields = line.split(None, 1)
        if in_char and len(fields) == 2 and fields[0].isdigit():
            majors.setdefault(fields[1].strip(), int(fields[0]))
    return majors


def read_majors(proc_root: Path) -> Majors:
    try:
        majors = read_char_majors(proc_root)
    except OSError as exc:
        raise NvmlUnavailableError(f"cannot read {proc_root / 'devices'}: {exc}") from exc
    nvidia = next((majors[n] for n in NVIDIA_NAMES if n in majors), None)
    if nvidia is None:
        raise NvmlUnavailableError(f"{proc_root / 'devices'} lists no NVIDIA character device")
    return Majors(nvidia=nvidia, uvm=majors.get("nvidia-uvm"), caps=majors.get("nvidia-caps"))


def read_mig_minors(proc_root: Path) -> dict[str, int]:
    """`gpu0/gi1/access` -> 12 and so on; empty when the file does not exist (no MIG driver)."""
    path = proc_root / "driver" / "nvidia-caps" / "mig-minors"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return {}
    minors: dict[str, int] = {}
    for line in lines:
        fields = line.split()
        if len(fields) == 2 and fields[1].isdigit():
            minors[fields[0]] = int(fields[1])
    return minors


class DeviceNumbers:
    """Builds the `DeviceNode`s of GPUs, control devices and MIG capabilities."""

    def __init__(self, proc_root: Path, dev_root: Path) -> None:
        self.proc_root = proc_root
        self.dev_root = dev_root
        self.majors = read_majors(proc_root)
        # Read on first use and kept: the driver's table is fixed while it is loaded.
        self._mig_minors: dict[str, int] | None = None

    def _path(self, *parts: str) -> str:
        return os.path.join(self.dev_root, *parts)

    def gpu(self, minor: int) -> DeviceNode:
        return DeviceNode(self._path(f"nvidia{minor}"), self.majors.nvidia, minor)

    def control(self) -> tuple[DeviceNode, ...]:
        """nvidiactl always; the UVM pair when the nvidia-uvm module is loaded."""
        nodes = [DeviceNode(self._path("nvidiactl"), self.majors.nvidia, CONTROL_MINOR)]
        if self.majors.uvm is not None:
            nodes.append(DeviceNode(self._path("nvidia-uvm"), self.majors.uvm, UVM_MINOR))
            nodes.append(
                DeviceNode(self._path("nvidia-uvm-tools"), self.majors.uvm, UVM_TOOLS_MINOR)
            )
        return tuple(nodes)

    def mig_capabilities(self, gpu_minor: int, gi: int, ci: int) -> tuple[DeviceNode, ...]:
        """The GI and CI access capabilities of one MIG device; () when unknown.

        Without them a container cannot use the slice at all, which fails closed.
        """
        if self.majors.caps is None:
            return ()
        if not self._mig_minors:
            self._mig_minors = read_mig_minors(self.proc_root)
        keys = (f"gpu{gpu_minor}/gi{gi}/access", f"gpu{gpu_minor}/gi{gi}/ci{ci}/access")
        if not all(key in self._mig_minors for key in keys):
            return ()
        return tuple(
            DeviceNode(
                self._path("nvidia-caps", f"nvidia-cap{self._mig_minors[key]}"),
                self.majors.caps,
                self._mig_minors[key],
            )
            for key in keys
        )
