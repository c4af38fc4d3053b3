"""Writes a plan: only what differs from the stored objects, as merge patches.

Status and spec writes go first, concurrently; Events and audit records about
an object are posted only when its write succeeded (or none was needed), so a
failed write that will be retried does not announce the same change twice.
Audit records are written before the pass ends; Events are posted in the
background on their own threads, so a pass that activates a thousand grants
does not hold the next grant's pass behind a thousand Event posts.
Node specs are written before any grant finalizer is released: a deleted
grant's revocation must be in the node's spec before the grant can vanish.
"""

from __future__ import annotations

import asyncio
import functools
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
        self, api: client.ApiClient, audit: AuditLog, workers: int = 8, event_workers: int = 4
    ) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.audit = audit
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ds01-write")
        self.event_pool = ThreadPoolExecutor(
            max_workers=event_workers, thread_name_prefix="ds01-event"
        )
        self._posting: set[asyncio.Future[Any]] = set()

    async def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """One API write in a worker thread, counted in metrics; False when it failed."""
        return await self._run(self.pool, what, functools.partial(fn, *args, **kwargs))

    async def _run(self, pool: ThreadPoolExecutor, what: str, call: Callable[[], Any]) -> bool:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(pool, call)
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
            return False
        metrics.API_WRITES.labels(what=what, result="ok").inc()
        return True

    async def apply(self, plan: Plan, snapshot: Snapshot) -> set[str]:
        """Write the plan; return the keys of objects whose writes failed."""
        failed: set[str] = set()
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
            old = grant.status.to_wire() if grant.status else {}
            patch = None if grant.status == status else merge_patch(old, status.to_wire())
            if needs_finalizer or approval is not None or patch:
                jobs.append((key, self._write_grant(grant, needs_finalizer, approval, patch)))
        for exemption in snapshot.exemptions:
            jobs += self._status_job(exemption, plan.exemption_status, "gpuexemptions")
        for limit in snapshot.limits:
            jobs += self._status_job(limit, plan.limit_status, "gpuratelimits")
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
                            {"spec": patch},
                        ),
                    )
                )
        jobs += account_jobs(self.core, self.call, plan, snapshot)
        jobs += [(key, self._delete_grant(grants[key])) for key in plan.deletions]
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
        await self.announce(plan.events, plan.audit, failed)
        return failed

    async def _delete_grant(self, grant: GPUGrant) -> bool:
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
        )
        if deleted:
            metrics.GRANTS_DELETED.inc()
        return deleted

    def _status_job(
        self, obj: GPUExemption | GPURateLimit, desired: dict[str, Any], plural: str
    ) -> list[tuple[str, Any]]:
        name = obj.metadata.name
        new = desired.get(name)
        if new is None:
            return []
        patch = merge_patch(obj.status.to_wire() if obj.status else {}, new.to_wire())
        if not patch:
            return []
        return [
            (
                f"{plural}/{name}",
                self.call(
                    f"{plural[:-1]}/status",
                    self.custom.patch_cluster_custom_object_status,
                    GROUP,
                    VERSION,
                    plural,
                    name,
                    {"status": patch},
                ),
            )
        ]

    async def _write_grant(
        self,
        grant: GPUGrant,
        add_finalizer: bool,
        approval: GrantApproval | None,
        status_patch: dict[str, Any] | None,
    ) -> bool:
        """One grant's writes, in order: the optimistic spec/metadata write first (it
        carries the resourceVersion the decision was made on), then the status."""
        if (add_finalizer or approval is not None) and not await self._update(
            grant, add_finalizer, approval
        ):
            return False
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
            {"status": status_patch},
        )

    async def _update(
        self, grant: GPUGrant, add_finalizer: bool, approval: GrantApproval | None
    ) -> bool:
        """Add our finalizer and/or the operator's approval, in one optimistic write."""
        body: dict[str, Any] = {}
        if add_finalizer:
            body["metadata"] = {"finalizers": [*grant.metadata.finalizers, FINALIZER]}
        if approval is not None:
            body["spec"] = {"approval": approval.to_wire()}
        return await self._patch_grant(grant, body, "gpugrant")

    async def _release(self, grant: GPUGrant) -> bool:
        finalizers = [f for f in grant.metadata.finalizers if f != FINALIZER]
        return await self._patch_grant(
            grant, {"metadata": {"finalizers": finalizers}}, "gpugrant/finalizer"
        )

    async def _patch_grant(self, grant: GPUGrant, body: dict[str, Any], what: str) -> bool:
        """Merge-patch the grant at the resourceVersion it was decided on (409 if it moved):
        never auto-approve or release a spec that changed since it was judged."""
        metadata = body.setdefault("metadata", {})
        metadata["resourceVersion"] = grant.metadata.resource_version
        return await self.call(
            what,
            self.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            grant.metadata.namespace,
            "gpugrants",
            grant.metadata.name,
            body,
        )

    async def announce(
        self, events: Iterable[EventRecord], audit: Iterable[AuditRecord], failed: set[str]
    ) -> None:
        """Record audit lines and start posting Events, except those about writes in ``failed``."""
        for record in audit:
            key = record.object_key or record.details.get("grant")
            if key in failed:
                continue
            self.audit.write(record.event_type, record.user, record.details)
        posts = []
        for event in events:
            if _event_key(event) in failed:
                continue
            create = functools.partial(
                self.core.create_namespaced_event,
                event.about.namespace or "default",
                _event_body(event),
            )
            posts.append(self._run(self.event_pool, "event", create))
            if event.type == "Warning" and event.reason in ("Denied", "NotAllowed"):
                metrics.DENIALS.labels(reason=event.reason).inc()
        if posts:
            task = asyncio.ensure_future(asyncio.gather(*posts))
            self._posting.add(task)  # a reference, so the collector cannot cancel it
            task.add_done_callback(self._posting.discard)

    async def drain(self) -> None:
        """Wait for the Events still being posted (at shutdown)."""
        if self._posting:
            await asyncio.gather(*self._posting, return_exceptions=True)


def _event_key(event: EventRecord) -> str | None:
    """The failure key of the write an Event depends on (see `apply`)."""
    about = event.about
    if about.namespace is None:
        return None
    if about.kind in _CORE_KINDS:
        return f"{about.kind.lower()}:{about.namespace}/{about.name}"
    return f"{about.namespace}/{about.name}"


_CORE_KINDS = ("Namespace", "ConfigMap", "ResourceQuota", "LimitRange", "Pod")


def _event_body(event: EventRecord) -> client.CoreV1Event:
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
        reporting_instance=COMPONENT,
        first_timestamp=now,
        last_timestamp=now,
        count=1,
        action=event.reason,
    )
