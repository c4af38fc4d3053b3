"""Leader election for operator replicas: one writes, the others keep warm caches.

The decisions are `controller.policy.leadership` (client-go's rules); this
module reads and writes the Lease and keeps the term. It runs on its own
thread, not on kopf's event loop: a long planning pass must not keep the
leader from renewing, and leadership is a deadline that every write checks
(`Gate.leading`), so a process that stalls past its deadline is fenced
whether or not this thread ran.

Why not kopf's peering: two peers of the same priority both pause (a
Deployment's replicas cannot differ in priority), a crashed peer is noticed
only after its 60 s lifetime, a pause is observed asynchronously with no
deadline on the paused side's writes, and it does not cover the tasks the
operator runs beside kopf's handlers (the reconcile loop, pod lifecycle,
usage history). Both replicas run kopf with `standalone=True`: kopf's
indexes and watches only read, and every write goes through the gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

import structlog
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.operator import metrics
from controller.policy import leadership
from controller.policy.leadership import ElectionTimings, Leading, LeaseRecord, Observed

log = structlog.get_logger("ds01.operator.election")


class Gate(Protocol):
    """Who may write: every operator write asks `leading` right before it is sent."""

    identity: str

    def leading(self) -> bool: ...

    async def wait_leading(self) -> int:
        """Return the current term once this replica leads."""
        ...


class Standalone:
    """No election (`--leader-election=false`): this process always leads, in one term."""

    def __init__(self, identity: str = "ds01-operator") -> None:
        self.identity = identity

    def leading(self) -> bool:
        return True

    async def wait_leading(self) -> int:
        return 1


def default_identity() -> str:
    """Host name and a random suffix: unique per process, even for two on one host."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class LeaseConflictError(Exception):
    """The Lease changed since it was read (or exists already): someone else wrote it."""


class LeaseStore(Protocol):
    def read(self) -> tuple[LeaseRecord, str] | None: ...

    def create(self, record: LeaseRecord) -> str: ...

    def replace(self, record: LeaseRecord, version: str) -> str: ...


class KubeLease:
    """A coordination.k8s.io/v1 Lease through the official client."""

    def __init__(
        self, api: client.ApiClient, namespace: str, name: str, timeout_s: float = 5.0
    ) -> None:
        self.leases = client.CoordinationV1Api(api)
        self.namespace, self.name, self.timeout = namespace, name, timeout_s

    def read(self) -> tuple[LeaseRecord, str] | None:
        try:
            lease = self.leases.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self.timeout
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        spec = lease.spec or client.V1LeaseSpec()
        record = LeaseRecord(
            holder=spec.holder_identity or "",
            duration_s=spec.lease_duration_seconds or 0,
            acquired=spec.acquire_time,
            renewed=spec.renew_time,
            transitions=spec.lease_transitions or 0,
        )
        return record, _version(lease)

    def _body(self, record: LeaseRecord, version: str | None) -> client.V1Lease:
        return client.V1Lease(
            metadata=client.V1ObjectMeta(
                name=self.name,
                namespace=self.namespace,
                resource_version=version,
                labels={"app.kubernetes.io/part-of": "ds01-controller"},
            ),
            spec=client.V1LeaseSpec(
                holder_identity=record.holder,
                lease_duration_seconds=record.duration_s,
                acquire_time=record.acquired,
                renew_time=record.renewed,
                lease_transitions=record.transitions,
            ),
        )

    def create(self, record: LeaseRecord) -> str:
        try:
            done = self.leases.create_namespaced_lease(
                self.namespace, self._body(record, None), _request_timeout=self.timeout
            )
        except ApiException as error:
            if error.status == 409:
                raise LeaseConflictError from error
            raise
        return _version(done)

    def replace(self, record: LeaseRecord, version: str) -> str:
        try:
            done = self.leases.replace_namespaced_lease(
                self.name,
                self.namespace,
                self._body(record, version),
                _request_timeout=self.timeout,
            )
        except ApiException as error:
            if error.status == 409:
                raise LeaseConflictError from error
            raise
        return _version(done)


def _version(lease: client.V1Lease) -> str:
    meta = lease.metadata
    return str(meta.resource_version if meta is not None else "")


