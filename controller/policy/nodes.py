"""GPUNode desired state: what each node's agent must enforce.

Entries carry their own expiry, so an agent cut off from the apiserver still
closes what has run out. Revocations, once written, are carried forward from
the node's current spec until their own `until`, so deleting a grant (which
removes the object) cannot cancel the end of the GPU use it allowed.
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass
from datetime import datetime, timedelta

from controller.api import names
from controller.api.node import (
    EnforcementMode,
    GPUNodeSpec,
    HostAccessEntry,
    LifecycleExemptionEntry,
    ObjectReference,
    Reservation,
    Revocation,
)
from controller.policy.allocation import Window

ENFORCEMENT_LABEL = names.ENFORCEMENT
"""Kept here for controller.devcluster, which imports it from this module."""
REVOCATION_RETENTION = timedelta(hours=1)
"""How long a revocation stays in a node's spec after it took effect."""


@dataclass(frozen=True)
class NodeEffect:
    """What one grant does on one node."""

    source: ObjectReference
    user: str
    linux_user: str | None
    node: str
    devices: tuple[str, ...]
    window: Window
    host: bool
    live: bool
    """Approved and neither expired nor revoked: it holds devices (and host access when active)."""
    ended_at: datetime | None
    """When it stopped (expiry or revocation), if it did."""
    end_reason: str = ""
    grace: timedelta = timedelta(minutes=5)
    soft: bool = False


@dataclass(frozen=True)
class HostExemption:
    """A HostAccess exemption resolved to a Linux user."""

    source: ObjectReference
    user: str
    linux_user: str
    until: datetime | None


def enforcement(labels: dict[str, str], default: EnforcementMode) -> EnforcementMode:
    """The node's mode: its `gpu.ds01.io/enforcement` label when valid, else the default."""
    value = labels.get(ENFORCEMENT_LABEL)
    if value in ("Enforce", "Audit", "Off"):
        return value  # type: ignore[return-value]
    return default


def node_spec(
    node: str,
    *,
    labels: dict[str, str],
    effects: Sequence[NodeEffect],
    exemptions: Sequence[HostExemption],
    current: GPUNodeSpec | None,
    now: datetime,
    default_mode: EnforcementMode,
    lifecycle: Sequence[LifecycleExemptionEntry] = (),
    frozen: Set[tuple[str | None, str]] = frozenset(),
) -> GPUNodeSpec:
    """The spec the operator writes for ``node``.

    ``frozen`` names grants (namespace, name) that could not be decided this pass:
    their host access and reservations are carried forward from ``current`` as they
    are (each still ends at its own ``until``), so a failure takes nothing away.
    """
    mine = sorted(
        (e for e in effects if e.node == node),
        key=lambda e: (e.source.namespace or "", e.source.name),
    )
    host = [
        HostAccessEntry(
            user=e.user,
            linux_user=e.linux_user,
            device_uuids=list(e.devices),
            until=e.window.end,
            source=e.source,
        )
        for e in mine
        if e.host and e.live and e.linux_user and e.window.start <= now < e.window.end
    ]
    host += [
        HostAccessEntry(user=x.user, linux_user=x.linux_user, until=x.until, source=x.source)
        for x in sorted(exemptions, key=lambda x: x.source.name)
    ]
    reservations = [
        Reservation(
            device_uuid=uuid, user=e.user, from_=e.window.start, until=e.window.end, source=e.source
        )
        for e in mine
        if e.live
        for uuid in e.devices
    ]
    if frozen and current is not None:
        host += [h for h in current.host_access or () if _frozen(h.source, frozen, now, h.until)]
        reservations += [
            r for r in current.reservations or () if _frozen(r.source, frozen, now, r.until)
        ]
    revocations: dict[tuple[str, str, str | None, str], Revocation] = {}
    for entry in (current.revocations if current else None) or ():
        if entry.until > now:
            revocations[_revocation_key(entry)] = entry
    for e in mine:
        if e.ended_at is None:
            continue
        effective = e.ended_at + e.grace
        entry = Revocation(
            user=e.user,
            device_uuids=list(e.devices),
            reason=e.end_reason,
            effective_at=effective,
            until=effective + REVOCATION_RETENTION,
            soft=e.soft,
            source=e.source,
        )
        if entry.until > now:
            revocations[_revocation_key(entry)] = entry
    return GPUNodeSpec(
        enforcement=enforcement(labels, default_mode),
        host_access=host or None,
        reservations=reservations or None,
        revocations=[revocations[k] for k in sorted(revocations)] or None,
        lifecycle_exemptions=list(lifecycle) or None,
    )


def _frozen(
    source: ObjectReference,
    frozen: Set[tuple[str | None, str]],
    now: datetime,
    until: datetime | None,
) -> bool:
    return (
        source.kind == "GPUGrant"
        and (source.namespace, source.name) in frozen
        and (until is None or until > now)
    )


def _revocation_key(entry: Revocation) -> tuple[str, str, str | None, str]:
    return (entry.source.kind, entry.source.name, entry.source.namespace, entry.user)


def next_change(spec: GPUNodeSpec, now: datetime) -> datetime | None:
    """The next instant at which the spec changes by time alone (an entry expiring)."""
    times = [r.until for r in spec.revocations or ()]
    times += [h.until for h in spec.host_access or () if h.until is not None]
    times += [r.until for r in spec.reservations or ()]
    return min((t for t in times if t > now), default=None)
