"""The durable usage history: accrual, month turns, encoding, bounds, reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from controller.policy import usagehistory as uh
from controller.policy.usagehistory import Figures, MonthRecord
from controller.policy.usagereport import report

T0 = datetime(2026, 3, 10, 9, 30, tzinfo=UTC)
H = timedelta(hours=1)

rates_strategy = st.dictionaries(
    st.sampled_from(["gpu-node-1", "gpu-node-2", "-"]),
    st.builds(
        Figures,
        used=st.sampled_from([0.0, 2 / 7, 0.5, 1.0, 2.0]),
        granted=st.sampled_from([0.0, 1.0, 2.0]),
        unused=st.sampled_from([0.0, 1.0]),
    ),
    max_size=3,
)


def integral(observations: list[tuple[datetime, dict[str, Figures]]], end: datetime) -> float:
    """Exact GPU-hours used of piecewise-constant rates."""
    total = 0.0
    for (at, rates), nxt in zip(observations, [*observations[1:], (end, {})], strict=True):
        total += sum(r.used for r in rates.values()) * (nxt[0] - at) / H
    return total


def replay(observations: list[tuple[datetime, dict[str, Figures]]]) -> dict[str, MonthRecord]:
    """What the operator would have stored, month by month, after these observations."""
    stored: dict[str, MonthRecord] = {}
    current: MonthRecord | None = None
    for at, rates in observations:
        for record in uh.advance(current, "kim@lab.example", ("student",), rates, at):
            stored[record.month] = record
            current = record
    return stored


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(min_value=1, max_value=900 * 3600), rates_strategy),
        min_size=1,
        max_size=12,
    )
)
def test_recorded_hours_add_up_to_the_integral_of_the_rates_across_month_turns(steps) -> None:
    at = datetime(2026, 3, 30, 12, 0, tzinfo=UTC)  # close to a month turn on purpose
    observations = []
    for gap, rates in steps:
        at += timedelta(seconds=gap)
        observations.append((at, rates))
    end = at + timedelta(hours=30)
    # The operator observes again at the end (as it does every few seconds).
    stored = replay([*observations, (end, observations[-1][1])])
    recorded = sum(
        figures.used
        for record in stored.values()
        for figures in uh.accrue(record, end).hours.values()
    )
    assert recorded == pytest.approx(integral(observations, end), rel=1e-5, abs=1e-6)


@settings(max_examples=100, deadline=None)
@given(rates_strategy, st.integers(min_value=0, max_value=600 * 3600))
def test_an_unchanged_rate_is_never_rewritten_and_covers_a_restart(rates, gap_s) -> None:
    first = uh.advance(None, "kim@lab.example", (), rates, T0)
    if not any(not r.is_zero() for r in rates.values()):
        assert first == []
        return
    (record,) = first
    reread = uh.decode(uh.encode(record))
    assert reread is not None
    later = T0 + timedelta(seconds=gap_s)
    if uh.month_of(later) == record.month:
        assert uh.advance(reread, "kim@lab.example", (), rates, later) == []
    stop = min(later, uh.month_end(record.month))
    used = sum(f.used for f in uh.accrue(reread, later).hours.values())
    expected = sum(r.used for r in rates.values()) * (stop - T0) / H
    assert used == pytest.approx(expected, abs=1e-3)


def test_a_month_turn_closes_the_old_month_and_carries_the_rate_into_the_new_one() -> None:
    start = datetime(2026, 1, 31, 22, 0, tzinfo=UTC)
    (opened,) = uh.advance(None, "kim@lab.example", ("student",), {"n1": Figures(used=1)}, start)
    closed, carried = uh.advance(
        opened, "kim@lab.example", ("student",), {}, datetime(2026, 2, 1, 3, 0, tzinfo=UTC)
    )
    assert (closed.month, closed.rates, closed.as_of) == ("2026-01", {}, uh.month_end("2026-01"))
    assert sum(f.used for f in closed.hours.values()) == pytest.approx(2.0)
    assert carried.month == "2026-02"
    assert carried.rates == {}
    assert sum(f.used for f in carried.hours.values()) == pytest.approx(3.0)


def test_a_clock_that_went_back_never_rewrites_a_later_month() -> None:
    (record,) = uh.advance(None, "a", (), {"n1": Figures(used=1)}, T0)
    assert uh.advance(record, "a", (), {}, T0 - timedelta(days=40)) == []


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.tuples(st.integers(min_value=0, max_value=743), st.sampled_from(["n1", "n2", "-"])),
        st.builds(
            Figures,
            used=st.floats(min_value=0, max_value=64),
            granted=st.floats(min_value=0, max_value=64),
            unused=st.floats(min_value=0, max_value=64),
            reaped=st.floats(min_value=0, max_value=64),
        ),
        max_size=60,
    )
)
def test_encoding_round_trips_to_four_decimals(hours) -> None:
    record = MonthRecord("kim@lab.example", "2026-03", ("student", "ta"), hours, {}, T0)
    back = uh.decode(uh.encode(record))
    assert back is not None
    expected = {k: f.rounded() for k, f in hours.items() if not f.rounded().is_zero()}
    assert dict(back.hours) == expected
    assert (back.user, back.groups, back.month, back.as_of) == (
        record.user,
        record.groups,
        record.month,
        record.as_of,
    )


def test_steady_use_encodes_as_one_line_per_node() -> None:
    (record,) = uh.advance(
        None, "a", (), {"n1": Figures(used=1, granted=2)}, uh.month_start("2026-03")
    )
    full = uh.accrue(record, uh.month_end("2026-03"))
    assert uh.encode(full)["hours"] == "0-743 n1 1 2 0 0\n"


@settings(max_examples=8, deadline=None)
@given(st.integers(min_value=1, max_value=40))
@example(40)  # about 900 KB unfolded: folds
def test_an_object_never_exceeds_its_bound_however_many_nodes(nodes) -> None:
    hours = {
        (h, f"node-{n:03d}"): Figures(used=(h * 7 + n) % 97 / 7)
        for h in range(0, 744)
        for n in range(nodes)
    }
    record = MonthRecord("a", "2026-03", (), hours)
    data = uh.encode(record)
    assert len(data["hours"].encode()) <= uh.MAX_BYTES
    back = uh.decode(data)
    assert back is not None
    assert sum(f.used for f in back.hours.values()) == pytest.approx(
        sum(f.used for f in hours.values()), rel=1e-4
    )


def test_a_damaged_record_is_refused_naming_the_key() -> None:
    data = uh.encode(MonthRecord("a", "2026-03", (), {(1, "n1"): Figures(used=1)}))
    with pytest.raises(ValueError, match=r"^hours: hours line 1"):
        uh.decode({**data, "hours": "1 n1 x 0 0 0\n"})
    with pytest.raises(ValueError, match=r"^month:"):
        uh.decode({**data, "month": "March"})
    with pytest.raises(ValueError, match=r"^rates:"):
        uh.decode({**data, "rates": "n1 1\n"})
    assert uh.decode({"format": "something/v9"}) is None


def test_history_is_kept_at_least_400_days() -> None:
    now = datetime(2027, 5, 15, tzinfo=UTC)
    assert not uh.expired("2026-04", now)  # ended 2026-05-01: 379 days ago
    assert uh.expired("2026-01", now)  # ended 2026-02-01: 468 days ago
    for month in ["2026-02", "2026-03", "2026-04"]:
        assert uh.expired(month, now) == (now - uh.month_end(month) >= timedelta(days=400))


def test_reaped_idle_time_is_charged_to_the_hour_of_the_stop() -> None:
    (record,) = uh.advance(None, "a", (), {"n1": Figures(used=1)}, T0)
    reaped = uh.add_reaped(record, "n1", 0.75, T0 + timedelta(minutes=50))
    index = int((T0 + timedelta(minutes=50) - uh.month_start("2026-03")) / H)
    assert reaped.hours[(index, "n1")].reaped == 0.75
    assert sum(f.used for f in reaped.hours.values()) == pytest.approx(50 / 60)


def _record(
    user: str, groups: tuple[str, ...], node: str, used: float, granted: float
) -> MonthRecord:
    return MonthRecord(
        user,
        "2026-03",
        groups,
        {(5, node): Figures(used=used, granted=granted, unused=granted - used)},
    )


def test_the_report_sums_by_user_group_and_node() -> None:
    records = [
        _record("kim", ("student",), "n1", 1.5, 2),
        _record("lee", ("student", "ta"), "n2", 0.5, 0),
        _record("ada", ("faculty",), "n1", 3, 4),
    ]
    since, until = uh.month_start("2026-03"), uh.month_end("2026-03")
    users = report(records, since, until, "user")
    assert [(r.key, r.figures.used) for r in users] == [("ada", 3), ("kim", 1.5), ("lee", 0.5)]
    assert users[1].used_of_granted == pytest.approx(75)
    assert users[2].used_of_granted is None
    groups = {r.key: r.figures.used for r in report(records, since, until, "group")}
    assert groups == {"student": 2.0, "faculty": 3, "ta": 0.5}
    nodes = {r.key: (r.figures.used, len(r.users)) for r in report(records, since, until, "node")}
    assert nodes == {"n1": (4.5, 2), "n2": (0.5, 1)}
    later = uh.month_start("2026-03") + timedelta(hours=6)
    assert report(records, later, until, "user") == []
