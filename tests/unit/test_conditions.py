"""Conditions recomputed every pass: a transition time moves only when the status changes.

So recomputing an unchanged object writes an unchanged status (no write, no
watch event), while `kubectl wait --for=condition=...` and people reading
`lastTransitionTime` see when the state really changed.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.policy.conditions import Want, find, merge
from tests.unit.fixtures import later


def test_a_new_condition_starts_now_and_records_the_generation() -> None:
    (ready,) = merge(None, [Want("Ready", True, "Active", "in force")], later(1), 4)
    assert (ready.type, ready.status, ready.reason, ready.message) == (
        "Ready",
        "True",
        "Active",
        "in force",
    )
    assert ready.last_transition_time == later(1) and ready.observed_generation == 4


def test_a_changed_reason_or_message_keeps_the_transition_time() -> None:
    first = merge(None, [Want("Ready", True, "Active", "1 GPU")], later(1), 1)
    (again,) = merge(first, [Want("Ready", True, "Extended", "until 18:00")], later(5), 2)
    assert again.last_transition_time == later(1)
    assert (again.reason, again.message, again.observed_generation) == (
        "Extended",
        "until 18:00",
        2,
    )


def test_a_flipped_status_moves_the_transition_time() -> None:
    first = merge(None, [Want("Ready", True, "Active", "in force")], later(1), 1)
    (flipped,) = merge(first, [Want("Ready", False, "Expired", "ended")], later(5), 1)
    assert (flipped.status, flipped.last_transition_time) == ("False", later(5))


def test_the_wanted_conditions_are_written_in_order_and_only_they() -> None:
    first = merge(None, [Want("Stale", True, "Old", "gone next")], later(0), 1)
    wanted = [Want("Ready", True, "A", "a"), Want("Approved", True, "B", "b")]
    merged = merge(first, wanted, later(1), 1)
    assert [c.type for c in merged] == ["Ready", "Approved"]
    assert find(merged, "Stale") is None
    assert find(merged, "Approved") == merged[1]
    assert find(None, "Ready") is None


WANTS = st.lists(
    st.builds(
        Want,
        st.sampled_from(["Ready", "Approved", "OverUse"]),
        st.booleans(),
        st.sampled_from(["A", "B"]),
        st.sampled_from(["x", "y"]),
    ),
    max_size=3,
    unique_by=lambda w: w.type,
)


@settings(deadline=None)
@given(WANTS, WANTS)
def test_recomputing_the_same_conditions_later_changes_nothing(
    before: list[Want], now: list[Want]
) -> None:
    stored = merge(merge(None, before, later(0), 1), now, later(1), 2)
    assert merge(stored, now, later(9), 2) == stored
    for condition, want in zip(stored, now, strict=True):
        old = next((w for w in before if w.type == want.type), None)
        unchanged = old is not None and old.status == want.status
        assert condition.last_transition_time == (later(0) if unchanged else later(1))
