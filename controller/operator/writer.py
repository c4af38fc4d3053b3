"""Writes a plan: only what differs from the stored objects, as merge patches.

Status and spec writes go first, concurrently; Events and audit records about
an object are posted only when its write succeeded (or none was needed), so a
failed write that will be retried does not announce the same change twice.
Audit records are written before the pass ends; Events are posted in the
background on their own threads, so a pass that activates a thousand grants
does not hold the next grant's pass behind a thousand Event posts.
Node specs are written before any grant finalizer is released: a deleted
grant's revocation must be in the node's spec before the grant can vanish.

With two replicas (docs/operator.md, "High availability"), every write asks
the leader gate right before it is sent, so a replica that lost its Lease
sends nothing more. Writes that announce a transition (grant, exemption and
limit status, node spec, and the account's policy ConfigMap) carry the
resourceVersion the decision was made on: a decision from a cache that
missed someone's newer write fails with 409 and announces nothing, so a new
leader whose cache lags cannot repeat what the old one recorded. An object's
audit records are written on the write's own thread the moment its last
write returns, so a leader killed mid-pass loses at most the records of the
writes in flight, never a pass's worth.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import structlog
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.api.base import GROUP, VERSION
from controller.api.grant import GrantApproval
from controller.api.kinds import GPUExemption, GPUGrant, GPURateLimit
from controller.operator import metrics
from controller.operator.accounts import account_jobs
from controller.operator.patches import merge_patch
from controller.policy.grants import reserves
from controller.policy.plan import Plan, Snapshot
from controller.policy.records import AuditRecord, EventRecord
from controller.runtime.audit import AuditLog

FINALIZER = f"{GROUP}/revocation"
_RELEASABLE = ("Revoked", "Expired", "Denied", "Invalid", "Pending")
"""States in which a deleted grant holds nothing on nodes any more, so its finalizer may go:
a deleted grant that was live is decided Revoked (its node entries are replaced by a
revocation first); one that had ended or was never approved holds nothing."""
COMPONENT = "ds01-operator"
log = structlog.get_logger("ds01.operator.writer")


class Writer:
    """Applies plans through the official Kubernetes client, in worker threads."""

    def __init__(
        self,
        api: client.ApiClient,
        audit: AuditLog,
        workers: int = 8,
        event_workers: int = 4,
        *,
        may_write: Callable[[], bool] = lambda: True,
        instance: str = COMPONENT,
    ) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.audit = audit
        self.may_write = may_write
        """The leader gate, asked right before every write is sent."""
        self.instance = instance
        """This replica, as Events name their reporting instance."""
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ds01-write")
        self.event_pool = ThreadPoolExecutor(
            max_workers=event_workers, thread_name_prefix="ds01-event"
        )
        self._posting: set[asyncio.Future[Any]] = set()

    async def call(
        self,
        what: str,
        fn: Callable[..., Any],
        *args: Any,
        after: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> bool:
        """One API write in a worker thread, counted in metrics; False when it failed.

        ``after`` runs on the same thread once the write succeeded (the object's audit
        records: nothing between the write landing and its record but this thread).
        """
        done = await self._run(self.pool, what, functools.partial(fn, *args, **kwargs), after)
        return done is not _FAILED

    async def _run(
        self,
        pool: ThreadPoolExecutor,
        what: str,
        call: Callable[[], Any],
        after: Callable[[], None] | None = None,
    ) -> Any:
        """The call's result, or `_FAILED`; never sent once this replica may not write."""

        def fenced() -> Any:
            if not self.may_write():
                raise _FencedError
            result = call()
            if after is not None:
                after()
            return result

        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(pool, fenced)
        except _FencedError:
            metrics.API_WRITES.labels(what=what, result="fenced").inc()
            log.debug("write not sent: not the leader", what=what)
            return _FAILED
        except ApiException as error:
            metrics.API_WRITES.labels(what=what, result=str(error.status)).inc()
            level = log.debug if error.status in (404, 409) else log.warning
            level(
                "write failed",
                what=what,
                status=error.status,
                reason=error.reason,
                body=str(error.body)[:500],
            )
            return _FAILED
        metrics.API_WRITES.labels(what=what, result="ok").inc()
        return result

    async def apply(self, plan: Plan, snapshot: Snapshot) -> set[str]:
        """Write the plan; return the keys of objects whose writes failed."""
        failed: set[str] = set()
        records = _Records(self.audit, plan.audit)
        after = records.after
        grants = {f"{g.metadata.namespace}/{g.metadata.name}": g for g in snapshot.grants}
        jobs: list[tuple[str, Any]] = []
        for key, status in plan.grant_status.items():
            grant = grants[key]
            # Only grants that put state on nodes need revoking on deletion.
            needs_finalizer = (
                reserves(grant)
                and FINALIZER not in grant.metadata.finalizers
                and not grant.metadata.deletion_timestamp
            )
            approval = plan.approvals.get(key)
            patch = None
            if grant.status is not status and grant.status != status:
                old = grant.status.to_wire() if grant.status else {}
                patch = merge_patch(old, status.to_wire())
            if needs_finalizer or approval is not None or patch:
                write = self._write_grant(grant, needs_finalizer, approval, patch, after(key))
                jobs.append((key, write))
        for exemption in snapshot.exemptions:
            jobs += self._status_job(exemption, plan.exemption_status, "gpuexemptions", after)
        for limit in snapshot.limits:
            jobs += self._status_job(limit, plan.limit_status, "gpuratelimits", after)
        for node in snapshot.nodes:
            desired = plan.node_specs.get(node.metadata.name)
            patch = merge_patch(node.spec.to_wire(), desired.to_wire()) if desired else None
            if patch:
                jobs.append(
                    (
                        f"node/{node.metadata.name}",
                        self.call(
                            "gpunode/spec",
                            self.custom.patch_cluster_custom_object,
                            GROUP,
                            VERSION,
                            "gpunodes",
                            node.metadata.name,
                            {
                                "metadata": {"resourceVersion": node.metadata.resource_version},
                                "spec": patch,
                            },
                        ),
                    )
                )
        jobs += account_jobs(self.core, self.call, plan, snapshot, after)
        jobs += [(key, self._delete_grant(grants[key], after(key))) for key in plan.deletions]
        results = await asyncio.gather(*(job for _, job in jobs))
        failed |= {key for (key, _), ok in zip(jobs, results, strict=True) if not ok}

        nodes_written = not any(key.startswith("node/") for key in failed)
        releases = [
            self._release(grant)
            for key, grant in grants.items()
            if grant.metadata.deletion_timestamp
            and FINALIZER in grant.metadata.finalizers
            and nodes_written
            and key not in failed
            and plan.grant_status[key].state in _RELEASABLE
        ]
        await asyncio.gather(*releases)
        await self.announce(plan.events, records.left(), failed)
        return failed

    async def _delete_grant(self, grant: GPUGrant, after: Callable[[], None] | None) -> bool:
        """Delete an ended grant, only as it was judged (uid and resourceVersion preconditions).

        A reserving grant carries our finalizer: the deletion only marks it, and the
        next pass releases the finalizer (its state is ended) and the object goes.
        """
        meta = grant.metadata
        options = client.V1DeleteOptions(
            preconditions=client.V1Preconditions(
                uid=meta.uid, resource_version=meta.resource_version
            )
        )
        deleted = await self.call(
            "gpugrant/delete",
            self.custom.delete_namespaced_custom_object,
            GROUP,
            VERSION,
            meta.namespace,
            "gpugrants",
            meta.name,
            body=options,
            after=after,
        )
        if deleted:
            metrics.GRANTS_DELETED.inc()
        return deleted

    def _status_job(
        self,
        obj: GPUExemption | GPURateLimit,
        desired: dict[str, Any],
        plural: str,
        after: Callable[[str], Callable[[], None] | None],
    ) -> list[tuple[str, Any]]:
        name = obj.metadata.name
        new = desired.get(name)
        if new is None:
            return []
        patch = merge_patch(obj.status.to_wire() if obj.status else {}, new.to_wire())
        if not patch:
            return []
        key = f"{plural}/{name}"
        body = {"metadata": {"resourceVersion": obj.metadata.resource_version}, "status": patch}
        return [
            (
                key,
                self.call(
                    f"{plural[:-1]}/status",
                    self.custom.patch_cluster_custom_object_status,
                    GROUP,
                    VERSION,
                    plural,
                    name,
                    body,
                    after=after(key),
                ),
            )
        ]

    async def _write_grant(
        self,
        grant: GPUGrant,
        add_finalizer: bool,
        approval: GrantApproval | None,
        status_patch: dict[str, Any] | None,
        after: Callable[[], None] | None,
    ) -> bool:
        """One grant's writes, in order, each at the resourceVersion it follows: the
        optimistic spec/metadata write first (at the version the decision was made on),
        then the status (at the version that write produced)."""
        version = grant.metadata.resource_version
        if add_finalizer or approval is not None:
            body: dict[str, Any] = {}
            if add_finalizer:
                body["metadata"] = {"finalizers": [*grant.metadata.finalizers, FINALIZER]}
            if approval is not None:
                body["spec"] = {"approval": approval.to_wire()}
            updated = await self._patch_grant(
                grant, body, "gpugrant", None if status_patch else after
            )
            if updated is _FAILED:
                return False
            version = updated["metadata"]["resourceVersion"]
        if not status_patch:
            return True
        return await self.call(
            "gpugrant/status",
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            grant.metadata.namespace,
            "gpugrants",
            grant.metadata.name,
            {"metadata": {"resourceVersion": version}, "status": status_patch},
            after=after,
        )

    async def _release(self, grant: GPUGrant) -> bool:
        finalizers = [f for f in grant.metadata.finalizers if f != FINALIZER]
        done = await self._patch_grant(
            grant, {"metadata": {"finalizers": finalizers}}, "gpugrant/finalizer", None
        )
        return done is not _FAILED

    async def _patch_grant(
        self, grant: GPUGrant, body: dict[str, Any], what: str, after: Callable[[], None] | None
    ) -> Any:
        """Merge-patch the grant at the resourceVersion it was decided on (409 if it moved):
        never auto-approve or release a spec that changed since it was judged.
        The updated object, or `_FAILED`."""
        metadata = body.setdefault("metadata", {})
        metadata["resourceVersion"] = grant.metadata.resource_version
        call = functools.partial(
            self.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            grant.metadata.namespace or "",
            "gpugrants",
            grant.metadata.name,
            body,
        )
        return await self._run(self.pool, what, call, after)

    async def announce(
        self, events: Iterable[EventRecord], audit: Iterable[AuditRecord], failed: set[str]
    ) -> None:
        """Record audit lines and start posting Events, except those about writes in ``failed``.

        Records here depend on no write of this pass: a replica that may not write
        (it lost the Lease) records nothing; its Events are fenced as writes.
        """
        leading = self.may_write()
        for record in audit:
            if _record_key(record) in failed or not leading:
                continue
            self.audit.write(record.event_type, record.user, record.details)
        posts = []
        for event in events:
            if _event_key(event) in failed:
                continue
            create = functools.partial(
                self.core.create_namespaced_event,
                event.about.namespace or "default",
                _event_body(event, self.instance),
            )
            posts.append(self._run(self.event_pool, "event", create))
        if posts:
            task = asyncio.ensure_future(asyncio.gather(*posts))
            self._posting.add(task)  # a reference, so the collector cannot cancel it
            task.add_done_callback(self._posting.discard)

    async def drain(self) -> None:
        """Wait for the Events still being posted (at shutdown)."""
        if self._posting:
            await asyncio.gather(*self._posting, return_exceptions=True)


