"""Screening: each object's own checks, run alone, before the objects are judged together.

`plan` screens every exemption, limit, node and grant on its own first. One
that raises is set aside with a `Failure` (see `controller.policy.isolation`)
and the rest of the pass runs without it, so a value that only breaks when
combined (a subject's usage, a node's inventory, a shared allocation) does
not reach the shared steps. What a failed object keeps, and how it is marked,
is decided here too: it keeps its stored status except the Ready condition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from controller.api.exemption import GPUExemptionStatus
from controller.api.grant import GPUGrantStatus
from controller.api.kinds import GPUExemption, GPUGrant, GPUNode, GPURateLimit
from controller.api.node import EnforcementMode
from controller.api.ratelimit import GPURateLimitStatus
from controller.policy import exemptions as exemption_policy
from controller.policy import grants as grant_policy
from controller.policy import usage
from controller.policy.allocation import inventory
from controller.policy.effective import NamedLimit, effective_limits
from controller.policy.isolation import Failure, failed_conditions, failure, failure_events
from controller.policy.nodes import next_change, node_spec
from controller.policy.quota import resource_equivalents
from controller.policy.records import EventRecord, ObjectRef

T = TypeVar("T")


@dataclass(frozen=True)
class Screened(Generic[T]):
    """Objects that passed their own checks, and those set aside with why."""

    passed: list[T]
    failed: list[tuple[T, Failure]]


def partition(
    objects: Sequence[T], about: Callable[[T], ObjectRef], check: Callable[[T], object], during: str
) -> Screened[T]:
    """Run ``check`` on each object alone; those it raises for are set aside."""
    passed, failed = [], []
    for obj in objects:
        try:
            check(obj)
        except Exception as error:  # the point: any failure of one object stays with it
            failed.append((obj, failure(about(obj), error, during)))
        else:
            passed.append(obj)
    return Screened(passed, failed)


def grant_ref(grant: GPUGrant) -> ObjectRef:
    meta = grant.metadata
    return ObjectRef("GPUGrant", meta.name, meta.namespace, meta.uid)


def exemption_ref(exemption: GPUExemption) -> ObjectRef:
    return ObjectRef("GPUExemption", exemption.metadata.name, None, exemption.metadata.uid)


def limit_ref(limit: GPURateLimit) -> ObjectRef:
    return ObjectRef("GPURateLimit", limit.metadata.name, None, limit.metadata.uid)


def node_ref(node: GPUNode) -> ObjectRef:
    return ObjectRef("GPUNode", node.metadata.name, None, node.metadata.uid)


def exemptions(items: Sequence[GPUExemption], now: datetime) -> Screened[GPUExemption]:
    return partition(
        items, exemption_ref, lambda x: exemption_policy.decide(x, now), "reading its window"
    )


def limits(items: Sequence[GPURateLimit]) -> Screened[GPURateLimit]:
    def check(limit: GPURateLimit) -> None:
        named = [NamedLimit(limit.metadata.name, limit.spec)]
        for subject in limit.spec.subjects:
            user, groups = (subject.name, ()) if subject.kind == "User" else ("-", (subject.name,))
            effective_limits(user, groups, named)

    return partition(items, limit_ref, check, "merging it into effective limits")


def nodes(items: Sequence[GPUNode], now: datetime, mode: EnforcementMode) -> Screened[GPUNode]:
    def check(node: GPUNode) -> None:
        alone = [node]
        inventory(alone)
        usage.device_equivalents(alone)
        usage.devices_in_use(alone)
        resource_equivalents(alone)
        spec = node_spec(
            node.metadata.name,
            labels=dict(node.metadata.labels),
            effects=(),
            exemptions=(),
            current=node.spec,
            now=now,
            default_mode=mode,
        )
        next_change(spec, now)

    return partition(items, node_ref, check, "reading its agent's report")


def grants(
    items: Sequence[GPUGrant], now: datetime, settings: grant_policy.GrantSettings
) -> Screened[GPUGrant]:
    def check(grant: GPUGrant) -> None:
        grant_policy.window(grant, settings)
        grant_policy.equivalents(grant)

    return partition(items, grant_ref, check, "reading its window and GPUs")


# -- what a failed object keeps ----------------------------------------------------


def failed_grant(
    grant: GPUGrant, failed: Failure, now: datetime
) -> tuple[GPUGrantStatus, tuple[EventRecord, ...]]:
    """Its stored status with Ready replaced (a new grant is `Invalid`); one Event."""
    old = grant.status or GPUGrantStatus()
    conditions = failed_conditions(old.conditions, failed, now, grant.metadata.generation)
    status = old.model_copy(update={"conditions": conditions, "state": old.state or "Invalid"})
    return status, failure_events(old.conditions, failed)


def failed_exemption(
    exemption: GPUExemption, failed: Failure, now: datetime
) -> tuple[GPUExemptionStatus, tuple[EventRecord, ...]]:
    old = exemption.status or GPUExemptionStatus()
    conditions = failed_conditions(old.conditions, failed, now, exemption.metadata.generation)
    return old.model_copy(update={"conditions": conditions}), failure_events(old.conditions, failed)


def failed_limit(
    limit: GPURateLimit, failed: Failure, now: datetime
) -> tuple[GPURateLimitStatus, tuple[EventRecord, ...]]:
    old = limit.status or GPURateLimitStatus()
    conditions = failed_conditions(old.conditions, failed, now, limit.metadata.generation)
    return old.model_copy(update={"conditions": conditions}), failure_events(old.conditions, failed)
