"""Child processes that can always be found and stopped again.

Each process runs in its own session (so its whole group can be signalled),
logs to a file, and is recorded in a pid file that carries the process's start
time: a later ``stop`` from another process (``ds01 dev down``) then never
signals an unrelated process that happens to reuse the pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def wait_until(
    condition: Callable[[], bool], deadline_s: float, what: str, interval_s: float = 0.1
) -> None:
    """Poll ``condition`` until it holds; raise TimeoutError naming ``what`` at the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        if condition():
            return
        if time.monotonic() >= end:
            raise TimeoutError(f"{what} within {deadline_s:.0f}s")
        time.sleep(interval_s)


@dataclass
class ManagedProcess:
    """A started child process, its log and its identity."""

    name: str
    pid: int
    start_ticks: int | None
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    stop_grace_s: float = 10.0
    """How long ``stop`` waits after SIGTERM: recorded, so `ds01 dev down` gives a
    process that shuts down slowly on purpose (dockerd stopping its containers) its time."""

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        ticks = _start_ticks(self.pid)
        return ticks is not None and ticks == self.start_ticks and not _is_zombie(self.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM the process group, then SIGKILL it if it outlives the grace period."""
        if not self.alive():
            self._reap()
            return
        grace = self.stop_grace_s if grace_s is None else grace_s
        self._signal(signal.SIGTERM)
        try:
            wait_until(lambda: not self.alive(), grace, f"{self.name} to exit", 0.05)
        except TimeoutError:
            self._signal(signal.SIGKILL)
            wait_until(lambda: not self.alive(), 10, f"{self.name} to die", 0.05)
        self._reap()

    def _signal(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            os.kill(self.pid, sig)

    def _reap(self) -> None:
        if self.popen is not None:
            self.popen.wait(timeout=10)

    def to_record(self) -> dict[str, object]:
        return {
            "name": self.name,
            "pid": self.pid,
            "start": self.start_ticks,
            "log": str(self.log),
            "grace": self.stop_grace_s,
        }


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def spawn(
    name: str,
    argv: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    stop_grace_s: float = 10.0,
) -> ManagedProcess:
    """Start ``argv`` in a new session with stdout and stderr going to ``log``."""
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    return ManagedProcess(name, popen.pid, _start_ticks(popen.pid), log, popen, stop_grace_s)


class PidFile:
    """The record of a cluster's processes, so another command can stop them."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, processes: list[ManagedProcess]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([p.to_record() for p in processes], indent=2))
        tmp.rename(self.path)

    def read(self) -> list[ManagedProcess]:
        try:
            records = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        return [
            ManagedProcess(
                str(r["name"]),
                int(r["pid"]),
                r.get("start"),
                Path(r["log"]),
                stop_grace_s=float(r.get("grace", 10.0)),
            )
            for r in records
        ]

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
