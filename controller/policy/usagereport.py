"""The `sreport`-style usage report: GPU-hours per user, group or node over a period.

Reads month records (`controller.policy.usagehistory`); figures still growing
at a record's stored rates are added up to the report's end, so a report is
current even though the operator writes only when rates change. Whole hours:
an hour counts when its start lies in [floor(since), until).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from controller.policy.usagehistory import Figures, MonthRecord, accrue, month_start

By = Literal["user", "group", "node"]
NO_GROUP = "(none)"
_HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Row:
    """One line of the report."""

    key: str
    figures: Figures
    users: frozenset[str] = field(default_factory=frozenset)
    groups: tuple[str, ...] = ()

    @property
    def used_of_granted(self) -> float | None:
        """Used / granted, as a percentage; None without grants."""
        if self.figures.granted <= 0:
            return None
        return 100 * self.figures.used / self.figures.granted


def floor_hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def per_node(record: MonthRecord, since: datetime, until: datetime) -> dict[str, Figures]:
    """The record's figures per node for the hours starting in [floor(since), until)."""
    current = accrue(record, until)
    start = month_start(record.month)
    first = floor_hour(since)
    out: dict[str, Figures] = {}
    for (index, node), figures in current.hours.items():
        at = start + index * _HOUR
        if first <= at < until:
            out[node] = out.get(node, Figures()) + figures
    return out


def report(records: Iterable[MonthRecord], since: datetime, until: datetime, by: By) -> list[Row]:
    """Rows by ``by``, largest use first; keys without any figure are left out."""
    figures: dict[str, Figures] = {}
    users: dict[str, set[str]] = {}
    groups: dict[str, tuple[str, ...]] = {}
    for record in records:
        for node, amount in per_node(record, since, until).items():
            if by == "user":
                keys = [record.user]
                groups[record.user] = record.groups
            elif by == "group":
                keys = list(record.groups) or [NO_GROUP]
            else:
                keys = [node]
            for key in keys:
                figures[key] = figures.get(key, Figures()) + amount
                users.setdefault(key, set()).add(record.user)
    rows = [
        Row(key, amount.rounded(), frozenset(users[key]), groups.get(key, ()))
        for key, amount in figures.items()
        if not amount.is_zero()
    ]
    return sorted(rows, key=lambda r: (-r.figures.used, -r.figures.granted, r.key))
