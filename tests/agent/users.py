"""Real Linux users for host-process tests (this machine has no directory service)."""

from __future__ import annotations

import pwd
import subprocess


def ensure_user(login: str) -> int:
    """Create ``login`` (a system user without a home) if missing; its UID."""
    try:
        return pwd.getpwnam(login).pw_uid
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", login],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(login).pw_uid


def run_as(login: str, *argv: str) -> subprocess.Popen[bytes]:
    """Start ``argv`` as ``login`` (real UID and GID switched before exec)."""
    entry = pwd.getpwnam(login)
    return subprocess.Popen(
        list(argv),
        user=entry.pw_uid,
        group=entry.pw_gid,
        extra_groups=[],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
