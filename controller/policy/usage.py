"""GPU use, from what the agents report in GPUNode status, and grant accounting.

An agent lists each GPU workload with its owner and devices. A whole GPU
counts 1 GPU-equivalent, a MIG slice its slices over the parent's total. A
reserving grant is charged for its owner's use of the devices it holds; a
grant that only raises the allowance is charged for the owner's use above
their base allowance, shared out over their active grants in creation order.
Usage is integrated in status from the rate last observed, so status changes
only when use does.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import datetime
from fractions import Fraction

from controller.api.grant import GPUGrantStatus, GrantUsage
from controller.api.kinds import GPUGrant, GPUNode
from controller.policy.units import gpu_equivalents, reported_equivalents


@functools.lru_cache(maxsize=256)
def fraction(text: str) -> Fraction:
    """A decimal string as a Fraction; cached, as statuses repeat a handful of values."""
    return Fraction(text)


def device_equivalents(nodes: Sequence[GPUNode]) -> dict[str, Fraction]:
    """GPU-equivalents of every device UUID the agents report."""
    out: dict[str, Fraction] = {}
    for node in nodes:
        for device in (node.status.devices if node.status else None) or ():
            out[device.uuid] = Fraction(1)
            for mig in device.mig_instances or ():
                out[mig.uuid] = reported_equivalents(mig.profile, device.mig_total_slices)
    return out


def devices_in_use(nodes: Sequence[GPUNode]) -> dict[str, set[str]]:
    """Device UUIDs each owner's workloads are using, across all nodes."""
    out: dict[str, set[str]] = {}
    for node in nodes:
        for workload in (node.status.workloads if node.status else None) or ():
            if workload.owner:
                out.setdefault(workload.owner, set()).update(workload.devices)
    return out


def charge(
    active: Sequence[GPUGrant],
    held: Mapping[str, tuple[str, ...]],
    in_use: set[str],
    equivalents: Mapping[str, Fraction],
    base_allowance: Fraction | None,
) -> dict[str, tuple[Fraction, Fraction]]:
    """Per active grant of one user: (GPU-equivalents charged now, reserved but idle now).

    ``active`` must be the user's active grants in creation order; ``held`` maps
    a grant key to the devices it reserves.
    """
    out: dict[str, tuple[Fraction, Fraction]] = {}
    reserved_devices: set[str] = set()
    for grant in active:
        key = f"{grant.metadata.namespace}/{grant.metadata.name}"
        if key in held:
            mine = set(held[key])
            reserved_devices |= mine
            used = sum((equivalents.get(u, Fraction(0)) for u in mine & in_use), Fraction(0))
            idle = sum((equivalents.get(u, Fraction(0)) for u in mine - in_use), Fraction(0))
            out[key] = (used, idle)
    outside = sum((equivalents.get(u, Fraction(0)) for u in in_use - reserved_devices), Fraction(0))
    above = outside if base_allowance is None else max(Fraction(0), outside - base_allowance)
    if base_allowance is None:
        above = Fraction(0)  # an unlimited allowance needs no grant
    for grant in active:
        key = f"{grant.metadata.namespace}/{grant.metadata.name}"
        if key in held:
            continue
        size = grant.spec.gpus.count * gpu_equivalents(grant.spec.gpus.mig_profile)
        share = min(size, above)
        above -= share
        out[key] = (share, Fraction(0))
    return out


def account(
    old: GPUGrantStatus,
    new: GPUGrantStatus,
    charged: tuple[Fraction, Fraction] | None,
    now: datetime,
) -> GrantUsage | None:
    """The grant's usage record after this pass.

    The record stores the current rate (`inUse`, `reservedIdle`) and the hours
    accumulated up to `lastUpdated`; hours grow at the stored rate until the
    rate changes. So a status write happens only when use changes (or the
    window does), not on a timer, and an operator restart loses nothing: the
    stored rate covers the time it was away, up to the window's end.
    """
    if new.window is None or new.gpu_equivalents is None:
        return old.usage
    size = fraction(new.gpu_equivalents)
    window = new.window
    granted = round(float(size) * (window.end - window.start).total_seconds() / 3600, 3)
    used, idle = (
        charged if charged is not None and new.state == "Active" else (Fraction(0), Fraction(0))
    )
    rate = (round(float(used), 6), round(float(idle), 6))
    previous = old.usage
    if previous is None:
        return GrantUsage(
            gpu_hours_granted=granted,
            gpu_hours_used=0.0,
            unused_reserved_hours=0.0 if new.allocations else None,
            in_use=rate[0],
            reserved_idle=rate[1],
            last_updated=now,
        )
    if (previous.in_use, previous.reserved_idle) == rate and previous.gpu_hours_granted == granted:
        return previous
    until = min(now, window.end)
    hours = max(0.0, (until - previous.last_updated).total_seconds() / 3600)
    unused = previous.unused_reserved_hours
    return GrantUsage(
        gpu_hours_granted=granted,
        gpu_hours_used=round(previous.gpu_hours_used + previous.in_use * hours, 6),
        unused_reserved_hours=None
        if unused is None
        else round(unused + previous.reserved_idle * hours, 6),
        in_use=rate[0],
        reserved_idle=rate[1],
        last_updated=now,
    )
