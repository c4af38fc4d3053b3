"""Which of this host's character devices stand in for GPUs that a process can hold open.

Why real devices: the enforcement tests and `ds01 dev up`'s simulated node need
a process in a container or login session to *hold* a fake GPU open, so that
revoking access has something to end. A device number with no driver behind it
answers ENXIO when the device cgroup allows it and EPERM when it denies it:
that proves a rule, but nothing can be held. So fake GPUs are device nodes of
real drivers that are harmless to open.

Why chosen at run time: which drivers a kernel has differs from host to host.
A fixed list of minors worked on the machine it was written on and failed on a
fresh one that lacked autofs (10:235). So the devices are picked from what the
running kernel has registered (`/sys/dev/char`) by `choose_gpu_minors`, a pure
function that the unit tests drive with simulated hosts.

What qualifies:

- major 10 (misc). The agent learns the GPUs' major from the line `nvidia` in
  /proc/devices, so all fake GPUs share one major; misc is the major with many
  small drivers on every kernel.
- a driver on `HOLDABLE_MISC`: opening it read-write as root and keeping the
  descriptor does nothing beyond that open file (the work of each driver is
  behind ioctls or writes nobody sends).
- not on the Docker/runc default device list (`CONTAINER_DEFAULT_ALLOWED`): every
  container may open those, so a test that expects a denial would see an open.
- not minor 255, where the fake tree puts `nvidiactl`.

Deliberately absent from `HOLDABLE_MISC`: watchdog (closing it without the
magic character can reboot the host), snapshot (hibernation image, freezes
tasks), hpet and hwrng (refuse a read-write open), psaux (powers a mouse up),
vhci (creates a Bluetooth controller a second after the open), ecryptfs
(the opener becomes the key daemon), net/tun (on the container default list),
and every tty (the open can make it a shell's controlling terminal; the tests
open with shell redirections, which cannot pass O_NOCTTY).

The choice is stable for a host: the same registered devices give the same
minors, in whatever order they are listed, and a device the choice did not use
can come or go without changing it (the drivers are taken in the fixed order of
`HOLDABLE_MISC`, the first `wanted` that the host has).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MISC_MAJOR = 10
NVIDIACTL_MINOR = 255
"""The fake tree's `nvidiactl` is `<nvidia major>:255`; never a GPU."""

WANTED_GPUS = 8
"""DS01's kind of server: 8 boards."""
MINIMUM_GPUS = 4
"""The smallest node the walk-through and the agent tests run on: GPUs 0 and 1 in
MIG mode and two whole GPUs (2 and 3)."""

HOLDABLE_MISC: tuple[str, ...] = (
    "fuse",  # an unmounted FUSE connection until someone mounts with it
    "loop-control",  # ioctls only
    "userfaultfd",  # a userfaultfd is created by an ioctl, not by the open
    "vga_arbiter",  # arbitration changes only by written commands
    "cpu_dma_latency",  # the open adds a QoS request at the default: no constraint
    "autofs",  # the autofs control device: ioctls only
    "vsock",  # transport information: ioctls only
    "btrfs-control",  # ioctls only
    "mapper/control",  # device-mapper control: ioctls only
    "kvm",  # a VM is created by an ioctl
    "vhost-net",  # no worker until VHOST_SET_OWNER
    "vhost-vsock",  # likewise
    "uinput",  # an input device is created by an ioctl
    "uhid",  # a HID device is created by a written UHID_CREATE
    "rfkill",  # radios change only by writes
    "udmabuf",  # ioctls only
    "vfio/vfio",  # a container is set up by ioctls
    "nvme-fabrics",  # a controller is created by a write
)
"""Misc drivers that are harmless to open and hold, in the order they are chosen."""

CONTAINER_DEFAULT_ALLOWED = frozenset(
    {(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2), (10, 200)}
)
"""null, zero, full, random, urandom, tty, console, ptmx, net/tun: runc's default
allow list (with every pts, major 136, which is not misc), open in every container."""


