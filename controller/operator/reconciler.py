"""The level-triggered loop: snapshot the watch caches, plan, write, sleep until needed.

kopf keeps one index per kind (small parsed projections of each object) and
pokes this loop on every watch event. A pass always starts from the whole
snapshot, so a missed or coalesced event costs nothing: the next pass sees
the same objects. The loop sleeps until the next poke or the plan's next
deadline (a grant starting, warning, expiring; an exemption ending), so
deadlines come from the objects and survive restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from controller.operator import handover, metrics
from controller.operator.election import Gate, Standalone
from controller.operator.observer import Observer
from controller.operator.writer import Writer
from controller.policy.plan import DecisionCache, Namespace, Plan, Settings, Snapshot, plan
from controller.policy.records import EventRecord

log = structlog.get_logger("ds01.operator")

INDEXES = (
    "namespace_index",
    "limit_index",
    "grant_index",
    "exemption_index",
    "node_index",
    "pod_index",
    "resourcequotas_index",
    "limitranges_index",
    "configmaps_index",
)
MANAGED_INDEXES = ("resourcequotas_index", "limitranges_index", "configmaps_index")
MAX_IDLE = timedelta(seconds=60)
"""Even with no events and no deadline, re-plan this often (clock drift, missed watches)."""
DEBOUNCE = 0.02
"""Seconds to let a burst of watch events settle into one pass."""
LAZY = 10.0
"""Seconds a change that decides nothing may wait for a pass (a node's heartbeat and
readings: they only refresh metrics). 500 nodes scanning every 5 s would otherwise
run a pass over every grant after each of their 100 writes a second."""


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _values(index: Mapping[Any, Any]) -> list[Any]:
    return [value for store in index.values() for value in store]


class Reconciler:
    """Owns the loop; fed by kopf handlers through `poke`."""

    def __init__(
        self,
        writer: Writer,
        settings: Settings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        gate: Gate | None = None,
    ) -> None:
        self.writer = writer
        self.settings = settings
        self.clock = clock
        self.gate: Gate = gate or Standalone()
        """Only the leader plans and writes; followers keep their caches warm."""
        self._term: int | None = None
        self._handover = asyncio.Lock()
        self.indexes: dict[str, Mapping[Any, Any]] = {}
        self._dirty = asyncio.Event()
        self._ready = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop the events belong to; kopf calls sync handlers on its worker threads."""
        self._lazy = False
        self.cache = DecisionCache()
        self.passes = 0
        self._failing: dict[str, str] = {}
        """Objects set aside in the last pass (key -> message), to log each change once."""
        self.observer = Observer()

    def poke(self, indexes: Mapping[str, Any]) -> None:
        """Called by every watch event; the first call hands over kopf's indexes.

        kopf runs handlers only once every index is fully populated, so the first
        poke also means "the caches are complete": before it, no pass runs and
        nothing is decided from a partial view.
        """
        if not self._ready.is_set():
            self.indexes = {name: indexes[name] for name in INDEXES}
            self._signal(self._ready)
        self._signal(self._dirty)

    def nudge(self, decisive: bool = True) -> None:
        """A change seen while indexing: plan again, once the caches are complete.

        A change that is not ``decisive`` (no decision reads it) is planned within
        `LAZY` seconds, together with every other such change.
        """
        if not self._ready.is_set():
            return
        if decisive:
            self._signal(self._dirty)
        elif not self._lazy and self._loop is not None:
            self._lazy = True
            self._loop.call_soon_threadsafe(self._loop.call_later, LAZY, self._lazy_due)

    def _lazy_due(self) -> None:
        self._lazy = False
        self._dirty.set()

    def _signal(self, event: asyncio.Event) -> None:
        """Set ``event`` from the loop or from one of kopf's handler threads.

        `asyncio.Event` is not thread-safe: set from another thread, its waiter is
        scheduled without waking the loop, which then runs it only at its next
        wake-up for some other reason.
        """
        loop = self._loop
        if loop is None or _running_loop() is loop:
            event.set()
        else:
            loop.call_soon_threadsafe(event.set)

    async def ready(self) -> None:
        """Return once kopf's caches are complete (see `poke`)."""
        self._loop = asyncio.get_running_loop()
        await self._ready.wait()

    async def leading(self) -> int:
        """Return once this replica leads and, in a new term, its caches hold what the
        previous leader wrote (`handover`); the term. Every writing loop waits here."""
        await self._ready.wait()
        if not self.gate.leading():
            self.observer.forget()  # a follower's last figures must not sit beside the leader's
        term = await self.gate.wait_leading()
        async with self._handover:
            if term != self._term:
                await handover.catch_up(self.writer.custom, self.snapshot)
                self._term = term
                log.info("reconciling as the leader", term=term, identity=self.gate.identity)
        return term

    def snapshot(self) -> Snapshot:
        return Snapshot(
            namespaces=[
                n for n in _values(self.indexes["namespace_index"]) if isinstance(n, Namespace)
            ],
            limits=_values(self.indexes["limit_index"]),
            grants=_values(self.indexes["grant_index"]),
            exemptions=_values(self.indexes["exemption_index"]),
            nodes=_values(self.indexes["node_index"]),
            pods=_values(self.indexes["pod_index"]),
            managed=[m for name in MANAGED_INDEXES for m in _values(self.indexes[name])],
        )

    async def run(self) -> None:
        """Plan and write forever; cancelled by the operator's shutdown."""
        await self.ready()
        log.info("caches populated")
        while True:
            await self.leading()
            await asyncio.sleep(DEBOUNCE)
            self._dirty.clear()
            wake_at = await self.one_pass()
            now = self.clock()
            wait = min(MAX_IDLE, max(wake_at - now, timedelta(0))) if wake_at else MAX_IDLE
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), wait.total_seconds())

    async def one_pass(self) -> datetime | None:
        started = time.perf_counter()
        metrics.RECONCILES.inc()
        try:
            snapshot = self.snapshot()
            now = self.clock()
            decided = plan(snapshot, now, self.settings, self.cache)
            failed = await self.writer.apply(decided, snapshot)
            await self.writer.announce(self._failures(decided), (), set())
            self._observe(decided)
            self.observer.record(snapshot, decided, now, failed)
        except Exception:  # one bad pass must not stop the loop; the next one retries
            metrics.RECONCILE_ERRORS.inc()
            log.exception("reconcile pass failed")
            return self.clock() + timedelta(seconds=2)
        finally:
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        self.passes += 1
        if failed:
            log.info("some writes failed; retrying soon", objects=sorted(failed)[:20])
            retry = now + timedelta(seconds=1)
            return min(retry, decided.wake_at) if decided.wake_at else retry
        return decided.wake_at

    def _failures(self, decided: Plan) -> list[EventRecord]:
        """Log objects newly set aside (or whose failure changed) and those decided again.

        Grants, exemptions and limits carry their failure in their Ready condition and
        get their Event from the plan; nodes and accounts have no status of the
        operator's, so their Event is posted here, once per change of failure.
        """
        now = {f.key: f for f in decided.failures}
        events = []
        for key, found in now.items():
            if self._failing.get(key) == found.message:
                continue
            log.warning(
                "object set aside: cannot be decided",
                object=key,
                reason=found.reason,
                message=found.message,
            )
            if found.about.kind not in ("GPUGrant", "GPUExemption", "GPURateLimit"):
                events.append(EventRecord(found.about, found.reason, found.message, "Warning"))
        for key in self._failing.keys() - now.keys():
            log.info("object decided again", object=key)
        self._failing = {key: found.message for key, found in now.items()}
        kinds = Counter(f.about.kind for f in decided.failures)
        for kind in ("GPUGrant", "GPUExemption", "GPURateLimit", "GPUNode", "ConfigMap"):
            metrics.OBJECTS_FAILED.labels(kind=kind).set(kinds.get(kind, 0))
        return events

    def _observe(self, decided: Plan) -> None:
        states = Counter(s.state for s in decided.grant_status.values())
        for state in (
            "Pending",
            "Denied",
            "Approved",
            "Scheduled",
            "Active",
            "Expired",
            "Revoked",
            "Invalid",
        ):
            metrics.GRANTS.labels(state=state).set(states.get(state, 0))
        metrics.GRANTED.clear()
        for subject, amount in decided.granted.items():
            metrics.GRANTED.labels(subject=subject).set(float(amount))
        metrics.IN_USE.clear()
        for subject, amount in decided.in_use.items():
            metrics.IN_USE.labels(subject=subject).set(float(amount))
