"""Keeps each account's usage history (`controller.policy.usagehistory`) in the cluster.

Every interval it reads the reconciler's snapshot (the same watch caches),
works out what every account uses and holds now, and writes the month's
ConfigMap `ds01-usage-YYYY-MM` where a rate changed, a pod was reaped or the
month turned. At start it reads this and last month's records back (one list
call), so the stored rates cover the time the operator was away; it never
watches the history objects (the kopf index of the operator's ConfigMaps
leaves them out), so a year of history costs the operator no memory.

Writes replace the whole object at the resourceVersion last seen: a conflict
means someone else wrote it, and the record is read again before the next
write. An object of that name that is not labelled as the operator's (a user
may create ConfigMaps in their namespace, but admission keeps them from
carrying the operator's label) is not trusted: it is overwritten as empty.
Months older than the retention (400 days by default) are deleted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.api.account import AccountError, parse_account
from controller.api.accountpolicy import COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL
from controller.operator import metrics
from controller.operator.reconciler import Reconciler
from controller.policy import usagehistory as uh
from controller.policy import usagerates
from controller.policy.podlife import IDLE_SINCE, PodStep, parse_time
from controller.policy.quota import resource_equivalents

log = structlog.get_logger("ds01.operator.usage")

LABELS = {
    MANAGED_BY_LABEL: MANAGED_BY,
    "app.kubernetes.io/part-of": "ds01-controller",
    COMPONENT_LABEL: uh.COMPONENT,
}


@dataclass
class _Stored:
    record: uh.MonthRecord
    resource_version: str | None
    """None: no object of ours exists yet under the record's name."""


@dataclass(frozen=True)
class _Reaped:
    node: str
    gpu_hours: float
    at: datetime


