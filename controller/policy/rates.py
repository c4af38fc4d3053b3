"""Workload starts per rolling window (an hour unless the operator is told otherwise).

A start is a pod created in the account's namespace. Pods disappear when they
are deleted, so the starts of the window are recorded in the published
per-account object (pod uid, name, creation time) and merged with the pods
seen now; what is recorded survives restarts. A pod created and deleted
between two passes of the operator is not seen and not counted.

When the window holds as many starts as the policy allows, the pod-count line
of the account's ResourceQuota is held at the pods that exist, so nothing new
can start (no webhook is involved), until the oldest start leaves the window.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from controller.policy.pods import Pod

MAX_STARTS = 512
"""The most starts kept; a limit above this would not be enforceable from the record."""


@dataclass(frozen=True, order=True)
class Start:
    """One pod creation."""

    at: datetime
    uid: str
    pod: str


@dataclass(frozen=True)
class StartVerdict:
    """Whether new workloads may start, and from when again."""

    count: int
    limited: bool
    next_allowed: datetime | None = None


def record(
    stored: Iterable[Start], pods: Iterable[Pod], now: datetime, window: timedelta
) -> tuple[Start, ...]:
    """The starts inside the window: those recorded plus pods created in it, oldest first."""
    found = {s.uid: s for s in stored}
    for pod in pods:
        if pod.created is not None and pod.uid and pod.uid not in found:
            found[pod.uid] = Start(pod.created, pod.uid, pod.name)
    kept = sorted(s for s in found.values() if s.at > now - window)
    return tuple(kept[-MAX_STARTS:])


def verdict(
    starts: Sequence[Start], limit: int | None, now: datetime, window: timedelta
) -> StartVerdict:
    """Limited when the window already holds ``limit`` starts; free again when one leaves."""
    inside = sorted(s for s in starts if s.at > now - window)
    count = len(inside)
    if limit is None or count < limit:
        return StartVerdict(count, False)
    if limit == 0:
        return StartVerdict(count, True)
    # Dropping the oldest (count - limit + 1) starts brings the count below the limit.
    return StartVerdict(count, True, inside[count - limit].at + window)


def next_change(starts: Sequence[Start], now: datetime, window: timedelta) -> datetime | None:
    """When the next recorded start leaves the window."""
    return min((s.at + window for s in starts if s.at + window > now), default=None)
