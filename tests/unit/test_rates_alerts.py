"""Workload starts per window and quota alerts with their cooldown."""

from __future__ import annotations

from datetime import timedelta
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from controller.policy.alerts import Measure, Sent, due, level_of
from controller.policy.pods import Pod
from controller.policy.rates import MAX_STARTS, Start, next_change, record, verdict
from tests.unit.fixtures import T0, later

HOUR = timedelta(hours=1)


def pod(name: str, minute: float) -> Pod:
    return Pod("u-a", name, f"uid-{name}", later(minute))


def test_starts_are_remembered_after_their_pods_are_gone() -> None:
    first = record([], [pod("a", 0), pod("b", 10)], later(11), HOUR)
    assert [s.pod for s in first] == ["a", "b"]
    # Pod a was deleted; its start still counts until it leaves the window.
    second = record(first, [pod("b", 10), pod("c", 20)], later(21), HOUR)
    assert [s.pod for s in second] == ["a", "b", "c"]
    assert [s.pod for s in record(second, [], later(65), HOUR)] == ["b", "c"]
    assert next_change(second, later(21), HOUR) == later(60)


def test_the_limit_is_reached_and_lifted_as_the_window_moves() -> None:
    starts = record([], [pod("a", 0), pod("b", 10), pod("c", 20)], later(21), HOUR)
    assert verdict(starts, 4, later(21), HOUR).limited is False
    limited = verdict(starts, 3, later(21), HOUR)
    assert limited.limited and limited.count == 3 and limited.next_allowed == later(60)
    # With a limit of 2, two of the three must leave: the second one's expiry.
    assert verdict(starts, 2, later(21), HOUR).next_allowed == later(70)
    assert verdict(starts, None, later(21), HOUR).limited is False
    assert verdict((), 0, later(21), HOUR).limited


@given(st.lists(st.integers(0, 120), max_size=40), st.integers(0, 10), st.integers(0, 180))
def test_a_limited_account_is_free_exactly_when_promised(
    minutes: list[int], limit: int, at: int
) -> None:
    pods = [pod(f"p{i}", m) for i, m in enumerate(minutes) if m <= at]
    starts = record([], pods, later(at), HOUR)
    decided = verdict(starts, limit, later(at), HOUR)
    assert decided.limited == (len(starts) >= limit)
    if decided.next_allowed is not None:
        assert not verdict(starts, limit, decided.next_allowed, HOUR).limited
        just_before = decided.next_allowed - timedelta(seconds=1)
        assert verdict(starts, limit, just_before, HOUR).limited


def test_the_record_is_bounded() -> None:
    many = [Start(T0 + timedelta(seconds=i), f"u{i}", f"p{i}") for i in range(MAX_STARTS + 5)]
    assert len(record(many, [], later(30), HOUR)) == MAX_STARTS


def measure(used: int, limit: int | None) -> Measure:
    return Measure(
        "workloads",
        Fraction(used),
        None if limit is None else Fraction(limit),
        f"{used} of {limit} pods",
        "GPURateLimit/student",
    )


def test_levels() -> None:
    assert level_of(Fraction(3), Fraction(5)) is None
    assert level_of(Fraction(4), Fraction(5)) == 80
    assert level_of(Fraction(6), Fraction(5)) == 100
    assert level_of(Fraction(1), None) is None
    assert level_of(Fraction(1), Fraction(0)) == 100
    assert level_of(Fraction(0), Fraction(0)) is None


def test_alerts_repeat_only_after_the_cooldown() -> None:
    cooldown = timedelta(hours=4)
    alerts, sent, wake = due([measure(4, 5)], (), later(0), cooldown)
    assert [(a.metric, a.level) for a in alerts] == [("workloads", 80)]
    assert "workloads at once at 80%: 4 of 5 pods (limit from GPURateLimit/student)" in (
        alerts[0].message
    )
    assert sent == (Sent("workloads", 80, later(0)),) and wake == later(240)
    again, same, wake = due([measure(4, 5)], sent, later(239), cooldown)
    assert again == [] and same == sent and wake == later(240)
    # Reaching 100% is another alert, not held back by the 80% one.
    full, sent_full, _ = due([measure(5, 5)], sent, later(10), cooldown)
    assert [a.level for a in full] == [100] and len(sent_full) == 2
    later_alerts, _, _ = due([measure(4, 5)], sent, later(240), cooldown)
    assert [a.level for a in later_alerts] == [80]
    quiet, kept, wake = due([measure(1, 5), measure(9, None)], sent, later(300), cooldown)
    assert quiet == [] and kept == sent and wake is None
