"""Retention: ended grants are deleted once they have been over for long enough.

Without it every grant ever requested stays in etcd and in the operator's
memory, and a lab running for a year reaches the operator's memory limit.
A grant that ended (`Expired`, `Revoked`, `Denied`) is deleted when the
retention (`--finished-grant-retention`, default 720h; `Unlimited` keeps
them) has passed since it ended, and only once its final status is stored:
the audit record of its end was written in the pass that stored that status,
and its usage is in the stored status. The deletion itself is recorded
(`grant.deleted`, reason `retention`) with the grant's window, devices and
usage, so the audit trail keeps everything the object said.

Deleting a grant cannot reopen anything: node revocations are carried
forward from the node's own spec (see `controller.policy.nodes`), not from
the grant.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from controller.api.grant import GPUGrantStatus
from controller.api.kinds import GPUGrant
from controller.policy.conditions import find
from controller.policy.records import AuditRecord, EventRecord, ObjectRef

ENDED = ("Expired", "Revoked", "Denied")
DEFAULT_RETENTION = timedelta(hours=720)


def ended_at(status: GPUGrantStatus) -> datetime | None:
    """When the grant ended: its window's end, its revocation, or the decision to deny it."""
    if status.state not in ENDED:
        return None
    if status.state == "Expired" and status.window is not None:
        return status.window.end
    if status.state == "Revoked" and status.revoked_at is not None:
        return status.revoked_at
    ready = find(status.conditions, "Ready")
    return ready.last_transition_time if ready is not None else None


def deletable_at(
    grant: GPUGrant, decided: GPUGrantStatus, retention: timedelta | None
) -> datetime | None:
    """When ``grant`` may be deleted; None while it may not be (or never, if kept forever).

    ``decided`` is this pass's status: the grant is deletable only when it equals the
    stored one (its end and usage are recorded) and no deletion is under way.
    """
    if retention is None or grant.metadata.deletion_timestamp is not None:
        return None
    if grant.status != decided:
        return None
    end = ended_at(decided)
    return None if end is None else end + retention


def deletion_records(
    grant: GPUGrant, status: GPUGrantStatus, retention: timedelta
) -> tuple[EventRecord, AuditRecord]:
    """The Event and the audit record of deleting ``grant`` by retention."""
    key = f"{grant.metadata.namespace}/{grant.metadata.name}"
    end = ended_at(status)
    message = (
        f"deleted by the retention policy: {status.state} since "
        f"{end.isoformat() if end else 'unknown'}, kept {retention}; its record is in the audit log"
    )
    about = ObjectRef("GPUGrant", grant.metadata.name, grant.metadata.namespace, grant.metadata.uid)
    usage = status.usage
    details = {
        "grant": key,
        "reason": "retention",
        "state": status.state,
        "endedAt": end.isoformat() if end else None,
        "retention": str(retention),
        "gpus": grant.spec.gpus.count,
        "migProfile": grant.spec.gpus.mig_profile,
        "access": grant.spec.access,
        "start": status.window.start.isoformat() if status.window else None,
        "end": status.window.end.isoformat() if status.window else None,
        "devices": [d.uuid for n in status.allocations or () for d in n.devices],
        "usage": usage.to_wire() if usage else None,
    }
    return (
        EventRecord(about, "Deleted", message),
        AuditRecord("grant.deleted", grant.spec.subject.name, details, object_key=key),
    )
