"""The audit trail: JSON lines in DS01's envelope, written only by the operator and agents.

One event per line: `timestamp` (UTC, ISO 8601 with Z), `event_type`
(`category.action`), `schema_version` "1", `user`, `source`, `details`. A line
never exceeds 4 KB: oversized details are replaced by a truncation marker.
Files rotate daily (`audit.jsonl` -> `audit.jsonl.YYYY-MM-DD`) and are kept 30
days. Logging is best effort: a failing disk never stops enforcement, so
`write` never raises; failures are counted and logged instead.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

MAX_LINE = 4096
SCHEMA_VERSION = "1"
RETENTION = timedelta(days=30)

log = structlog.get_logger("ds01.audit")


def envelope(
    event_type: str, user: str, source: str, details: dict[str, Any], now: datetime
) -> str:
    """One audit line (without the newline), bounded to MAX_LINE bytes."""
    record = {
        "timestamp": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "event_type": event_type,
        "schema_version": SCHEMA_VERSION,
        "user": user,
        "source": source,
        "details": details,
    }
    line = json.dumps(record, separators=(",", ":"), default=str, ensure_ascii=False)
    if len(line.encode()) < MAX_LINE:
        return line
    record["details"] = {"truncated": True, "original_bytes": len(line.encode())}
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


class AuditLog:
    """Appends audit lines to ``path``, rotating daily and pruning after 30 days."""

    def __init__(
        self,
        path: Path | None,
        source: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.path = path
        self.source = source
        self.clock = clock
        self.failures = 0
        self._lock = threading.Lock()
        self._day: str | None = None

    def write(self, event_type: str, user: str, details: dict[str, Any]) -> None:
        """Record one event; never raises."""
        now = self.clock()
        line = envelope(event_type, user, self.source, details, now)
        if self.path is None:
            log.info("audit", audit=json.loads(line))
            return
        try:
            with self._lock:
                self._rotate(now)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                try:
                    os.write(fd, (line + "\n").encode())
                finally:
                    os.close(fd)
        except OSError as error:
            self.failures += 1
            log.warning("audit write failed", error=str(error), event_type=event_type)

    def _rotate(self, now: datetime) -> None:
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
            self.path.rename(self.path.with_name(f"{self.path.name}.{self._day}"))
            self._prune(now)
        self._day = today

    def _prune(self, now: datetime) -> None:
        assert self.path is not None
        cutoff = (now - RETENTION).astimezone(UTC).strftime("%Y-%m-%d")
        for old in self.path.parent.glob(f"{self.path.name}.*"):
            if old.name.rsplit(".", 1)[-1] < cutoff:
                old.unlink(missing_ok=True)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record under ``path``, oldest first: the rotated days, then the current file.

    Readers must not look at the current file alone: a record written just
    before midnight UTC is in yesterday's file once the next write rotates it.
    """
    days = sorted(path.parent.glob(f"{path.name}.*"))  # YYYY-MM-DD suffixes sort by date
    records = []
    for file in [*days, path]:
        if file.exists():
            text = file.read_text()
            records += [json.loads(line) for line in text.splitlines() if line.strip()]
    return records