class LeaderElector:
    """Takes and renews the Lease every retry period; `leading` is judged by the clock.

    `attempt` is one round (read, decide, write); `start` runs rounds on a thread.
    ``clock`` is monotonic seconds, ``wall`` the time written into the Lease.
    """

    def __init__(
        self,
        store: LeaseStore,
        identity: str,
        timings: ElectionTimings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.identity = identity
        self.timings = timings
        self.clock, self.wall = clock, wall
        self.observed: Observed | None = None
        self.state: Leading | None = None
        self.terms = 0
        self.holder = ""
        """Who held the Lease when last read ("" when nobody did)."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._reported: int | None = None
        """The term last logged (None: not leading), so a deadline that lapsed between
        two rounds is logged too."""

    # -- the gate -------------------------------------------------------------------

    def leading(self) -> bool:
        state = self.state
        return state is not None and state.valid(self.clock())

    def term(self) -> int | None:
        state = self.state
        return state.term if state is not None and state.valid(self.clock()) else None

    async def wait_leading(self) -> int:
        if self._wake is None:
            self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        while True:
            term = self.term()
            if term is not None:
                return term
            self._wake.clear()
            # Woken by the thread when it takes the Lease; the timeout re-checks anyway.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.timings.retry_period.total_seconds())

    # -- one round ------------------------------------------------------------------

    def attempt(self) -> None:
        """Read the Lease, then take it, renew it or wait; never raises."""
        with self._lock:
            try:
                self._attempt()
            except Exception as error:  # the apiserver away: our deadline runs out alone
                log.warning("lease not read or written", error=str(error)[:300])
            now, was = self.term(), self._reported
            self._reported = now
        metrics.LEADER.set(1 if now is not None else 0)
        if now != was:
            self._changed(now)

    def _attempt(self) -> None:
        found = self.store.read()
        record, version = found if found is not None else (None, None)
        self.observed = leadership.observe(self.observed, record, version, self.clock())
        self.holder = record.holder if record is not None else ""
        step = leadership.next_step(
            self.identity, self.observed, self.clock(), self.wall(), self.timings
        )
        if isinstance(step, leadership.Wait):
            self.state = None  # someone else holds it: whatever we had is over
            return
        sent = self.clock()
        try:
            if step.create:
                written = self.store.create(step.record)
            else:
                assert step.version is not None
                written = self.store.replace(step.record, step.version)
        except LeaseConflictError:
            # Changed since we read it: if it was ours, someone took it. Read again next round.
            self.state = None
            return
        self.state = leadership.after_write(self.state, step, sent, self.terms, self.timings)
        self.terms = max(self.terms, self.state.term)
        self.observed = leadership.observe(self.observed, step.record, written, self.clock())
        self.holder = self.identity

    def _changed(self, now: int | None) -> None:
        if now is not None:
            log.info("leading", identity=self.identity, term=now)
        else:
            log.warning("not leading", identity=self.identity, holder=self.holder or None)
        if self._loop is not None and self._wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed at shutdown
                self._loop.call_soon_threadsafe(self._wake.set)

    # -- the thread -----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ds01-leader-election", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.attempt()
            self._stop.wait(self.timings.retry_period.total_seconds())

    def resign(self) -> None:
        """Stop taking part and stop writing at once (shutdown); `release` comes after."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timings.renew_deadline.total_seconds())
        with self._lock:
            self.state = None
        metrics.LEADER.set(0)

    def release(self) -> bool:
        """Hand the Lease back if it still names us, so another replica takes it at once.

        Call after `resign` and after the writes in flight have finished.
        """
        with self._lock:
            observed = self.observed
            if observed is None or observed.record is None or observed.version is None:
                return False
            if observed.record.holder != self.identity:
                return False
            try:
                self.store.replace(
                    leadership.released(observed.record, self.wall()), observed.version
                )
            except Exception as error:  # taken meanwhile, or the apiserver away: it expires
                log.info("lease not released", error=str(error)[:300])
                return False
        log.info("lease released", identity=self.identity)
        return True


def kube_elector(
    api: client.ApiClient, lease: str, identity: str | None, timings: ElectionTimings
) -> LeaderElector:
    """An elector on the Lease ``NAMESPACE/NAME``; without ``identity``, a unique one."""
    namespace, _, name = lease.partition("/")
    # Half the renew deadline: a slow apiserver's answer still counts (leadership runs
    # from when the write was sent), and a hung request leaves time for another try.
    timeout = max(1.0, timings.renew_deadline.total_seconds() / 2)
    store = KubeLease(api, namespace, name, timeout_s=timeout)
    return LeaderElector(store, identity or default_identity(), timings)
