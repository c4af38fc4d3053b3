"""GPUGrant: a time-bounded allowance for one user, requested, approved, recorded.

A grant lives in the subject's account namespace. Its spec says what was asked
for; who asked and who decided are stamped from the request identity by
admission, never taken from the client. Conditions in status (Approved,
Scheduled, Active, Expired, Revoked, Ready) are the source of truth; `state`
only summarises them for `kubectl get`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, JsonValue

from controller.api.base import Conditions, Model, Subject
from controller.api.values import (
    DeviceUUID,
    DurationRule,
    MIGProfile,
    NodeName,
    PrincipalName,
    Text,
    Time,
    UserTime,
)

GrantAccess = Literal["Container", "Host"]
GrantState = Literal[
    "Pending", "Denied", "Approved", "Scheduled", "Active", "Expired", "Revoked", "Invalid"
]

# The longest grant the schema accepts at all; policies set tighter maxima.
MAX_GRANT_DURATION = "8760h"


GrantDuration = Annotated[
    str,
    DurationRule(
        (
            ("duration(self) > duration('0s')", "spec.duration must be longer than zero"),
            (
                f"duration(self) <= duration('{MAX_GRANT_DURATION}')",
                f"spec.duration may be at most {MAX_GRANT_DURATION} (a year)",
            ),
        )
    ),
]


class GrantGPUs(Model):
    """The GPUs asked for."""

    count: Annotated[int, Field(ge=1, le=64)]
    """Number of devices: whole GPUs, or MIG slices of `migProfile`."""
    mig_profile: MIGProfile | None = None
    """MIG profile of each slice (for example `2g.20gb`); leave out for whole GPUs."""


class GrantPlacement(Model):
    """Where the grant applies and whether it holds concrete devices."""

    node_name: NodeName | None = None
    """The node the grant is for; required for Host access."""
    node_selector: (
        Annotated[
            dict[Annotated[str, Field(max_length=317)], Annotated[str, Field(max_length=63)]],
            Field(max_length=16),
        ]
        | None
    ) = None
    """Labels a node must carry to be chosen."""
    reserve: bool = False
    """Hold concrete devices for the whole window, so they are free when the subject needs them. Host grants always reserve: host access is to the devices held."""
    device_uuids: (
        Annotated[
            list[DeviceUUID],
            Field(max_length=64, json_schema_extra={"x-kubernetes-list-type": "set"}),
        ]
        | None
    ) = None
    """Exact devices to reserve (`GPU-...` or `MIG-...` UUIDs); implies `reserve`."""


class GrantApproval(Model):
    """The approver's decision."""

    decision: Literal["Approved", "Denied"]
    """`Approved` or `Denied`."""
    approved_by: PrincipalName | None = None
    """Who made the decision, stamped from the request identity by admission (never from the client)."""
    note: Text | None = None
    """Why, for the requester."""


class GrantRevocation(Model):
    """Ends the grant before its expiry."""

    reason: Text
    """Why the grant is revoked; shown to the subject."""
    revoked_by: PrincipalName | None = None
    """Who revoked it, stamped from the request identity by admission."""


_SPEC_RULES: list[JsonValue] = [
    {
        "rule": "!(has(self.duration) && has(self.expiresAt))",
        "message": "set spec.duration or spec.expiresAt, not both",
        "fieldPath": ".expiresAt",
    },
    {
        "rule": "!has(self.start) || !has(self.expiresAt) || self.expiresAt > self.start",
        "message": "spec.expiresAt must be after spec.start",
        "fieldPath": ".expiresAt",
    },
    {
        "rule": "self.access != 'Host' || (has(self.placement) && has(self.placement.nodeName))",
        "message": "a Host grant must name its node in spec.placement.nodeName",
        "fieldPath": ".placement",
    },
    {
        "rule": "self.subject.kind == 'User'",
        "message": "a grant is for one person: spec.subject.kind must be User",
        "fieldPath": ".subject.kind",
    },
    {
        "rule": (
            "!has(self.placement) || !has(self.placement.deviceUUIDs) "
            "|| size(self.placement.deviceUUIDs) == self.gpus.count"
        ),
        "message": "spec.placement.deviceUUIDs must list exactly spec.gpus.count devices",
        "fieldPath": ".placement.deviceUUIDs",
    },
    {
        "rule": (
            "!has(self.placement) || !has(self.placement.deviceUUIDs) || has(self.gpus.migProfile) "
            "|| self.placement.deviceUUIDs.all(u, u.startsWith('GPU-'))"
        ),
        "message": "spec.placement.deviceUUIDs for whole GPUs must be GPU- UUIDs",
        "fieldPath": ".placement.deviceUUIDs",
    },
    {
        "rule": (
            "!has(self.placement) || !has(self.placement.deviceUUIDs) || !has(self.gpus.migProfile) "
            "|| self.placement.deviceUUIDs.all(u, u.startsWith('MIG-'))"
        ),
        "message": "spec.placement.deviceUUIDs for MIG slices must be MIG- UUIDs",
        "fieldPath": ".placement.deviceUUIDs",
    },
    {
        "rule": "!has(oldSelf.requestedBy) || (has(self.requestedBy) && self.requestedBy == oldSelf.requestedBy)",
        "message": "spec.requestedBy is set once, when the grant is created",
        "fieldPath": ".requestedBy",
    },
]