@dataclass(frozen=True, order=True)
class CharDevice:
    """A character device the kernel has registered, as /sys/dev/char lists it."""

    major: int
    minor: int
    name: str
    """Its node's path under /dev (DEVNAME in its uevent), e.g. `fuse`, `net/tun`."""


class UnsuitableHostError(RuntimeError):
    """The host has too few holdable devices to simulate a GPU node."""


def holdable(device: CharDevice) -> bool:
    """Whether ``device`` may stand in for a GPU (see the module docstring)."""
    return (
        device.major == MISC_MAJOR
        and device.name in HOLDABLE_MISC
        and device.minor != NVIDIACTL_MINOR
        and (device.major, device.minor) not in CONTAINER_DEFAULT_ALLOWED
    )


def choose_gpu_minors(
    devices: Iterable[CharDevice], wanted: int = WANTED_GPUS, minimum: int = MINIMUM_GPUS
) -> tuple[int, ...]:
    """The misc minors of up to ``wanted`` fake GPUs, ascending; at least ``minimum``.

    Raises `UnsuitableHostError`, saying what the host has, when fewer than
    ``minimum`` of its devices qualify.
    """
    if not 1 <= minimum <= wanted:
        raise ValueError(f"minimum must be between 1 and wanted ({wanted}): {minimum}")
    by_name: dict[str, int] = {}
    for device in sorted(d for d in devices if holdable(d)):
        by_name.setdefault(device.name, device.minor)  # one node per driver: its lowest minor
    chosen: list[int] = []
    for name in HOLDABLE_MISC:
        minor = by_name.get(name)
        if minor is not None and minor not in chosen and len(chosen) < wanted:
            chosen.append(minor)
    if len(chosen) < minimum:
        found = ", ".join(f"{n} 10:{m}" for n, m in sorted(by_name.items(), key=lambda i: i[1]))
        raise UnsuitableHostError(
            f"this host cannot simulate a GPU node: it needs at least {minimum} holdable"
            f" character devices (misc drivers {', '.join(HOLDABLE_MISC)}) and has"
            f" {len(chosen)}{': ' + found if found else ''}"
        )
    return tuple(sorted(chosen))


def host_char_devices(sys_root: Path = Path("/sys")) -> list[CharDevice]:
    """The character devices this kernel has registered, with their /dev names.

    A device without a DEVNAME in its uevent has no node to open and is left out.
    """
    devices = []
    char = sys_root / "dev" / "char"
    for entry in sorted(char.iterdir()) if char.is_dir() else []:
        major, _, minor = entry.name.partition(":")
        try:
            uevent = (entry / "uevent").read_text()
        except OSError:
            continue
        names = [line[8:] for line in uevent.splitlines() if line.startswith("DEVNAME=")]
        if names and major.isdigit() and minor.isdigit():
            devices.append(CharDevice(int(major), int(minor), names[0]))
    return devices


def gpu_minors(minimum: int = MINIMUM_GPUS, sys_root: Path = Path("/sys")) -> tuple[int, ...]:
    """This host's choice (see `choose_gpu_minors`): up to `WANTED_GPUS`, at least ``minimum``.

    The host is read once per process, so every fake node of a run maps its
    GPUs alike; ``minimum`` only decides whether too few is an error.
    """
    return choose_gpu_minors(_registered(sys_root), WANTED_GPUS, minimum)


@functools.cache
def _registered(sys_root: Path) -> tuple[CharDevice, ...]:
    return tuple(host_char_devices(sys_root))


def unsuitable_reason(minimum: int = MINIMUM_GPUS, sys_root: Path = Path("/sys")) -> str | None:
    """Why this host cannot hold ``minimum`` fake GPUs, or None when it can."""
    try:
        gpu_minors(minimum, sys_root)
    except UnsuitableHostError as error:
        return str(error)
    return None
