"""GPU-hour budgets over rolling windows, integrated from observed rates."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from controller.policy.budget import (
    MAX_BUCKETS,
    Bucket,
    Ledger,
    accrue,
    advance,
    bucket_start,
    next_change,
    restores_at,
    used,
)
from tests.unit.fixtures import T0, later

HOUR = timedelta(hours=1)
WEEK = timedelta(hours=168)


def test_use_is_split_over_hourly_buckets() -> None:
    ledger = Ledger(rate=2.0, as_of=later(30))
    buckets = accrue(ledger, later(150), HOUR)
    assert [(b.start, b.end, round(b.hours, 6)) for b in buckets] == [
        (T0, later(60), 1.0),
        (later(60), later(120), 2.0),
        (later(120), later(180), 1.0),
    ]
    assert bucket_start(later(61), HOUR) == later(60)


def test_the_ledger_changes_only_when_something_happens() -> None:
    start = advance(Ledger(), 0.0, later(1), HOUR, WEEK)
    assert start == Ledger(rate=0.0, as_of=later(1))
    # Same rate, nothing recorded to expire: the very same record.
    assert advance(start, 0.0, later(500), HOUR, WEEK) is start
    busy = advance(start, 1.0, later(10), HOUR, WEEK)
    assert busy.as_of == later(10) and busy.rate == 1.0
    assert advance(busy, 1.0, later(50), HOUR, WEEK) is busy
    # The bucket it started in ended while in use: recorded.
    after = advance(busy, 1.0, later(70), HOUR, WEEK)
    assert after is not busy and round(after.buckets[0].hours, 6) == round(50 / 60, 6)
    assert round(used(after, later(70), WEEK), 6) == 1.0


def test_old_use_leaves_the_window_one_bucket_late_at_most() -> None:
    ledger = Ledger((Bucket(T0, later(60), 5.0),), 0.0, later(60))
    assert used(ledger, later(60) + WEEK - timedelta(seconds=1), WEEK) == 5.0
    assert used(ledger, later(60) + WEEK, WEEK) == 0.0
    pruned = advance(ledger, 0.0, later(60) + WEEK, HOUR, WEEK)
    assert pruned.buckets == ()


def test_next_change_and_restoration_times() -> None:
    ledger = Ledger(
        (Bucket(T0, later(60), 3.0), Bucket(later(60), later(120), 2.0)), 0.0, later(120)
    )
    assert restores_at(ledger, later(120), WEEK, 4.0) == later(60) + WEEK
    assert restores_at(ledger, later(120), WEEK, 2.0) == later(120) + WEEK
    assert restores_at(ledger, later(120), WEEK, 10.0) == later(120)
    assert restores_at(ledger, later(120), None, 4.0) is None
    assert next_change(ledger, later(120), HOUR, WEEK, 10.0) == later(60) + WEEK
    busy = Ledger((), 2.0, later(0))
    # 1 GPU-hour left at 2 GPUs: in half an hour, before the bucket ends.
    assert next_change(busy, later(0), HOUR, WEEK, 1.0) == later(30)
    assert next_change(busy, later(0), HOUR, WEEK, 5.0) == later(60)


def test_long_records_are_merged_not_dropped() -> None:
    ledger = Ledger(rate=1.0, as_of=T0)
    long = advance(ledger, 1.0, T0 + (MAX_BUCKETS + 10) * HOUR, HOUR, None)
    assert len(long.buckets) == MAX_BUCKETS
    assert round(sum(b.hours for b in long.buckets), 6) == MAX_BUCKETS + 10


observations = st.lists(
    st.tuples(st.integers(1, 200), st.sampled_from([0.0, 0.5, 1.0, 2.0, 2 / 7])),
    min_size=1,
    max_size=30,
)


@given(observations)
def test_accounted_hours_do_not_depend_on_when_passes_run(steps: list[tuple[int, float]]) -> None:
    """However often the operator looks, the hours are the integral of the observed rate."""
    ledger, now, expected, rate = advance(Ledger(), 0.0, T0, HOUR, None), T0, 0.0, 0.0
    for minutes, new_rate in steps:
        expected += rate * minutes / 60
        now += timedelta(minutes=minutes)
        ledger = advance(ledger, new_rate, now, HOUR, None)
        rate = new_rate
        assert abs(used(ledger, now, None) - expected) < 1e-6
        assert all(b.end - b.start >= HOUR for b in ledger.buckets)