class UsageRecorder:
    """Writes the usage history of every account from the reconciler's snapshot."""

    def __init__(
        self,
        api: client.ApiClient,
        reconciler: Reconciler,
        interval: timedelta,
        retention: timedelta = uh.RETENTION,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        # Any: the generated client's hints want model objects where it takes dicts.
        self.core: Any = client.CoreV1Api(api)
        self.reconciler = reconciler
        self.interval = interval
        self.retention = retention
        self.clock = clock
        self.stored: dict[str, _Stored] = {}
        """Per account namespace: the latest month's record as written."""
        self._reaped: dict[str, list[_Reaped]] = {}
        self._pruned_month: str | None = None

    async def run(self) -> None:
        """Record forever while leading; cancelled by the operator's shutdown.

        Each new term reads the records back: another replica may have written
        them while this one followed.
        """
        loaded: int | None = None
        while True:
            term = await self.reconciler.leading()
            try:
                if loaded != term:
                    self.stored.clear()
                    await self.load()
                    loaded = term
                await self.one_pass()
            except Exception:  # one bad pass must not stop the record
                log.exception("usage history pass failed")
            await asyncio.sleep(self.interval.total_seconds())

    def reaped(self, step: PodStep, at: datetime) -> None:
        """Called by the pod lifecycle after it stopped a pod: charge its idle time."""
        if step.action != "stop" or step.verdict is None or step.verdict.reason != "Idle":
            return
        equivalents = resource_equivalents(self.reconciler.snapshot().nodes)
        since = parse_time(step.pod.annotations.get(IDLE_SINCE))
        hours = usagerates.reaped_hours(step.pod.gpu_requests(), equivalents, since, at)
        if hours > 0:
            self._reaped.setdefault(step.pod.namespace, []).append(_Reaped(step.node, hours, at))

    async def load(self) -> None:
        """Read this and last month's records of every account."""
        now = self.clock()
        months = [uh.month_of(now - timedelta(days=31)), uh.month_of(now)]
        selector = f"{COMPONENT_LABEL}={uh.COMPONENT},{uh.MONTH_LABEL} in ({','.join(months)})"
        found = await asyncio.to_thread(
            self.core.list_config_map_for_all_namespaces, label_selector=selector
        )
        items: list[Any] = found.items
        for item in items:
            stored = self._read(item)
            if stored is None:
                continue
            namespace = item.metadata.namespace
            known = self.stored.get(namespace)
            if known is None or known.record.month < stored.record.month:
                self.stored[namespace] = stored
        log.info("usage history loaded", accounts=len(self.stored), months=months)

    def _read(self, item: Any) -> _Stored | None:
        labels = item.metadata.labels or {}
        if labels.get(MANAGED_BY_LABEL) != MANAGED_BY:
            return None
        try:
            record = uh.decode(item.data or {})
        except ValueError as error:
            log.warning(
                "usage history unreadable; starting it again",
                namespace=item.metadata.namespace,
                name=item.metadata.name,
                error=str(error),
            )
            return _Stored(uh.MonthRecord("", "0000-00"), item.metadata.resource_version)
        if record is None:
            return None
        return _Stored(record, item.metadata.resource_version)

    async def one_pass(self) -> int:
        """Write what changed; return the number of objects written."""
        snapshot = self.reconciler.snapshot()
        now = self.clock()
        rates = usagerates.current(snapshot.nodes, snapshot.grants)
        written = 0
        for namespace in snapshot.namespaces:
            if namespace.terminating:
                continue
            try:
                account = parse_account(namespace.name, namespace.labels, namespace.annotations)
            except AccountError:
                continue  # the reconciler reports it
            if account is None:
                continue
            written += await self._record(
                namespace.name, account.user, account.groups, rates.get(account.user, {}), now
            )
        await self._prune(now)
        return written

    async def _record(
        self,
        namespace: str,
        user: str,
        groups: tuple[str, ...],
        rates: dict[str, uh.Figures],
        now: datetime,
    ) -> int:
        stored = self.stored.get(namespace)
        current = stored.record if stored and stored.record.user == user else None
        records = uh.advance(current, user, groups, rates, now)
        reaped = self._reaped.pop(namespace, [])
        if reaped:
            last = records[-1] if records else current
            if last is None:
                last = uh.MonthRecord(user, uh.month_of(now), groups)
            for item in reaped:
                last = uh.add_reaped(last, item.node, item.gpu_hours, item.at)
            records = [*records[:-1], last] if records else [last]
        written = 0
        for record in records:
            same_object = stored is not None and stored.record.month == record.month
            version = stored.resource_version if same_object and stored else None
            ok, new_version = await self._write(namespace, record, version)
            if not ok:
                self._reaped.setdefault(namespace, []).extend(reaped)
                await self._reread(namespace, record.month)
                return written
            written += 1
            stored = _Stored(record, new_version)
            self.stored[namespace] = stored
        return written

    async def _write(
        self, namespace: str, record: uh.MonthRecord, version: str | None
    ) -> tuple[bool, str | None]:
        name = uh.object_name(record.month)
        metadata: dict[str, Any] = {
            "name": name,
            "namespace": namespace,
            "labels": {**LABELS, uh.MONTH_LABEL: record.month},
        }
        body: dict[str, Any] = {"metadata": metadata, "data": uh.encode(record)}
        if not self.reconciler.gate.leading():
            return False, None  # fenced: another replica writes the history now
        try:
            if version is None:
                try:
                    done = await asyncio.to_thread(
                        self.core.create_namespaced_config_map, namespace, body
                    )
                except ApiException as error:
                    if error.status != 409:
                        raise
                    # An object of that name that we did not know: not ours, or a
                    # record we failed to read. Take it over at its version.
                    existing = await asyncio.to_thread(
                        self.core.read_namespaced_config_map, name, namespace
                    )
                    metadata["resourceVersion"] = existing.metadata.resource_version
                    done = await asyncio.to_thread(
                        self.core.replace_namespaced_config_map, name, namespace, body
                    )
            else:
                metadata["resourceVersion"] = version
                done = await asyncio.to_thread(
                    self.core.replace_namespaced_config_map, name, namespace, body
                )
        except ApiException as error:
            metrics.API_WRITES.labels(what="usage", result=str(error.status)).inc()
            log.info("usage history write failed", namespace=namespace, status=error.status)
            return False, None
        metrics.API_WRITES.labels(what="usage", result="ok").inc()
        return True, done.metadata.resource_version

    async def _reread(self, namespace: str, month: str) -> None:
        try:
            item = await asyncio.to_thread(
                self.core.read_namespaced_config_map, uh.object_name(month), namespace
            )
        except ApiException as error:
            if error.status == 404:
                self.stored.pop(namespace, None)
            return
        stored = self._read(item)
        if stored is not None and stored.record.month == month:
            self.stored[namespace] = stored
        else:
            # Not ours or not readable: overwrite it whole at its version next time.
            self.stored[namespace] = _Stored(
                uh.MonthRecord("", month), item.metadata.resource_version
            )

    async def _prune(self, now: datetime) -> None:
        """Once per month: delete the records older than the retention."""
        month = uh.month_of(now)
        if self._pruned_month == month or not self.reconciler.gate.leading():
            return
        oldest = now - self.retention
        candidates = [
            m
            for m in uh.months_between(oldest - timedelta(days=3 * 366), oldest)
            if uh.expired(m, now, self.retention)
        ]
        selector = f"{COMPONENT_LABEL}={uh.COMPONENT},{uh.MONTH_LABEL} in ({','.join(candidates)})"
        try:
            old = await asyncio.to_thread(
                self.core.list_config_map_for_all_namespaces, label_selector=selector
            )
            for item in old.items:
                if (item.metadata.labels or {}).get(MANAGED_BY_LABEL) != MANAGED_BY:
                    continue
                await asyncio.to_thread(
                    self.core.delete_namespaced_config_map,
                    item.metadata.name,
                    item.metadata.namespace,
                )
                log.info(
                    "usage history expired",
                    namespace=item.metadata.namespace,
                    name=item.metadata.name,
                )
        except ApiException as error:
            log.warning("usage history pruning failed", status=error.status)
            return
        self._pruned_month = month
