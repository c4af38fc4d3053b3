"""The agent's side of the GPUNode contract: create it, read its spec, publish its status.

Status writes are rate-limited and sent on change, plus a heartbeat: a node
whose GPUs are idle and whose workloads are unchanged costs one write per
heartbeat interval, whatever the scan rate. Discoveries and violations become
Events on the GPUNode and audit records.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import structlog
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.agent.report import without_heartbeat
from controller.api.base import GROUP, VERSION
from controller.api.node import (
    AuditAnchor,
    GPUNodeSpec,
    GPUNodeStatus,
    Violation,
    WorkloadReport,
)
from controller.policy.nodespec import read_spec
from controller.runtime.audit import AuditLog
from controller.runtime.auditchain import Anchor

log = structlog.get_logger("ds01.agent")
COMPONENT = "ds01-agent"


@dataclass(frozen=True)
class PolicyView:
    """The node's spec as last read, and the generation it belongs to."""

    spec: GPUNodeSpec
    generation: int


def policy_view(body: dict[str, Any]) -> PolicyView:
    """The policy in a GPUNode object from the API; entries this agent cannot read are left
    out and logged (see `controller.policy.nodespec`), the rest takes effect."""
    read = read_spec(body)
    if read.skipped:
        log.warning(
            "GPUNode spec entries left out: cannot be read",
            generation=read.generation,
            skipped=read.skipped[:20],
        )
    return PolicyView(read.spec, read.generation)


