"""A binary's audit trail as it runs: the chained log, timely checkpoints, an anchor elsewhere.

`AuditLog` writes and chains records and signs a checkpoint every
`checkpoint_every` records. A quiet trail would leave its last records
unsigned for long, so `Trail` also signs every `checkpoint_interval` (and at
shutdown), and hands each checkpoint to a poster on its own thread (the
operator keeps it in a ConfigMap, an agent in its GPUNode status), so an
anchor outside the node says how far the trail reached: records cut from its
end are then found by `ds01 audit verify`.
"""

from __future__ import annotations

import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import structlog

from controller.runtime.audit import RETENTION, AuditLog
from controller.runtime.auditchain import Anchor

log = structlog.get_logger("ds01.audit")


@dataclass(frozen=True)
class AuditSettings:
    """How a binary keeps its trail (`--audit-*` flags)."""

    key_file: Path | None = None
    """The checkpoints' signing key (a root-only file); without it, nothing is signed."""
    retention: timedelta | None = RETENTION
    """How long rotated days are kept; None keeps them."""
    stdout: bool = False
    """Also print each record to stdout, for the cluster's log collector."""
    checkpoint_every: int = 1000
    checkpoint_interval: timedelta = timedelta(minutes=5)


class AuditKeyError(ValueError):
    """A signing key that cannot be used (the start is refused)."""


def read_key(path: Path) -> bytes:
    """The key's bytes; refused when missing, empty, or open to every user.

    Group read is allowed: a Kubernetes Secret reaches a non-root container only
    through its pod's fsGroup (mode 0440), a group that holds the operator alone.
    Group write is not: whoever can rewrite the key can sign a forged trail.
    """
    try:
        info = path.stat()
        key = path.read_bytes().strip()
    except OSError as error:
        raise AuditKeyError(f"--audit-key {path}: {error.strerror}") from None
    if not key:
        raise AuditKeyError(f"--audit-key {path}: the file is empty")
    if info.st_mode & (stat.S_IRWXO | stat.S_IWGRP):
        raise AuditKeyError(
            f"--audit-key {path}: open to other users (mode {oct(info.st_mode & 0o777)}); "
            "make it 0600, 0400 or 0440"
        )
    return key


class _Poster:
    """Posts the latest anchor on its own thread (an older one is replaced, never queued)."""

    def __init__(self, post: Callable[[Anchor], None]) -> None:
        self.post = post
        self._latest: Anchor | None = None
        self._wake = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="audit-anchor", daemon=True)
        self._thread.start()

    def __call__(self, anchor: Anchor) -> None:
        with self._wake:
            self._latest = anchor
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._latest is None and not self._stopped:
                    self._wake.wait()
                anchor, self._latest = self._latest, None
                stopped = self._stopped
            if anchor is not None:
                try:
                    self.post(anchor)
                except Exception as error:  # best effort: the trail holds regardless
                    log.warning("audit anchor not posted", error=str(error)[:300])
            if stopped:
                return

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout=10)


class Trail:
    """The audit log of one binary, with a checkpoint timer and an anchor poster."""

    def __init__(
        self,
        path: Path | None,
        source: str,
        settings: AuditSettings,
        post: Callable[[Anchor], None] | None = None,
    ) -> None:
        key = read_key(settings.key_file) if settings.key_file is not None else None
        self._poster = _Poster(post) if post is not None and key is not None else None
        self.log = AuditLog(
            path,
            source,
            retention=settings.retention,
            key=key,
            checkpoint_every=settings.checkpoint_every,
            stdout=settings.stdout,
            publish=self._poster,
        )
        self.interval = settings.checkpoint_interval
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        if key is not None and path is not None and self.interval > timedelta(0):
            self._timer = threading.Thread(target=self._tick, name="audit-checkpoint", daemon=True)
            self._timer.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval.total_seconds()):
            self.log.checkpoint()

    def close(self) -> None:
        """Sign what is left and stop (the anchor of the last checkpoint is posted)."""
        self._stop.set()
        if self._timer is not None:
            self._timer.join(timeout=10)
        self.log.checkpoint()
        if self._poster is not None:
            self._poster.stop()
