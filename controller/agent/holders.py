"""Which processes hold a GPU device open, found through /proc/<pid>/fd.

A device cgroup only gates new opens; ending GPU use means finding the
processes that already hold a device, which NVML may not list (a process can
hold /dev/nvidia0 without a CUDA context). `stat()` on a /proc fd link gives
the opened file's own device numbers, across mount namespaces, so a container
whose /dev/nvidia0 is the host's /dev/nvidia3 is still found by 195:3.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from controller.policy.enforcement import Number


def holders(proc_root: Path, numbers: frozenset[Number]) -> dict[int, set[Number]]:
    """pid -> the devices among ``numbers`` it has open (this process excluded)."""
    found: dict[int, set[Number]] = {}
    if not numbers:
        return found
    me = os.getpid()
    with os.scandir(proc_root) as entries:
        pids = [int(e.name) for e in entries if e.name.isdigit()]
    for pid in pids:
        if pid == me:
            continue
        try:
            with os.scandir(f"{proc_root}/{pid}/fd") as fds:
                for fd in fds:
                    try:
                        info = os.stat(fd.path)
                    except OSError:
                        continue
                    if stat.S_ISCHR(info.st_mode):
                        number = (os.major(info.st_rdev), os.minor(info.st_rdev))
                        if number in numbers:
                            found.setdefault(pid, set()).add(number)
        except OSError:
            continue  # gone, or a kernel thread
    return found