class GPUGrantSpec(Model):
    """What is asked for, for whom, when and why."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _SPEC_RULES})

    subject: Annotated[
        Subject,
        Field(
            json_schema_extra={
                "x-kubernetes-validations": [
                    {"rule": "self == oldSelf", "message": "spec.subject cannot be changed"}
                ]
            }
        ),
    ]
    """The user the grant is for (kind `User`)."""
    gpus: GrantGPUs
    """How many GPUs or MIG slices."""
    access: GrantAccess = "Container"
    """`Container`: the GPUs add to what the user's containers and pods may hold; `Host`: the user may also use GPUs directly on the node, outside containers."""
    placement: GrantPlacement | None = None
    """Node and device choice; leave out to let the operator choose."""
    start: UserTime | None = None
    """When the grant begins; the operator sets it to the creation time when left out."""
    duration: GrantDuration | None = None
    """How long the grant lasts from `start` (for example `72h`); exclusive with `expiresAt`. The operator uses 24h when both are left out."""
    expires_at: UserTime | None = None
    """When the grant ends; exclusive with `duration`."""
    reason: Annotated[str, Field(min_length=1, max_length=1024)]
    """Why the GPUs are needed (for example a paper deadline); shown to approvers."""
    requested_by: PrincipalName | None = None
    """Who created the request, stamped from the request identity by admission."""
    approval: GrantApproval | None = None
    """The approver's decision; set by approvers (or the operator for auto-approved requests)."""
    revocation: GrantRevocation | None = None
    """Set to end the grant early; deleting the grant also revokes it."""


class DeviceAllocation(Model):
    """A device held for the grant."""

    uuid: DeviceUUID
    """UUID of the GPU or MIG slice."""
    index: Annotated[int, Field(ge=0, le=63)] | None = None
    """NVML index of the (parent) GPU, for people."""
    mig_profile: MIGProfile | None = None
    """Profile of the slice, when it is one."""


class NodeAllocation(Model):
    """The devices held on one node."""

    node: NodeName
    """The node."""
    devices: Annotated[list[DeviceAllocation], Field(max_length=64)]
    """Devices on that node."""


class GrantWindow(Model):
    """The resolved time window."""

    start: Time
    """When the grant became or becomes active."""
    end: Time
    """When the grant expires."""


class GrantUsage(Model):
    """Accounting from the workloads the agents report, as SLURM does for reservations."""

    gpu_hours_granted: Annotated[float, Field(ge=0)]
    """GPU-equivalent-hours the window provides."""
    gpu_hours_used: Annotated[float, Field(ge=0)]
    """GPU-equivalent-hours the subject used while the grant was active."""
    unused_reserved_hours: Annotated[float, Field(ge=0)] | None = None
    """Reserved GPU-equivalent-hours nobody used (reserving grants only)."""
    in_use: Annotated[float, Field(ge=0)] = 0
    """GPU-equivalents charged to the grant since `lastUpdated` (the rate the hours grow at)."""
    reserved_idle: Annotated[float, Field(ge=0)] = 0
    """Reserved GPU-equivalents unused since `lastUpdated`."""
    last_updated: Time
    """When the use last changed; the hours above count up to this moment."""


class GPUGrantStatus(Model):
    """What the operator made of the request."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The `metadata.generation` this status describes."""
    conditions: Conditions | None = None
    """`Approved`, `Scheduled`, `Active`, `Expired`, `Revoked` and `Ready`."""
    state: GrantState | None = None
    """One-word summary of the conditions, for `kubectl get`; read the conditions for the reason."""
    gpu_equivalents: Annotated[str, Field(max_length=16)] | None = None
    """GPU-equivalents the grant adds, as a decimal string."""
    window: GrantWindow | None = None
    """The resolved start and end."""
    allocations: Annotated[list[NodeAllocation], Field(max_length=16)] | None = None
    """Concrete devices held by a reserving grant."""
    usage: GrantUsage | None = None
    """GPU-hours used against GPU-hours granted."""
    expiry_warned: bool | None = None
    """Whether the warning before expiry has been sent."""
    revoked_at: Time | None = None
    """When the operator first saw the revocation or deletion; the grace period runs from here."""