class _FencedError(Exception):
    """This replica may not write (it does not hold the Lease)."""


_FAILED: Any = object()
"""What `Writer._run` returns for a write that failed or was not sent."""


def _record_key(record: AuditRecord) -> str | None:
    """The failure key of the write an audit record depends on (see `apply`)."""
    key = record.object_key or record.details.get("grant")
    return str(key) if key is not None else None


class _Records:
    """A pass's audit records by the write they depend on, each written once.

    `after(key)` is handed to the last write of that object and runs on the
    write's thread; `left` is what no write recorded (announced after the pass).
    """

    def __init__(self, audit: AuditLog, records: Iterable[AuditRecord]) -> None:
        self.audit = audit
        self._lock = threading.Lock()
        self._by_key: dict[str | None, list[AuditRecord]] = {}
        for record in records:
            self._by_key.setdefault(_record_key(record), []).append(record)

    def after(self, key: str) -> Callable[[], None] | None:
        if key not in self._by_key:
            return None

        def write() -> None:
            with self._lock:
                mine = self._by_key.pop(key, [])
            for record in mine:
                self.audit.write(record.event_type, record.user, record.details)

        return write

    def left(self) -> list[AuditRecord]:
        with self._lock:
            return [r for records in self._by_key.values() for r in records]


def _event_key(event: EventRecord) -> str | None:
    """The failure key of the write an Event depends on (see `apply`)."""
    about = event.about
    if about.kind in _CLUSTER_KINDS:
        return f"{_CLUSTER_KINDS[about.kind]}/{about.name}"
    if about.namespace is None:
        return None
    if about.kind in _CORE_KINDS:
        return f"{about.kind.lower()}:{about.namespace}/{about.name}"
    return f"{about.namespace}/{about.name}"


_CORE_KINDS = ("Namespace", "ConfigMap", "ResourceQuota", "LimitRange", "Pod")
_CLUSTER_KINDS = {"GPUExemption": "gpuexemptions", "GPURateLimit": "gpuratelimits"}


def _event_body(event: EventRecord, instance: str = COMPONENT) -> client.CoreV1Event:
    now = datetime.now(UTC)
    about = event.about
    api_version = "v1" if about.kind in _CORE_KINDS else f"{GROUP}/{VERSION}"
    return client.CoreV1Event(
        metadata=client.V1ObjectMeta(
            generate_name=f"{about.name}.", namespace=about.namespace or "default"
        ),
        involved_object=client.V1ObjectReference(
            api_version=api_version,
            kind=about.kind,
            name=about.name,
            namespace=about.namespace,
            uid=about.uid,
        ),
        reason=event.reason,
        message=event.message[:1024],
        type=event.type,
        source=client.V1EventSource(component=COMPONENT),
        reporting_component=f"{GROUP}/operator",
        reporting_instance=instance,
        first_timestamp=now,
        last_timestamp=now,
        count=1,
        action=event.reason,
    )