class Publisher:
    """Owns this node's GPUNode: the agent writes its status and nothing else."""

    def __init__(
        self,
        api: client.ApiClient,
        node: str,
        audit: AuditLog,
        min_interval: timedelta = timedelta(seconds=2),
        heartbeat: timedelta = timedelta(seconds=30),
    ) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.node = node
        self.audit = audit
        self.min_interval = min_interval
        self.heartbeat = heartbeat
        self._written: GPUNodeStatus | None = None
        self._written_at: datetime | None = None
        self._uid: str | None = None
        self.anchor: AuditAnchor | None = None

    def ensure_node(self) -> PolicyView:
        """Read our GPUNode, creating it (spec Audit) when the operator has not yet."""
        try:
            body = self.custom.get_cluster_custom_object(GROUP, VERSION, "gpunodes", self.node)
        except ApiException as error:
            if error.status != 404:
                raise
            body = self.custom.create_cluster_custom_object(
                GROUP,
                VERSION,
                "gpunodes",
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "GPUNode",
                    "metadata": {"name": self.node},
                    "spec": {"enforcement": "Audit"},
                },
            )
            log.info("created GPUNode", node=self.node)
        stored = cast(dict[str, Any], body)
        self._uid = read_spec(stored).uid
        if self._written is None and stored.get("status"):
            try:
                self._written = GPUNodeStatus.model_validate(stored["status"])
            except ValueError:  # unreadable: the next report replaces it whole
                self._written = None
        return policy_view(stored)

    def keep_anchor(self, anchor: Anchor) -> None:
        """The audit trail's latest signed checkpoint: the next status write carries it."""
        self.anchor = AuditAnchor(seq=anchor.seq, chain=anchor.chain)

    def publish(self, report: GPUNodeStatus, now: datetime | None = None) -> bool:
        """Write ``report`` if it changed (after the minimum interval) or the heartbeat is due."""
        now = now or datetime.now(UTC)
        anchor = self.anchor
        if anchor is not None and report.agent is not None:
            agent = report.agent.model_copy(update={"audit_anchor": anchor})
            report = report.model_copy(update={"agent": agent})
        last = self._written_at
        changed = self._written is None or without_heartbeat(self._written) != without_heartbeat(
            report
        )
        due = last is None or now - last >= self.heartbeat
        if not due and (not changed or now - last < self.min_interval):  # type: ignore[operator]
            return False
        body = {"status": report.to_wire()}
        old = self._written.to_wire() if self._written else {}
        for key in old.keys() - body["status"].keys():
            body["status"][key] = None  # merge patch: say what is gone
        self.custom.patch_cluster_custom_object_status(GROUP, VERSION, "gpunodes", self.node, body)
        self._written, self._written_at = report, now
        return True

    def announce(
        self,
        before: tuple[list[WorkloadReport], list[Violation]],
        after: tuple[list[WorkloadReport], list[Violation]],
    ) -> None:
        """Events and audit records for workloads that appeared or ended and new violations."""
        old_work = {_workload_key(w): w for w in before[0]}
        new_work = {_workload_key(w): w for w in after[0]}
        for key in new_work.keys() - old_work.keys():
            work = new_work[key]
            message = (
                f"{work.kind} {work.name} of {work.owner or 'nobody known'} uses "
                f"{', '.join(work.devices)} (owner from {work.owner_source})"
            )
            self._record(
                "detection.workload_discovered",
                work.owner,
                message=message,
                kind="Normal",
                reason="WorkloadDiscovered",
                details=work.model_dump(mode="json", by_alias=True, exclude_none=True),
            )
        for key in old_work.keys() - new_work.keys():
            work = old_work[key]
            self._record(
                "detection.workload_exited",
                work.owner,
                message=f"{work.kind} {work.name} stopped using GPUs",
                kind="Normal",
                reason="WorkloadExited",
                details={"kind": work.kind, "name": work.name},
            )
        seen = {(v.kind, v.device_uuid, v.pid) for v in before[1]}
        for violation in after[1]:
            if (violation.kind, violation.device_uuid, violation.pid) not in seen:
                self._record(
                    f"detection.{violation.kind.lower()}",
                    violation.owner,
                    message=violation.message,
                    kind="Warning",
                    reason=violation.kind,
                    details=violation.model_dump(mode="json", by_alias=True, exclude_none=True),
                )

    def notify(
        self, event_type: str, user: str | None, message: str, kind: str, details: dict[str, Any]
    ) -> None:
        """An Event on this node's GPUNode and an audit record (enforcement's voice)."""
        self._record(
            event_type,
            user,
            message=message,
            kind=kind,
            reason=_camel(event_type.rsplit(".", maxsplit=1)[-1]),
            details=details,
        )

    def _record(
        self,
        event_type: str,
        user: str | None,
        *,
        message: str,
        kind: str,
        reason: str,
        details: dict[str, Any],
    ) -> None:
        self.audit_record(event_type, user, message, details)
        self._post(user, message=message, kind=kind, reason=reason)

    def audit_record(
        self, event_type: str, user: str | None, message: str, details: dict[str, Any]
    ) -> None:
        """Only the audit record (the gateway writes it before answering, then posts the Event)."""
        del message  # the Event carries it; the record keeps the structured details
        self.audit.write(event_type, user or "unknown", {"node": self.node, **details})

    def post_event(
        self, event_type: str, user: str | None, message: str, kind: str, details: dict[str, Any]
    ) -> None:
        """Only the Event, best effort (its audit record was written already)."""
        del details
        reason = _camel(event_type.rsplit(".", maxsplit=1)[-1])
        self._post(user, message=message, kind=kind, reason=reason)

    def _post(self, user: str | None, *, message: str, kind: str, reason: str) -> None:
        del user
        now = datetime.now(UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{self.node}.", namespace="default"),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind="GPUNode", name=self.node, uid=self._uid
            ),
            reason=reason,
            message=message[:1024],
            type=kind,
            source=client.V1EventSource(component=COMPONENT, host=self.node),
            reporting_component=f"{GROUP}/agent",
            reporting_instance=self.node,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            action=reason,
        )
        try:
            self.core.create_namespaced_event("default", event)
        except ApiException as error:  # best effort: never block a scan on an Event
            log.warning("event not posted", reason=reason, status=error.status)
        except Exception as error:  # the apiserver away: the audit record still holds
            log.warning("event not posted", reason=reason, error=str(error)[:200])


def _camel(snake: str) -> str:
    """`revoke_warning` -> `RevokeWarning`: an Event reason from an audit action."""
    return "".join(part.capitalize() for part in snake.split("_"))


def _workload_key(work: WorkloadReport) -> tuple[str, str | None, str | None, str]:
    return (work.kind, work.namespace, work.container_id, work.name)
