"""Device cgroups (v1): where the kernel says yes or no to opening a GPU.

In the v1 devices controller a rule written to `devices.deny` makes the next
`open()` of that device from any process in the cgroup (and its children) fail
with EPERM; `devices.allow` lifts it again, within what the parent allows. A
rule only gates new opens, and container runtimes rewrite a container's rules
when it restarts, so the agent writes its rules on every pass rather than once.

On cgroup v2 there is no devices controller file interface (device access is an
eBPF program attached by the runtime at creation): `supported()` is False there
and the agent enforces by the Docker gateway at creation and by ending holders.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Iterator
from pathlib import Path

import structlog

from controller.policy.enforcement import Number

log = structlog.get_logger("ds01.agent.cgroups")


def rule(number: Number) -> str:
    return f"c {number[0]}:{number[1]} rwm"


class DeviceCgroups:
    """The v1 devices hierarchy under ``root`` (e.g. /sys/fs/cgroup/devices)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def supported(self) -> bool:
        return (self.root / "devices.deny").exists()

    def path(self, cgroup: str) -> Path:
        return self.root / cgroup.lstrip("/")

    def apply(self, cgroup: str, deny: Iterable[Number], allow: Iterable[Number]) -> bool:
        """Deny ``deny`` and allow ``allow`` in ``cgroup``; False when the cgroup is gone.

        Allowing can fail where a parent denies (EPERM) or, for a container, where
        the runtime never allowed the device in the first place: both are fine,
        the device stays closed. Denying must not fail.
        """
        directory = self.path(cgroup)
        try:
            for number in deny:
                (directory / "devices.deny").write_text(rule(number))
        except FileNotFoundError:
            return False
        for number in allow:
            try:
                (directory / "devices.allow").write_text(rule(number))
            except FileNotFoundError:
                return False
            except OSError as error:
                if error.errno not in (errno.EPERM, errno.EINVAL):
                    raise
        return True

    def listed(self, cgroup: str) -> list[str]:
        """The cgroup's `devices.list` lines (what is allowed, for a whitelist cgroup)."""
        try:
            return (self.path(cgroup) / "devices.list").read_text().splitlines()
        except FileNotFoundError:
            return []

    def sessions(self) -> Iterator[tuple[str, int]]:
        """Login-session slices (`user-<uid>.slice`) that exist, as (cgroup path, uid)."""
        for slice_dir in (self.root / "user.slice").glob("user-*.slice"):
            uid = slice_dir.name.removeprefix("user-").removesuffix(".slice")
            if uid.isdigit():
                yield f"/user.slice/{slice_dir.name}", int(uid)
