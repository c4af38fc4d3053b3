"""The GPU allowance as ResourceQuota lines, and the LimitRange of an account.

ResourceQuota counts each extended resource name on its own (only with the
``requests.`` prefix), but a user's allowance is one number in
GPU-equivalents shared by whole GPUs (``gpu.ds01.io/gpu``, 1 each) and MIG
slices (``gpu.ds01.io/mig-<profile>``, slices / the parent's total each). So
the allowance is split into one hard limit per resource, recomputed from the
current usage on every pass::

    remaining = allowance - sum(used_r * eq_r)
    hard_r    = used_r + floor(remaining / eq_r)     (0 where the policy forbids r)

Filling any one line from here stays inside the allowance; that is what a
ResourceQuota can enforce atomically. Two pods of *different* resources
admitted before the operator recomputes (they each pass their own line) can
together exceed it: this race is inherent in splitting one budget over
independent counters. It is closed after the fact, never silently: `overuse`
finds the excess from the pods' own requests and the operator reports it
(condition, Event, audit record) and leaves no room until it is resolved.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from controller.api.kinds import GPUNode
from controller.api.names import GPU_RESOURCE, MIG_RESOURCE_PREFIX, PREFIX
from controller.api.ratelimit import GPUPolicy, PerWorkloadResources
from controller.api.values import UNLIMITED
from controller.policy.quantity import parse_quantity, same_quantities
from controller.policy.units import A100_SLICES, gpu_equivalents

_RESOURCE_NAME = re.compile(
    rf"^{re.escape(PREFIX)}[A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?$"
)


def mig_resource(profile: str) -> str:
    """The extended resource of a MIG profile: ``2g.20gb`` -> ``gpu.ds01.io/mig-2g.20gb``."""
    return f"{MIG_RESOURCE_PREFIX}{profile}"


def valid_resource(name: str) -> bool:
    """Whether ``name`` can be a resource name (``+me`` profiles cannot)."""
    return _RESOURCE_NAME.match(name) is not None


def resource_equivalents(nodes: Sequence[GPUNode]) -> dict[str, Fraction]:
    """Every GPU resource the agents' inventories offer, with its GPU-equivalents.

    Whole GPUs are always listed. A profile seen on parents with different
    slice totals takes the largest share (the conservative reading).
    """
    out: dict[str, Fraction] = {GPU_RESOURCE: Fraction(1)}
    for node in nodes:
        for device in (node.status.devices if node.status else None) or ():
            total = device.mig_total_slices or A100_SLICES
            for mig in device.mig_instances or ():
                name = mig_resource(mig.profile)
                if not valid_resource(name):
                    continue
                try:
                    share = gpu_equivalents(mig.profile, total)
                except ValueError:
                    continue
                out[name] = max(out.get(name, Fraction(0)), share)
    return out


def equivalent_of(resource: str, known: Mapping[str, Fraction]) -> Fraction:
    """GPU-equivalents of one device of ``resource``; unknown names count as a whole GPU."""
    if resource in known:
        return known[resource]
    if resource.startswith(MIG_RESOURCE_PREFIX):
        try:
            return gpu_equivalents(resource.removeprefix(MIG_RESOURCE_PREFIX))
        except ValueError:
            return Fraction(1)
    return Fraction(1)


def allowed_resources(resources: Sequence[str], gpu: GPUPolicy) -> frozenset[str]:
    """The resources the policy lets its subject ask for."""
    out = set()
    for name in resources:
        if name == GPU_RESOURCE:
            if gpu.allow_full_gpus is not False:
                out.add(name)
        elif name.startswith(MIG_RESOURCE_PREFIX):
            profiles = gpu.allowed_mig_profiles
            if profiles is None or name.removeprefix(MIG_RESOURCE_PREFIX) in profiles:
                out.add(name)
    return frozenset(out)


def used_equivalents(used: Mapping[str, int], equivalents: Mapping[str, Fraction]) -> Fraction:
    """GPU-equivalents of a set of device counts."""
    return sum((count * equivalent_of(r, equivalents) for r, count in used.items()), Fraction(0))


def split(
    allowance: Fraction | None,
    used: Mapping[str, int],
    equivalents: Mapping[str, Fraction],
    allowed: frozenset[str],
    frozen: bool = False,
) -> dict[str, int]:
    """Hard limits per GPU resource; resources without a limit are left out.

    ``frozen`` (an exhausted budget) holds every line at its current use:
    running pods keep running, nothing new fits. An unlimited allowance puts
    no line on allowed resources. Forbidden resources are held at 0.
    """
    resources = sorted(set(equivalents) | set(used))
    remaining = None
    if allowance is not None:
        remaining = max(Fraction(0), allowance - used_equivalents(used, equivalents))
    hard: dict[str, int] = {}
    for name in resources:
        in_use = used.get(name, 0)
        if name not in allowed:
            hard[name] = 0
        elif frozen:
            hard[name] = in_use
        elif remaining is not None:
            hard[name] = in_use + math.floor(remaining / equivalent_of(name, equivalents))
    return hard


def overuse(allowance: Fraction | None, in_use: Fraction) -> Fraction:
    """GPU-equivalents used beyond the allowance (0 when within it or unlimited)."""
    if allowance is None:
        return Fraction(0)
    return max(Fraction(0), in_use - allowance)


def quota_key(resource: str) -> str:
    """The ResourceQuota line of an extended resource: ``requests.<name>``."""
    return f"requests.{resource}"


def limit_range(per_workload: PerWorkloadResources | None) -> dict[str, Any]:
    """The LimitRange spec: per-container CPU and memory defaults and maxima.

    A default above its maximum would make the apiserver refuse the whole
    object, so it is lowered to the maximum. /dev/shm and pids have no
    LimitRange field; the node agent and the gateway apply them.
    """
    default: dict[str, str] = {}
    maximum: dict[str, str] = {}
    for resource in ("cpu", "memory"):
        bounds = getattr(per_workload, resource, None) if per_workload else None
        if bounds is None:
            continue
        top = None if bounds.max in (None, UNLIMITED) else str(bounds.max)
        if top is not None:
            maximum[resource] = top
        if bounds.default is not None:
            value = str(bounds.default)
            if top is not None and parse_quantity(value) > parse_quantity(top):
                value = top
            default[resource] = value
    item: dict[str, Any] = {"type": "Container"}
    if default:
        item["default"] = default
        item["defaultRequest"] = dict(default)
    if maximum:
        item["max"] = maximum
    return {"limits": [item]}


def same_limit_range(stored: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    """Whether a stored LimitRange spec already says what ``desired`` says."""
    if stored is None:
        return False
    old, new = stored.get("limits") or [], desired.get("limits") or []
    if len(old) != len(new):
        return False
    for a, b in zip(old, new, strict=True):
        if a.get("type") != b.get("type"):
            return False
        for key in ("default", "defaultRequest", "max", "min", "maxLimitRequestRatio"):
            if not same_quantities(a.get(key) or {}, b.get(key) or {}):
                return False
    return True
