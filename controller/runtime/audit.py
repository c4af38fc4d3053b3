"""The audit trail: JSON lines in DS01's envelope, hash-chained, written by operator and agents.

One event per line: `timestamp` (UTC, ISO 8601 with Z), `event_type`
(`category.action`), `schema_version` "1", `user`, `source`, `details`, and
the chain: `seq` and `prev` (the previous line's SHA-256; `auditchain`
explains and checks it), with a signed `audit.checkpoint` every
`checkpoint_every` records when the trail has a key. A line never exceeds
4 KB: oversized details are replaced by a truncation marker. Files rotate
daily (`audit.jsonl` -> `audit.jsonl.YYYY-MM-DD`) and are kept for
`retention` (30 days by default; None keeps them). With `stdout`, each line
is also printed, for a cluster's log collector. Logging is best effort: a
failing disk never stops enforcement, so `write` never raises; failures are
counted and logged instead.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from controller.runtime.auditchain import (
    CHECKPOINT,
    ROTATE,
    Anchor,
    checkpoint_mac,
    line_hash,
    trail_files,
)

MAX_LINE = 4096
SCHEMA_VERSION = "1"
RETENTION = timedelta(days=30)

log = structlog.get_logger("ds01.audit")


def envelope(
    event_type: str,
    user: str,
    source: str,
    details: dict[str, Any],
    now: datetime,
    *,
    chain: tuple[int, str] | None = None,
) -> str:
    """One audit line (without the newline), bounded to MAX_LINE bytes; ``chain`` is (seq, prev)."""
    record: dict[str, Any] = {
        "timestamp": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "event_type": event_type,
        "schema_version": SCHEMA_VERSION,
        "user": user,
        "source": source,
        "details": details,
    }
    if chain is not None:
        record["seq"], record["prev"] = chain
    line = json.dumps(record, separators=(",", ":"), default=str, ensure_ascii=False)
    if len(line.encode()) < MAX_LINE:
        return line
    record["details"] = {"truncated": True, "original_bytes": len(line.encode())}
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


Publish = Callable[[Anchor], None]
"""Where the latest checkpoint is kept outside the trail (best effort)."""


class AuditLog:
    """Appends chained audit lines to ``path``, rotating daily and pruning after ``retention``."""

    def __init__(
        self,
        path: Path | None,
        source: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        retention: timedelta | None = RETENTION,
        key: bytes | None = None,
        checkpoint_every: int = 1000,
        stdout: bool = False,
        publish: Publish | None = None,
    ) -> None:
        self.path = path
        self.source = source
        self.clock = clock
        self.retention = retention
        self.key = key
        self.checkpoint_every = checkpoint_every
        self.stdout = stdout
        self.publish = publish
        self.failures = 0
        self._lock = threading.Lock()
        self._day: str | None = None
        self._seq: int | None = None
        self._prev = ""
        self._since_checkpoint = 0

    def write(self, event_type: str, user: str, details: dict[str, Any]) -> None:
        """Record one event; never raises."""
        now = self.clock()
        if self.path is None:
            line = envelope(event_type, user, self.source, details, now)
            log.info("audit", audit=json.loads(line))
            return
        try:
            with self._lock:
                self._rotate(now)
                self._append(
                    envelope(event_type, user, self.source, details, now, chain=self._next())
                )
                self._since_checkpoint += 1
                if self.key is not None and self._since_checkpoint >= self.checkpoint_every:
                    self._checkpoint(now)
        except OSError as error:
            self.failures += 1
            log.warning("audit write failed", error=str(error), event_type=event_type)

    def checkpoint(self) -> None:
        """Sign the chain so far now (at shutdown, or on a timer); never raises."""
        if self.path is None or self.key is None:
            return
        try:
            with self._lock:
                if self._since_checkpoint:
                    now = self.clock()
                    self._rotate(now)
                    self._checkpoint(now)
        except OSError as error:
            self.failures += 1
            log.warning("audit checkpoint failed", error=str(error))

    def _next(self) -> tuple[int, str]:
        if self._seq is None:
            _end_torn_line(self.path)
            self._seq, self._prev = _resume(self.path)
        return self._seq + 1, self._prev

    def _append(self, line: str) -> None:
        assert self.path is not None
        data = line.encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, data + b"\n")
        finally:
            os.close(fd)
        self._seq = json.loads(line)["seq"]
        self._prev = line_hash(data)
        if self.stdout:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def _checkpoint(self, now: datetime) -> None:
        assert self.key is not None and self._seq is not None
        covers, chain = self._seq, self._prev
        timestamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        details = {
            "covers": covers,
            "chain": chain,
            "mac": checkpoint_mac(self.key, covers, chain, timestamp),
        }
        self._append(envelope(CHECKPOINT, "system", self.source, details, now, chain=self._next()))
        self._since_checkpoint = 0
        if self.publish is not None:
            try:
                self.publish(Anchor(covers, chain))
            except Exception as error:  # the anchor is best effort; the trail holds regardless
                log.warning("audit anchor not published", error=str(error)[:200])

    def _rotate(self, now: datetime) -> None:
        """Start a new day's file; its first record says where the chain came from, so
        records deleted from the start of the oldest day are told from pruned days."""
        assert self.path is not None
        today = now.astimezone(UTC).strftime("%Y-%m-%d")
        if self._day is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                written = datetime.fromtimestamp(self.path.stat().st_mtime, UTC)
                self._day = written.strftime("%Y-%m-%d")
            else:
                self._day = today
        if self._day != today and self.path.exists():
            rotated = self.path.with_name(f"{self.path.name}.{self._day}")
            self.path.rename(rotated)
            self._prune(now)
            self._day = today
            marker = {"previous_file": rotated.name}
            self._append(envelope(ROTATE, "system", self.source, marker, now, chain=self._next()))
        self._day = today

    def _prune(self, now: datetime) -> None:
        assert self.path is not None
        if self.retention is None:
            return
        cutoff = (now - self.retention).astimezone(UTC).strftime("%Y-%m-%d")
        for old in self.path.parent.glob(f"{self.path.name}.*"):
            if old.name.rsplit(".", 1)[-1] < cutoff:
                old.unlink(missing_ok=True)


def _end_torn_line(path: Path | None) -> None:
    """A write cut short (a crash) leaves a line without its newline: end it, so the next
    record starts its own line (the verifier reports the torn one)."""
    if path is None or not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) != b"\n":
            handle.write(b"\n")


def _resume(path: Path | None) -> tuple[int, str]:
    """The chain's end as the files left it: the last line's seq and hash (0 and "" if none)."""
    if path is None:
        return 0, ""
    last: bytes | None = None
    for file in reversed(trail_files(path)):
        lines = [line for line in file.read_bytes().split(b"\n") if line.strip()]
        if lines and last is None:
            last = lines[-1]  # what the next record chains to, torn or not
        for line in reversed(lines):
            try:
                return int(json.loads(line)["seq"]), line_hash(last or line)
            except (ValueError, KeyError, TypeError):
                continue  # a line from before the chain, or a torn write: the verifier says so
    return 0, line_hash(last) if last is not None else ""


def read_records(path: Path, *, bookkeeping: bool = False) -> list[dict[str, Any]]:
    """Every record under ``path``, oldest first: the rotated days, then the current file.

    Readers must not look at the current file alone: a record written just
    before midnight UTC is in yesterday's file once the next write rotates it.
    The chain's own records (checkpoints, day starts) are left out unless
    ``bookkeeping``.
    """
    records = []
    for file in trail_files(path):
        for line in file.read_text().splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn write; `ds01 audit verify` reports it
            if bookkeeping or record.get("event_type") not in (CHECKPOINT, ROTATE):
                records.append(record)
    return records
