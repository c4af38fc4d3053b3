"""What /proc says about a process: owner UID, command, start time, cgroup placement.

Every path is relative to a configurable proc root, so the agent can run in a
DaemonSet with the host's /proc mounted at /host/proc and tests can run it
against real processes on this machine. A process that exits between NVML
listing it and us reading /proc is normal: readers return None, never raise.
"""

from __future__ import annotations

import os
import re
import time
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


def _read_bytes(path: str, once: int = 0) -> bytes:
    """A /proc file's content, with raw system calls.

    Python's text files (buffer, decoder, wrapper) cost twice what the open and
    read themselves cost, and a scan reads a `stat` file per GPU process. With
    ``once``, a single read of that many bytes: procfs hands a small file over
    whole in one read, and `stat` (52 numbers and a 16-byte name) is under 1 KiB.
    """
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if once:
            return os.read(descriptor, once)
        chunks = []
        while chunk := os.read(descriptor, 8192):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(descriptor)


def _read(path: str) -> str:
    return _read_bytes(path).decode("utf-8", errors="replace")


def start_ticks_of(stat: bytes) -> int:
    """Field 22 of /proc/<pid>/stat (start time), counted after the command's closing ')'."""
    return int(stat.rsplit(b")", 1)[1].split()[19])


class ProcReader:
    """Reads process facts under a proc root, remembering them per process.

    A scan sees the same GPU processes again and again; reading four files per
    process per scan dominated the agent's CPU time. Only `stat` is read each
    time (the start time tells whether the pid is still the same process); the
    rest is re-read when the process is new or its facts are older than `ttl_s`
    (a process moved to another cgroup, or that changed its UID, is seen again
    within that time).
    """

    def __init__(self, root: Path = Path("/proc"), ttl_s: float = 30.0) -> None:
        self.root = root
        self.ttl_s = ttl_s
        self._known: dict[int, tuple[ProcessInfo, float]] = {}

    def process(self, pid: int) -> ProcessInfo | None:
        """Facts about ``pid``, or None when it is gone (or unreadable)."""
        base = f"{self.root}/{pid}"
        try:
            start_ticks = start_ticks_of(_read_bytes(f"{base}/stat", once=4096))
            known = self._known.get(pid)
            now = time.monotonic()
            if (
                known is not None
                and known[0].start_ticks == start_ticks
                and now - known[1] < self.ttl_s
            ):
                return known[0]
            status = _read(f"{base}/status")
            comm = _read(f"{base}/comm").strip()
            cgroup = _read(f"{base}/cgroup")
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError, ValueError):
            self._known.pop(pid, None)
            return None
        uid_line = next((x for x in status.splitlines() if x.startswith("Uid:")), None)
        if uid_line is None:
            return None
        info = ProcessInfo(
            pid=pid,
            uid=int(uid_line.split()[1]),
            comm=comm,
            start_ticks=start_ticks,
            cgroup=placement(cgroup_path(cgroup)),
        )
        self._known[pid] = (info, now)
        return info

    def forget_except(self, pids: set[int]) -> None:
        """Drop remembered processes that are no longer of interest."""
        for gone in self._known.keys() - pids:
            del self._known[gone]

    def pids(self) -> list[int]:
        """Every pid under the proc root."""
        return sorted(int(p.name) for p in self.root.iterdir() if p.name.isdigit())
