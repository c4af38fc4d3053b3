"""Host facts a create depends on: what a path really is, and the node's GPU devices.

A request names host paths as the user wrote them; what counts is what they
resolve to. Bind sources are resolved (every symlink) and passed on resolved;
device paths are stat'ed, and a directory given as a device (which Docker maps
recursively) is walked, so a GPU reached through another name or a copy of
its device node is still recognised by its numbers.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

from controller.agent.inventory import DeviceNode, Inventory
from controller.policy.docker.facts import PathFacts, PathKind
from controller.policy.gpuchoice import Device

NVIDIA_MAJOR = 195
MAX_WALK = 10_000
"""Most entries looked at under a directory given as a device (Docker maps them all)."""


def _kind(mode: int) -> PathKind:
    if stat.S_ISCHR(mode):
        return "char"
    if stat.S_ISBLK(mode):
        return "block"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "other"


def _changeable(path: str) -> bool:
    """Whether someone other than root could change where ``path`` leads.

    Every directory from the root down, and the entry itself, must be owned by
    root and not writable by group or others (a sticky /tmp still lets anyone
    create the name first).
    """
    parts = [p for p in path.split("/") if p]
    current = "/"
    for part in ["", *parts]:
        current = os.path.join(current, part) if part else "/"
        try:
            info = os.lstat(current)
        except OSError:
            return True
        if info.st_uid != 0:
            return True
        if stat.S_ISDIR(info.st_mode) and info.st_mode & 0o022:
            return True
    return False


def _linked(path: str) -> bool:
    """Whether ``path`` as written goes through a symlink (any component)."""
    current = "/"
    for part in (p for p in path.split("/") if p):
        current = os.path.join(current, part)
        try:
            if stat.S_ISLNK(os.lstat(current).st_mode):
                return True
        except OSError:
            return False
    return False


def path_facts(path: str, *, walk: bool) -> PathFacts:
    """What ``path`` resolves to; with ``walk``, the devices under a directory too."""
    real = os.path.realpath(path)
    linked = real != os.path.normpath(path) or _linked(path)
    try:
        info = os.stat(real)
    except OSError:
        return PathFacts(real, "missing", linked=linked)
    kind = _kind(info.st_mode)
    numbers: set[tuple[int, int]] = set()
    block = kind == "block"
    if kind == "char":
        numbers.add((os.major(info.st_rdev), os.minor(info.st_rdev)))
    elif kind == "dir" and walk:
        seen = 0
        for root, dirs, files in os.walk(real):
            for name in [*dirs, *files]:
                seen += 1
                if seen > MAX_WALK:
                    return PathFacts(real, kind, frozenset(numbers), block=True, linked=linked)
                try:
                    entry = os.lstat(os.path.join(root, name))
                except OSError:
                    continue
                if stat.S_ISCHR(entry.st_mode):
                    numbers.add((os.major(entry.st_rdev), os.minor(entry.st_rdev)))
                block = block or stat.S_ISBLK(entry.st_mode)
    writable = walk and _changeable(real)
    return PathFacts(real, kind, frozenset(numbers), block, writable=writable, linked=linked)


def gpu_numbers(inventory: Inventory | None) -> frozenset[tuple[int, int]]:
    """Every device number that reaches a GPU: GPUs, MIG capabilities, control devices."""
    if inventory is None:
        return frozenset()
    nodes: list[DeviceNode] = [*inventory.control]
    for slot in inventory.slots():
        nodes += slot.devices
    return frozenset((n.major, n.minor) for n in nodes)


def gpu_majors(inventory: Inventory | None) -> frozenset[int]:
    """Majors that belong to the NVIDIA driver alone: any node with one of them is refused.

    195 is the driver's registered major; `nvidia-uvm` and `nvidia-caps` are
    dynamic and come from the inventory. (A test host may map fake GPUs onto a
    shared major; those are caught by their exact numbers instead.)
    """
    majors = {NVIDIA_MAJOR}
    if inventory is not None:
        majors |= {n.major for n in inventory.control if "nvidia-uvm" in Path(n.path).name}
        if inventory.caps_major is not None:
            majors.add(inventory.caps_major)
    return frozenset(majors)


def devices(inventory: Inventory | None) -> list[Device]:
    """The allocatable slots, as the pure choice wants them."""
    if inventory is None:
        return []
    out = []
    for slot in inventory.slots():
        gpu = slot.gpu
        if slot.mig is not None:
            total = gpu.mig_total_slices or 7
            out.append(
                Device(
                    uuid=slot.uuid,
                    gpu_uuid=gpu.uuid,
                    index=gpu.index,
                    mig_profile=slot.mig.profile,
                    equivalents=Fraction(slot.mig.slices, total),
                    placement=slot.mig.placement_start,
                    healthy=slot.healthy,
                    nvlink_peers=gpu.nvlink_peers,
                )
            )
        else:
            out.append(
                Device(
                    uuid=slot.uuid,
                    gpu_uuid=gpu.uuid,
                    index=gpu.index,
                    mig_profile=None,
                    equivalents=Fraction(1),
                    healthy=slot.healthy,
                    nvlink_peers=gpu.nvlink_peers,
                )
            )
    return out


def in_container(path: str, dev_root: Path) -> str:
    """Where a host device node appears in the container: the same place under /dev."""
    try:
        return "/dev/" + str(Path(path).relative_to(dev_root))
    except ValueError:
        return path


def device_nodes(
    inventory: Inventory, uuids: Iterable[str], dev_root: Path, host_root: Path | None = None
) -> list[tuple[str, str]]:
    """(host path, container path) of the chosen slots' nodes, plus the control devices.

    ``host_root`` is where the host (the engine) has ``dev_root``, when the agent sees
    it elsewhere (`/host/dev` in a pod); by default the agent's own paths are the host's.
    """
    wanted = set(uuids)
    nodes: list[DeviceNode] = []
    for slot in inventory.slots():
        if slot.uuid in wanted:
            nodes += [n for n in slot.devices if n not in nodes]
    if nodes:
        nodes += [n for n in inventory.control if Path(n.path).exists()]
    return [(host_path(n.path, dev_root, host_root), in_container(n.path, dev_root)) for n in nodes]


def host_path(path: str, dev_root: Path, host_root: Path | None) -> str:
    """The host's path of a device node the agent sees at ``path``."""
    if host_root is None:
        return path
    try:
        return str(host_root / Path(path).relative_to(dev_root))
    except ValueError:
        return path


def agent_path(path: str, dev_root: Path, host_root: Path | None) -> str:
    """Where the agent sees a host device path (the inverse of `host_path`)."""
    if host_root is None:
        return path
    try:
        return str(dev_root / Path(path).relative_to(host_root))
    except ValueError:
        return path


def bind_roots(patterns: Sequence[str], login: str | None, home: str | None) -> tuple[str, ...]:
    """The caller's bind roots, resolved: `{home}` and `{login}` filled in, symlinks followed."""
    roots = []
    for pattern in patterns:
        if ("{home}" in pattern and not home) or ("{login}" in pattern and not login):
            continue
        text = pattern.replace("{home}", home or "").replace("{login}", login or "")
        if text.startswith("/") and text != "/":
            roots.append(os.path.realpath(text))
        elif text == "/":
            roots.append("/")
    return tuple(dict.fromkeys(roots))
