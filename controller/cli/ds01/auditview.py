"""`kubectl ds01 audit`: filter and summarise audit records (pure)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

HEADERS = ["TIME (UTC)", "TYPE", "USER", "SOURCE", "DETAILS"]
_FIRST = ("grant", "namespace", "pod", "message", "reason", "metric", "level", "stopped")


def timestamp(record: Mapping[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(record.get("timestamp", "")).replace("Z", "+00:00"))
    except ValueError:
        return None


def matches(
    record: Mapping[str, Any], since: datetime | None, user: str | None, types: str | None
) -> bool:
    """``types``: an event type, a category (`grant`), or a glob (`quota.budget_*`)."""
    at = timestamp(record)
    if since is not None and (at is None or at < since):
        return False
    if user is not None and record.get("user") != user:
        return False
    if types:
        kind = str(record.get("event_type", ""))
        pattern = types if any(c in types for c in "*?[") or "." in types else f"{types}.*"
        if not fnmatch.fnmatchcase(kind, pattern):
            return False
    return True


def details(record: Mapping[str, Any]) -> str:
    """The details in one line: the telling keys first, the rest after."""
    found = record.get("details")
    if not isinstance(found, Mapping):
        return ""
    keys = [k for k in _FIRST if k in found] + sorted(k for k in found if k not in _FIRST)
    return " ".join(f"{k}={found[k]}" for k in keys if found[k] not in (None, "", [], {}))


def rows(
    records: Iterable[Mapping[str, Any]],
    since: datetime | None = None,
    user: str | None = None,
    types: str | None = None,
) -> list[list[str]]:
    out = []
    for record in records:
        if not matches(record, since, user, types):
            continue
        at = timestamp(record)
        out.append(
            [
                at.strftime("%Y-%m-%d %H:%M:%S") if at else "?",
                str(record.get("event_type", "")),
                str(record.get("user", "")),
                str(record.get("source", "")),
                details(record),
            ]
        )
    return out
