"""Leader election on a coordination.k8s.io Lease: the decisions, without I/O.

Two operator replicas run; only the one holding the Lease writes. The rules are
client-go's `leaderelection`:

- A candidate reads the Lease every ``retry_period``. It may take the Lease when
  nobody holds it (no Lease, or an empty ``holderIdentity``: released by a
  leader that shut down), or when the record has not changed for the holder's
  ``leaseDurationSeconds`` *as measured on the candidate's own monotonic
  clock*, from the moment the candidate first saw that record. The times
  written in the Lease are for people; clocks of different machines are never
  compared.
- The holder renews every ``retry_period``. It is the leader only until
  ``renew_deadline`` after it *sent* its last successful write (it may have
  landed at any moment after that). ``renew_deadline`` is shorter than the lease
  duration, so a leader that cannot renew stops writing at least
  ``lease_duration - renew_deadline`` before anyone else may take over: a
  candidate saw the renewal no earlier than it was sent, and waits the full
  lease duration from then.
- Every write of the Lease is conditional on the resourceVersion read, so two
  candidates never both succeed in taking it.

Leadership is a deadline, not a flag: `Leading.valid` is judged against the
clock at the moment of each write, so a stalled process (stopped, swapped out,
starved of CPU) that wakes up after its deadline finds itself fenced without
having been told.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta


@dataclass(frozen=True)
class ElectionTimings:
    """`--leader-lease-duration`, `--leader-renew-deadline`, `--leader-retry-period`."""

    lease_duration: timedelta = timedelta(seconds=15)
    renew_deadline: timedelta = timedelta(seconds=10)
    retry_period: timedelta = timedelta(seconds=2)

    def __post_init__(self) -> None:
        seconds = self.lease_duration.total_seconds()
        if seconds < 1 or seconds != int(seconds):
            raise ValueError(
                "--leader-lease-duration must be a whole number of seconds, at least 1s "
                f"(a Lease stores whole seconds), got {seconds:g}s"
            )
        if not timedelta(0) < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "--leader-renew-deadline must be longer than 0s and shorter than "
                "--leader-lease-duration (the difference is the margin between the old "
                "leader's last write and the new leader's first)"
            )
        if not timedelta(0) < self.retry_period < self.renew_deadline:
            raise ValueError(
                "--leader-retry-period must be longer than 0s and shorter than "
                "--leader-renew-deadline (a leader must get to retry before its deadline)"
            )

    @property
    def margin(self) -> timedelta:
        """The least time between a fenced leader's last write and a new leader's first."""
        return self.lease_duration - self.renew_deadline


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease's spec says (``holder`` is "" once released)."""

    holder: str
    duration_s: int
    acquired: datetime | None = None
    renewed: datetime | None = None
    transitions: int = 0


@dataclass(frozen=True)
class Observed:
    """The Lease as last read, and when (local monotonic seconds) that record was first seen.

    ``record`` None: no Lease exists. ``version`` is its resourceVersion, the
    condition of the next write.
    """

    record: LeaseRecord | None
    version: str | None
    first_seen: float


def observe(
    previous: Observed | None, record: LeaseRecord | None, version: str | None, now: float
) -> Observed:
    """The new observation: the clock restarts only when the record itself changed.

    A record re-read unchanged keeps the moment it was first seen, so a holder
    that stopped renewing expires ``duration_s`` after the last change this
    replica saw, whatever the times written in it say.
    """
    if previous is not None and previous.record == record:
        return Observed(record, version, previous.first_seen)
    return Observed(record, version, now)


def expired(observed: Observed, now: float) -> bool:
    """May a candidate take this Lease now?"""
    record = observed.record
    if record is None or not record.holder:
        return True
    return now - observed.first_seen >= record.duration_s


@dataclass(frozen=True)
class Wait:
    """Someone else leads (or the Lease cannot be had yet): read again later."""

    holder: str


@dataclass(frozen=True)
class Write:
    """Create the Lease (``version`` None) or replace it at ``version``."""

    record: LeaseRecord
    version: str | None
    create: bool
    acquire: bool
    """True when this write takes the Lease (a new term); False when it renews ours."""


Step = Wait | Write


def next_step(
    identity: str, observed: Observed, now: float, wall: datetime, timings: ElectionTimings
) -> Step:
    """What ``identity`` does after reading the Lease as ``observed``."""
    duration = int(timings.lease_duration.total_seconds())
    record = observed.record
    if record is None:
        taken = LeaseRecord(identity, duration, wall, wall, 0)
        return Write(taken, None, create=True, acquire=True)
    if record.holder == identity:
        # Ours (renewing, or our own previous term that lapsed: nobody took it since
        # the version we read, or the conditional write fails).
        renewed = replace(record, duration_s=duration, renewed=wall)
        return Write(renewed, observed.version, create=False, acquire=False)
    if expired(observed, now):
        taken = LeaseRecord(identity, duration, wall, wall, record.transitions + 1)
        return Write(taken, observed.version, create=False, acquire=True)
    return Wait(record.holder)


@dataclass(frozen=True)
class Leading:
    """This replica's term: valid until ``renew_deadline`` after its last successful write."""

    term: int
    since: float
    valid_until: float

    def valid(self, now: float) -> bool:
        return now < self.valid_until


def after_write(
    state: Leading | None, step: Write, sent_at: float, terms: int, timings: ElectionTimings
) -> Leading:
    """The term after ``step`` succeeded (it was sent at ``sent_at``).

    A new term starts when the Lease was taken or when our previous term had
    lapsed (we stopped writing then; others' state may have moved on, so what
    a leader keeps in memory must be read again). ``terms`` counts the terms
    this replica has had so far.
    """
    deadline = sent_at + timings.renew_deadline.total_seconds()
    if state is None or step.acquire or not state.valid(sent_at):
        return Leading(terms + 1, sent_at, deadline)
    return Leading(state.term, state.since, deadline)


def released(record: LeaseRecord, wall: datetime) -> LeaseRecord:
    """What a leader writes when it stops: held by nobody, so a candidate takes it at once."""
    return replace(record, holder="", duration_s=1, renewed=wall)


def stale_in_cache(listed: dict[str, str], cached: dict[str, str | None]) -> list[str]:
    """Objects a new leader's watch cache has not caught up with yet (keys, sorted).

    ``listed``: key -> resourceVersion from a consistent list made after taking the
    Lease; ``cached``: the same from the watch cache. An object is caught up when
    the cache holds that version or a later one (kube-apiserver's versions are
    etcd revisions, increasing integers; anything else must match exactly).
    Objects the cache holds but the list does not were deleted meanwhile: they
    hold nothing more than the cache says, so they never block.
    """
    behind = []
    for key, version in listed.items():
        have = cached.get(key)
        newer = (
            have is not None and have.isdigit() and version.isdigit() and int(have) > int(version)
        )
        if have != version and not newer:
            behind.append(key)
    return sorted(behind)
