"""Ended grants are deleted after the retention, only once their end is recorded, with a record."""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.policy.plan import Settings, Snapshot, plan
from controller.policy.retention import ENDED, ended_at
from tests.unit.fixtures import T0, a100_node, grant
from tests.unit.test_plan import ACCOUNTS, LIMITS, settle

DAY = timedelta(days=1)
KEEP = Settings(finished_grant_retention=DAY)


def world(*grants: object) -> Snapshot:
    return Snapshot(ACCOUNTS, LIMITS, list(grants), [], [a100_node()])  # type: ignore[arg-type]


def stored_at(snapshot: Snapshot, *moments: datetime) -> Snapshot:
    """The snapshot after the operator wrote its plans at each of ``moments``."""
    for moment in moments:
        snapshot = settle(snapshot, moment)
    return snapshot


def test_an_expired_grant_is_deleted_once_the_retention_has_passed_since_its_end() -> None:
    """A 2h grant from T0 ends at T0+2h; kept a day, it goes at T0+26h, not a moment before."""
    ended = stored_at(world(grant("paper")), T0, T0 + timedelta(hours=3))
    assert ended.grants[0].status is not None and ended.grants[0].status.state == "Expired"

    early = plan(ended, T0 + timedelta(hours=25), KEEP)
    assert early.deletions == []
    assert early.wake_at == T0 + timedelta(hours=26)

    due = plan(ended, T0 + timedelta(hours=26), KEEP)
    assert due.deletions == ["u-alice/paper"]
    (record,) = [r for r in due.audit if r.event_type == "grant.deleted"]
    assert record.details["reason"] == "retention"
    assert record.details["state"] == "Expired"
    assert record.details["usage"]["gpuHoursGranted"] == 2.0  # its usage survives it
    assert record.object_key == "u-alice/paper"  # recorded only if the deletion succeeded
    assert [e.reason for e in due.events if e.about.name == "paper"] == ["Deleted"]


def test_a_grant_is_not_deleted_before_its_final_status_is_stored() -> None:
    """Its end's audit record and final usage are written with that status: not yet here."""
    active = stored_at(world(grant("paper")), T0)
    decided = plan(active, T0 + timedelta(days=30), KEEP)
    assert decided.grant_status["u-alice/paper"].state == "Expired"
    assert decided.deletions == []
    assert any(r.event_type == "grant.expired" for r in decided.audit)


def test_unlimited_retention_keeps_ended_grants_forever() -> None:
    ended = stored_at(world(grant("paper")), T0, T0 + timedelta(hours=3))
    forever = Settings(finished_grant_retention=None)
    assert plan(ended, T0 + timedelta(days=3650), forever).deletions == []


def test_live_and_pending_grants_are_never_deleted_by_retention() -> None:
    long = grant("long", duration="48h")
    pending = grant("wants", user="bob@lab.example", namespace="u-bob", duration="8760h")
    snapshot = stored_at(world(long, pending), T0, T0 + timedelta(hours=1))
    minute = Settings(finished_grant_retention=timedelta(minutes=1))
    decided = plan(snapshot, T0 + timedelta(hours=47), minute)
    states = {k: s.state for k, s in decided.grant_status.items()}
    assert states == {"u-alice/long": "Active", "u-bob/wants": "Pending"}
    assert decided.deletions == []


def test_revoked_and_denied_grants_count_from_when_they_ended() -> None:
    revoked = grant("revoked", duration="8760h", revocation={"reason": "done"})
    denied = grant(
        "denied",
        user="bob@lab.example",
        namespace="u-bob",
        approval={"decision": "Denied", "approvedBy": "prof", "note": "no"},
    )
    snapshot = stored_at(world(revoked, denied), T0 + timedelta(hours=1), T0 + timedelta(hours=2))
    ends = {g.metadata.name: ended_at(g.status) for g in snapshot.grants if g.status}
    assert ends == {"revoked": T0 + timedelta(hours=1), "denied": T0 + timedelta(hours=1)}
    assert plan(snapshot, T0 + timedelta(hours=24, minutes=59), KEEP).deletions == []
    due = plan(snapshot, T0 + timedelta(hours=25), KEEP)
    assert sorted(due.deletions) == ["u-alice/revoked", "u-bob/denied"]


def test_a_grant_being_deleted_is_not_deleted_again() -> None:
    ended = stored_at(world(grant("paper")), T0, T0 + timedelta(hours=3))
    (paper,) = ended.grants
    deleting = paper.model_copy(
        update={"metadata": paper.metadata.model_copy(update={"deletion_timestamp": T0})}
    )
    assert plan(world(deleting), T0 + timedelta(days=5), KEEP).deletions == []


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(["30m", "2h", "24h"]),
    st.integers(0, 72).map(lambda h: timedelta(hours=h)),
    st.integers(0, 200).map(lambda h: T0 + timedelta(hours=h)),
)
def test_only_ended_grants_past_the_retention_are_deleted(
    duration: str, keep: timedelta, now: datetime
) -> None:
    snapshot = stored_at(world(grant("g", duration=duration)), T0, now)
    decided = plan(snapshot, now, Settings(finished_grant_retention=keep))
    status = decided.grant_status["u-alice/g"]
    end = ended_at(status)
    should = status.state in ENDED and end is not None and end + keep <= now
    assert decided.deletions == (["u-alice/g"] if should else [])
