"""GPUExemption: an expiring, audited exception to one kind of rule.

Only admins create exemptions (RBAC). An expired exemption is kept as a record
with an `Expired` condition rather than deleted, so the audit trail can say
who was exempt from what, when and why.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, JsonValue

from controller.api.base import Conditions, Model, Subject
from controller.api.values import NodeName, PrincipalName, Time, UserTime

ExemptFrom = Literal["IdleTimeout", "MaxRuntime", "RateLimits", "Budget", "HostAccess"]
ExemptionCategory = Literal["ResearchGrant", "Waiver"]
ExemptionState = Literal["Active", "Expired", "Pending"]


_SPEC_RULES: list[JsonValue] = [
    {
        "rule": "!has(self.startsAt) || !has(self.expiresAt) || self.expiresAt > self.startsAt",
        "message": "spec.expiresAt must be after spec.startsAt",
        "fieldPath": ".expiresAt",
    },
    {
        "rule": "!self.exemptFrom.exists(e, e == 'HostAccess') || self.subject.kind == 'User'",
        "message": "a HostAccess exemption is for one person: spec.subject.kind must be User",
        "fieldPath": ".subject.kind",
    },
]


class GPUExemptionSpec(Model):
    """Who is exempt from what, why, and until when."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _SPEC_RULES})

    subject: Subject
    """The user or group that is exempt."""
    exempt_from: Annotated[
        list[ExemptFrom],
        Field(min_length=1, max_length=5, json_schema_extra={"x-kubernetes-list-type": "set"}),
    ]
    """Rules that do not apply: `IdleTimeout`, `MaxRuntime`, `RateLimits`, `Budget`, `HostAccess` (GPU use directly on the host)."""
    category: ExemptionCategory
    """`ResearchGrant` (funded work that needs it) or `Waiver` (a one-off decision)."""
    reason: Annotated[str, Field(min_length=1, max_length=1024)]
    """Why the exemption was given; kept in the audit trail."""
    starts_at: UserTime | None = None
    """When the exemption begins; immediately when left out."""
    expires_at: UserTime | None = None
    """When the exemption ends; leave out for a permanent exemption."""
    nodes: (
        Annotated[
            list[NodeName],
            Field(max_length=64, json_schema_extra={"x-kubernetes-list-type": "set"}),
        ]
        | None
    ) = None
    """Nodes the exemption applies on; all nodes when left out."""
    approved_by: PrincipalName | None = None
    """Who approved it, stamped from the request identity by admission."""


class GPUExemptionStatus(Model):
    """Whether the exemption is in force."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The `metadata.generation` this status describes."""
    conditions: Conditions | None = None
    """`Active`, `Expired` and `Ready`."""
    state: ExemptionState | None = None
    """One-word summary of the conditions, for `kubectl get`."""
    activated_at: Time | None = None
    """When the exemption first took effect."""
    expired_at: Time | None = None
    """When the exemption stopped taking effect."""
