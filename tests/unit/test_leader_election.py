"""Leader election: never two writers, a takeover only after the old leader is fenced.

The class of fault: two operator replicas writing at once (both auto-approve,
both hand a device out, both record the same transition), or a failover that
never comes. The rules (`controller.policy.leadership`) are checked on their
own, then `LeaderElector` runs against an in-memory Lease with fake clocks
(each elector its own, with its own offset: only durations on one clock are
ever compared) through random schedules of renewals, crashes, pauses, outages
and lost responses.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes import client

from controller.operator.election import LeaderElector, LeaseConflictError, Standalone
from controller.operator.writer import Writer
from controller.policy import leadership
from controller.policy.leadership import ElectionTimings, LeaseRecord, Observed
from controller.runtime.audit import AuditLog, read_records

TIMINGS = ElectionTimings()  # 15 s lease, 10 s renew deadline, 2 s retry
T0 = datetime(2025, 3, 1, 12, tzinfo=UTC)


class MemoryLease:
    """A Lease as the apiserver keeps it: versioned, conditional writes, can be away."""

    def __init__(self) -> None:
        self.record: LeaseRecord | None = None
        self.version = 0
        self.down = False
        self.lose_responses = False
        """Writes land but the caller hears an error (a timeout after the commit)."""

    def read(self) -> tuple[LeaseRecord, str] | None:
        if self.down:
            raise ConnectionError("apiserver away")
        return None if self.record is None else (self.record, str(self.version))

    def _commit(self, record: LeaseRecord) -> str:
        self.record, self.version = record, self.version + 1
        if self.lose_responses:
            raise TimeoutError("response lost")
        return str(self.version)

    def create(self, record: LeaseRecord) -> str:
        if self.down:
            raise ConnectionError("apiserver away")
        if self.record is not None:
            raise LeaseConflictError
        return self._commit(record)

    def replace(self, record: LeaseRecord, version: str) -> str:
        if self.down:
            raise ConnectionError("apiserver away")
        if version != str(self.version):
            raise LeaseConflictError
        return self._commit(record)


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(store: MemoryLease, identity: str, clock: Clock, offset: float = 0.0) -> LeaderElector:
    return LeaderElector(
        store,
        identity,
        TIMINGS,
        clock=lambda: clock.now + offset,
        wall=lambda: T0 + timedelta(seconds=clock.now),
    )


# -- the rules --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lease", "renew", "retry", "says"),
    [
        (timedelta(seconds=15.5), timedelta(seconds=10), timedelta(seconds=2), "whole number"),
        (timedelta(seconds=15), timedelta(seconds=15), timedelta(seconds=2), "--leader-renew"),
        (timedelta(seconds=15), timedelta(seconds=10), timedelta(seconds=10), "--leader-retry"),
        (timedelta(seconds=15), timedelta(seconds=10), timedelta(0), "--leader-retry"),
    ],
)
def test_timings_that_could_let_two_leaders_overlap_are_refused_naming_the_flag(
    lease: timedelta, renew: timedelta, retry: timedelta, says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        ElectionTimings(lease, renew, retry)


def test_a_record_reread_unchanged_keeps_the_moment_it_was_first_seen() -> None:
    held = LeaseRecord("a", 15, T0, T0, 0)
    first = leadership.observe(None, held, "1", now=100.0)
    again = leadership.observe(first, held, "1", now=110.0)
    assert again.first_seen == 100.0
    renewed = leadership.observe(
        again, LeaseRecord("a", 15, T0, T0 + timedelta(seconds=2)), "2", 112
    )
    assert renewed.first_seen == 112.0


def test_a_held_lease_is_taken_only_a_full_duration_after_its_last_change_was_seen() -> None:
    held = Observed(LeaseRecord("a", 15, T0, T0, 3), "7", first_seen=100.0)
    assert leadership.next_step("b", held, 114.9, T0, TIMINGS) == leadership.Wait("a")
    step = leadership.next_step("b", held, 115.0, T0, TIMINGS)
    assert isinstance(step, leadership.Write)
    assert (step.acquire, step.version, step.record.holder, step.record.transitions) == (
        True,
        "7",
        "b",
        4,
    )


def test_a_released_or_missing_lease_is_taken_at_once_and_our_own_is_renewed() -> None:
    released = Observed(leadership.released(LeaseRecord("a", 15, T0, T0), T0), "8", 100.0)
    assert isinstance(leadership.next_step("b", released, 100.0, T0, TIMINGS), leadership.Write)
    missing = leadership.next_step("b", Observed(None, None, 100.0), 100.0, T0, TIMINGS)
    assert isinstance(missing, leadership.Write) and missing.create
    ours = leadership.next_step("a", Observed(LeaseRecord("a", 15), "9", 0.0), 1.0, T0, TIMINGS)
    assert isinstance(ours, leadership.Write) and not ours.acquire


def test_a_new_leader_waits_for_objects_its_cache_has_not_seen_at_their_listed_version() -> None:
    listed = {"u-a/g1": "100", "u-a/g2": "105", "node/n1": "90", "u-a/g3": "abc"}
    cached: dict[str, str | None] = {"u-a/g1": "100", "u-a/g2": "99", "node/n1": "120"}
    assert leadership.stale_in_cache(listed, cached) == ["u-a/g2", "u-a/g3"]
    cached.update({"u-a/g2": "105", "u-a/g3": "abc", "u-a/deleted-since": "50"})
    assert leadership.stale_in_cache(listed, cached) == []


# -- the elector against a Lease --------------------------------------------------


def test_the_first_replica_leads_and_stays_leader_while_it_renews() -> None:
    store, clock = MemoryLease(), Clock()
    a = elector(store, "a", clock)
    a.attempt()
    assert a.leading() and a.term() == 1
    for _ in range(20):
        clock.now += 2
        a.attempt()
    assert a.leading() and a.term() == 1
    assert store.record is not None and store.record.holder == "a"


def test_a_leader_that_cannot_renew_stops_writing_at_its_renew_deadline_by_the_clock_alone() -> (
    None
):
    """No thread needs to run for the fence: `leading` compares the clock with the deadline."""
    store, clock = MemoryLease(), Clock()
    a = elector(store, "a", clock)
    a.attempt()
    sent = clock.now
    store.down = True
    clock.now = sent + 9.9
    a.attempt()  # fails: the apiserver is away
    assert a.leading()
    clock.now = sent + 10.0
    assert not a.leading() and a.term() is None


def test_the_follower_takes_over_a_killed_leader_within_lease_duration_plus_two_retries() -> None:
    store, clock = MemoryLease(), Clock()
    a, b = elector(store, "a", clock), elector(store, "b", clock, offset=-5000.0)
    a.attempt()
    b.attempt()
    assert a.leading() and not b.leading()
    # a renews at 1002, 1004; b reads every 2 s, one second out of step.
    clock.now += 1
    for _ in range(2):
        clock.now += 1
        a.attempt()
        clock.now += 1
        b.attempt()
    killed = clock.now  # a renewed last at killed - 1
    while not b.leading():
        clock.now += TIMINGS.retry_period.total_seconds()
        b.attempt()
    failover = clock.now - killed
    assert 14 <= failover <= 15 + 2 * 2, failover
    assert b.term() == 1 and store.record is not None and store.record.transitions == 1


def test_a_released_lease_is_taken_at_the_followers_next_read() -> None:
    store, clock = MemoryLease(), Clock()
    a, b = elector(store, "a", clock), elector(store, "b", clock)
    a.attempt()
    b.attempt()
    a.resign()
    assert not a.leading()
    assert a.release()
    clock.now += 2
    b.attempt()
    assert b.leading()


def test_of_two_candidates_for_an_expired_lease_only_one_gets_it() -> None:
    store, clock = MemoryLease(), Clock()
    a, b, c = (elector(store, name, clock) for name in "abc")
    a.attempt()
    b.attempt()
    c.attempt()
    clock.now += 16  # a is gone; b and c both saw its last record 16 s ago
    read = store.read()
    assert read is not None
    b.observed = c.observed = Observed(read[0], read[1], clock.now - 16)
    b.attempt()
    c.store = _stale_reader(store, read)  # c decides from the same read as b
    c.attempt()
    assert [e.leading() for e in (b, c)] == [True, False]


def _stale_reader(store: MemoryLease, read: tuple[LeaseRecord, str]) -> MemoryLease:
    """A view of ``store`` whose reads return ``read``: c read before b wrote."""

    class Stale(MemoryLease):
        def read(self) -> tuple[LeaseRecord, str] | None:
            return read

        def replace(self, record: LeaseRecord, version: str) -> str:
            return store.replace(record, version)

    return Stale()


def test_a_paused_leader_that_wakes_after_a_takeover_does_not_write() -> None:
    store, clock = MemoryLease(), Clock()
    a, b = elector(store, "a", clock), elector(store, "b", clock)
    a.attempt()
    b.attempt()
    for _ in range(10):  # a is stopped (SIGSTOP); b watches the lease go stale
        clock.now += 2
        b.attempt()
    assert b.leading()
    assert not a.leading()  # woken: its deadline passed while it slept
    a.attempt()  # it reads b's record and stands down
    assert not a.leading() and a.holder == "b"


def test_waiting_for_leadership_returns_the_term_once_the_lease_is_had() -> None:
    store, clock = MemoryLease(), Clock()
    a, b = elector(store, "a", clock), elector(store, "b", clock)
    a.attempt()
    b.attempt()

    async def scenario() -> int:
        waiting = asyncio.ensure_future(b.wait_leading())
        await asyncio.sleep(0)
        assert not waiting.done()
        a.resign()
        a.release()
        b.attempt()  # wakes the waiter through the loop
        return await asyncio.wait_for(waiting, 5)

    assert asyncio.run(scenario()) == 1
    assert asyncio.run(Standalone().wait_leading()) == 1


# -- the property: never two writers ----------------------------------------------


STEP = st.tuples(
    st.sampled_from(["attempt"] * 20 + ["crash", "outage", "lossy"]),
    st.integers(0, 2),
    st.floats(0.0, 4.0),
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(STEP, min_size=30, max_size=150),
    st.lists(st.floats(-1e6, 1e6), min_size=3, max_size=3),
    st.lists(st.integers(0, 2), max_size=3),
)
def test_no_schedule_of_renewals_crashes_pauses_and_outages_gives_two_writers_at_once(
    schedule: list[tuple[str, int, float]], offsets: list[float], paused: list[int]
) -> None:
    """Whenever a replica starts a term, every other live replica's window ended at least
    `lease_duration - renew_deadline` earlier; at no step do two replicas lead.

    Each step advances the shared time, then one replica acts; a replica in
    ``paused`` acts only in the schedule's first half (stopped, swapped out, or
    cut off from the apiserver while alive); `crash` replaces a replica by a new
    process with a new identity.
    """
    store, clock = MemoryLease(), Clock()
    incarnation = [0, 0, 0]

    def start(i: int) -> LeaderElector:
        incarnation[i] += 1
        return elector(store, f"r{i}-{incarnation[i]}", clock, offsets[i])

    replicas = [start(i) for i in range(3)]
    margin = TIMINGS.margin.total_seconds()
    takeovers = 0
    for step, (action, who, advance) in enumerate(schedule):
        clock.now += advance
        if who in paused and step > len(schedule) // 2:
            continue
        if action == "outage":
            store.down = not store.down
        elif action == "lossy":
            store.lose_responses = not store.lose_responses
        elif action == "crash":
            replicas[who] = start(who)
        else:
            before = replicas[who].state
            replicas[who].attempt()
            after = replicas[who].state
            if after is not None and (before is None or after.term != before.term):
                takeovers += 1
                began = after.since - offsets[who]
                for index, other in enumerate(replicas):
                    if index != who and other.state is not None:
                        ended = other.state.valid_until - offsets[index]
                        assert ended <= began - margin + 1e-6, (index, who)
        assert sum(r.leading() for r in replicas) <= 1


# -- the writer's fence -----------------------------------------------------------


def test_a_replica_that_may_not_write_sends_nothing_and_records_nothing(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl", source="test")
    leading = [True]
    writer = Writer(client.ApiClient(), audit, may_write=lambda: leading[0])
    sent: list[str] = []

    def record() -> None:
        audit.write("grant.active", "alice", {"grant": "u-alice/g"})

    async def scenario() -> tuple[bool, bool]:
        first = await writer.call("gpugrant/status", sent.append, "first", after=record)
        leading[0] = False
        second = await writer.call("gpugrant/status", sent.append, "second", after=record)
        return first, second

    assert asyncio.run(scenario()) == (True, False)
    assert sent == ["first"]
    assert [r["event_type"] for r in read_records(audit.path)] == ["grant.active"]  # type: ignore[arg-type]


# -- the settings -----------------------------------------------------------------


def test_leader_settings_come_from_flags_or_environment_and_bad_timings_stop_the_start() -> None:
    from controller.cli import options
    from controller.cli.main import build_parser

    args = build_parser().parse_args(["operator", "--leader-lease-duration=30s"])
    sources = options.resolve(args, {"DS01_LEADER_ELECTION": "false", "DS01_LEADER_IDENTITY": "p"})
    assert (args.leader_election, sources["leader_election"]) == (False, "env")
    assert (args.leader_identity, args.leader_lease) == ("p", "ds01-system/ds01-operator")
    assert args.leader_lease_duration == timedelta(seconds=30)

    env = {k: v for k, v in os.environ.items() if not k.startswith("DS01_")}
    done = subprocess.run(
        [sys.executable, "-m", "controller.cli.main", "operator", "--kubeconfig=/nonexistent"],
        env={**env, "DS01_LEADER_RENEW_DEADLINE": "20s"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--leader-renew-deadline must be longer than 0s and shorter than" in done.stderr
