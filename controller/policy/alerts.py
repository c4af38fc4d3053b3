"""Quota alerts as DS01 sends them: at 80% and 100%, at most once per cooldown.

Each measure (GPU allowance, workloads at once, memory) is judged on its own.
Only the highest level reached is sent; an alert of one (measure, level) is
sent again only after the cooldown (4 hours unless configured) and only if the
level still holds. When each alert was last sent is kept in the published
per-account object, so a restart neither repeats nor forgets one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction

LEVELS = (80, 100)


@dataclass(frozen=True)
class Measure:
    """One quota measure of an account, in words a person reads."""

    metric: str
    used: Fraction
    limit: Fraction | None
    """None: no limit, never alerted."""
    describe: str
    """``"1.6 of 2 GPU-equivalents"``."""
    source: str
    """Where the limit comes from (``GPURateLimit/student``)."""


@dataclass(frozen=True, order=True)
class Sent:
    """When an alert of one measure and level was last sent."""

    metric: str
    level: int
    at: datetime


@dataclass(frozen=True)
class Alert:
    """An alert to send now."""

    metric: str
    level: int
    message: str


def level_of(used: Fraction, limit: Fraction | None) -> int | None:
    """The highest alert level ``used`` reaches (None below the first)."""
    if limit is None:
        return None
    if limit == 0:
        return LEVELS[-1] if used > 0 else None
    percent = used * 100 / limit
    reached = [level for level in LEVELS if percent >= level]
    return reached[-1] if reached else None


def due(
    measures: Iterable[Measure], sent: Sequence[Sent], now: datetime, cooldown: timedelta
) -> tuple[list[Alert], tuple[Sent, ...], datetime | None]:
    """Alerts to send now, the new record of sent alerts, and when to look again."""
    last = {(s.metric, s.level): s for s in sent}
    alerts: list[Alert] = []
    wake: list[datetime] = []
    for measure in measures:
        level = level_of(measure.used, measure.limit)
        if level is None:
            continue
        previous = last.get((measure.metric, level))
        if previous is not None and now - previous.at < cooldown:
            wake.append(previous.at + cooldown)
            continue
        last[measure.metric, level] = Sent(measure.metric, level, now)
        wake.append(now + cooldown)
        what = "reached" if level == LEVELS[-1] else f"at {level}%"
        alerts.append(
            Alert(
                measure.metric,
                level,
                f"{_NAMES.get(measure.metric, measure.metric)} {what}: {measure.describe} "
                f"(limit from {measure.source}); {_ADVICE.get(measure.metric, '')}".rstrip("; "),
            )
        )
    return alerts, tuple(sorted(last.values())), min(wake, default=None)


_NAMES = {"gpu": "GPU allowance", "workloads": "workloads at once", "memory": "memory"}
_ADVICE = {
    "gpu": "new GPU pods are refused beyond it; delete GPU pods you no longer need "
    "or request a GPUGrant",
    "workloads": "delete finished pods to start new ones",
    "memory": "lower memory limits or delete pods you no longer need",
}
