"""What /proc says about a process: owner UID, command, start time, cgroup placement.

Every path is relative to a configurable proc root, so the agent can run in a
DaemonSet with the host's /proc mounted at /host/proc and tests can run it
against real processes on this machine. A process that exits between NVML
listing it and us reading /proc is normal: readers return None, never raise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Container runtimes name cgroups after the container ID in several ways:
#   cgroupfs driver (Docker):      /docker/<64 hex>
#   systemd driver (Docker):       /system.slice/docker-<64 hex>.scope
#   kubelet, cgroupfs driver:      /kubepods/burstable/pod<uid>/<64 hex>
#   kubelet, systemd driver:       /kubepods.slice/.../kubepods-burstable-pod<uid_with_>.slice/
#                                  cri-containerd-<64 hex>.scope
_CONTAINER_ID = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?$")
_POD_UID = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?(?:/|$)"
)
_USER_SLICE = re.compile(r"/user-(\d+)\.slice(?:/|$)")


@dataclass(frozen=True)
class CgroupPlacement:
    """Where a process sits: a container, a pod, a login session, or none of those."""

    path: str
    container_id: str | None = None
    pod_uid: str | None = None
    session_uid: int | None = None
    """The UID of the `user-<uid>.slice` (logind) the process runs in, if any."""


@dataclass(frozen=True)
class ProcessInfo:
    """The /proc facts about one process."""

    pid: int
    uid: int
    comm: str
    start_ticks: int
    """Start time in clock ticks since boot: with the pid, identifies the process over time."""
    cgroup: CgroupPlacement


def placement(path: str) -> CgroupPlacement:
    """Classify a cgroup path (from the devices hierarchy, or v2's unified path)."""
    container = _CONTAINER_ID.search(path)
    pod = _POD_UID.search(path)
    session = _USER_SLICE.search(path)
    return CgroupPlacement(
        path=path,
        container_id=container.group(1) if container else None,
        pod_uid=pod.group(1).replace("_", "-") if pod else None,
        session_uid=int(session.group(1)) if session else None,
    )


def cgroup_path(text: str) -> str:
    """The path that places a process, from the content of /proc/<pid>/cgroup.

    cgroup v1 lists one line per hierarchy; the devices hierarchy is the one
    device rules live in. On v2 there is a single `0::<path>` line.
    """
    unified = None
    for line in text.splitlines():
        number, controllers, path = line.split(":", 2)
        if "devices" in controllers.split(","):
            return path
        if number == "0" and controllers == "":
            unified = path
    return unified or "/"


class ProcReader:
    """Reads process facts under a proc root."""

    def __init__(self, root: Path = Path("/proc")) -> None:
        self.root = root

    def process(self, pid: int) -> ProcessInfo | None:
        """Facts about ``pid``, or None when it is gone (or unreadable)."""
        base = self.root / str(pid)
        try:
            status = (base / "status").read_text()
            comm = (base / "comm").read_text().strip()
            stat = (base / "stat").read_text()
            cgroup = (base / "cgroup").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return None
        uid_line = next((x for x in status.splitlines() if x.startswith("Uid:")), None)
        if uid_line is None:
            return None
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        return ProcessInfo(
            pid=pid,
            uid=int(uid_line.split()[1]),
            comm=comm,
            start_ticks=start_ticks,
            cgroup=placement(cgroup_path(cgroup)),
        )

    def pids(self) -> list[int]:
        """Every pid under the proc root."""
        return sorted(int(p.name) for p in self.root.iterdir() if p.name.isdigit())
