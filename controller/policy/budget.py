"""GPU-hours per rolling window, accumulated from what the agents report.

The operator sees GPU use only as a rate: the GPU-equivalents a user's
workloads hold right now (GPUNode status). The ledger integrates that rate
into time buckets (one hour by default, aligned to the epoch) and stores the
rate it last saw with the time it saw it, so

- the ledger changes only when the rate changes, a bucket fills up or an old
  bucket leaves the window — not on every pass;
- an operator restart loses nothing: the stored rate covers the time it was
  away (as grant usage accounting does);
- the windowed sum is conservative: a bucket counts whole while any part of it
  is inside the window, so use leaves the window at most one bucket late.

The ledger lives in the published per-account object, so it survives restarts
and the user can read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_BUCKETS = 256
"""More than this and the oldest buckets are merged (long windows, short buckets)."""


@dataclass(frozen=True)
class Bucket:
    """GPU-equivalent-hours used in [start, end)."""

    start: datetime
    end: datetime
    hours: float


@dataclass(frozen=True)
class Ledger:
    """Buckets (oldest first) accounted up to `as_of`, and the rate seen then."""

    buckets: tuple[Bucket, ...] = ()
    rate: float = 0.0
    as_of: datetime | None = None


def bucket_start(at: datetime, length: timedelta) -> datetime:
    """Start of the epoch-aligned bucket holding ``at``."""
    return EPOCH + ((at - EPOCH) // length) * length


def _hours(delta: timedelta) -> float:
    return delta.total_seconds() / 3600


def accrue(ledger: Ledger, now: datetime, length: timedelta) -> tuple[Bucket, ...]:
    """The buckets with the stored rate's use from `as_of` to ``now`` added."""
    buckets = list(ledger.buckets)
    if ledger.as_of is None or ledger.rate <= 0 or now <= ledger.as_of:
        return tuple(buckets)
    at = ledger.as_of
    while at < now:
        start = bucket_start(at, length)
        end = start + length
        until = min(end, now)
        hours = ledger.rate * _hours(until - at)
        if buckets and buckets[-1].start == start and buckets[-1].end == end:
            buckets[-1] = replace(buckets[-1], hours=round(buckets[-1].hours + hours, 9))
        else:
            buckets.append(Bucket(start, end, round(hours, 9)))
        at = until
    return tuple(buckets)


def _prune(
    buckets: Sequence[Bucket], now: datetime, window: timedelta | None
) -> tuple[Bucket, ...]:
    kept = [b for b in buckets if window is None or b.end > now - window]
    while len(kept) > MAX_BUCKETS:
        first, second = kept[0], kept[1]
        kept[:2] = [Bucket(first.start, second.end, round(first.hours + second.hours, 9))]
    return tuple(kept)


def advance(
    ledger: Ledger,
    rate: float,
    now: datetime,
    length: timedelta,
    window: timedelta | None,
    *,
    force: bool = False,
) -> Ledger:
    """The ledger after seeing ``rate`` at ``now``; the same object when nothing changed.

    It is rewritten only when the rate changed, the open bucket ended while
    in use, a bucket left the window, or ``force`` asks for figures as of now.
    """
    as_of = ledger.as_of
    crossed = (
        as_of is not None
        and ledger.rate > 0
        and bucket_start(now, length) != bucket_start(as_of, length)
    )
    expired = window is not None and any(b.end <= now - window for b in ledger.buckets)
    if as_of is not None and rate == ledger.rate and not (crossed or expired or force):
        return ledger
    if as_of is None and rate == 0 and not ledger.buckets:
        return Ledger(rate=0.0, as_of=now)
    buckets = _prune(accrue(ledger, now, length), now, window)
    return Ledger(buckets, rate, now)


def used(ledger: Ledger, now: datetime, window: timedelta | None) -> float:
    """GPU-hours inside the window ending at ``now``, including use not yet in a bucket."""
    recorded = sum(b.hours for b in ledger.buckets if window is None or b.end > now - window)
    pending = ledger.rate * _hours(now - ledger.as_of) if ledger.as_of and now > ledger.as_of else 0
    return recorded + pending


def next_change(
    ledger: Ledger,
    now: datetime,
    length: timedelta,
    window: timedelta | None,
    budget: float | None,
) -> datetime | None:
    """When the ledger or the exhaustion verdict next changes without a new observation."""
    times: list[datetime] = []
    if window is not None:
        times += [b.end + window for b in ledger.buckets if b.end + window > now]
    if ledger.rate > 0:
        times.append(bucket_start(now, length) + length)
        if budget is not None:
            left = budget - used(ledger, now, window)
            if left > 0:
                times.append(now + timedelta(hours=left / ledger.rate))
    return min(times, default=None)


def restores_at(
    ledger: Ledger, now: datetime, window: timedelta | None, budget: float
) -> datetime | None:
    """The earliest time use falls below ``budget`` if nothing more is used (None: never)."""
    if window is None:
        return None
    total = used(ledger, now, window)
    if total < budget:
        return now
    for bucket in ledger.buckets:
        if bucket.end + window <= now:
            continue  # already outside the window, not in the total
        total -= bucket.hours
        if total < budget:
            return bucket.end + window
    # What is left is use since the last record; it leaves the window a window from now.
    return now + window
