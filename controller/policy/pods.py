"""Pods as the quota sees them: what each asks for, counted the way Kubernetes counts it.

The operator keeps a small projection of every pod (`Pod`) instead of the
body. A pod's effective request for a resource is what the scheduler and
ResourceQuota charge: the larger of the app containers (plus restartable
"sidecar" init containers) and the largest regular init container (plus the
sidecars started before it), plus the pod overhead. Terminal pods (Succeeded,
Failed) count for nothing, as in ResourceQuota.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from typing import Any

from controller.api import names
from controller.policy.quantity import parse_quantity


@dataclass(frozen=True)
class OwnerRef:
    """A controller ownerReference: enough to find and stop the workload that made a pod."""

    api_version: str
    kind: str
    name: str


@dataclass(frozen=True)
class Pod:
    """The parts of a pod that quotas, rates, alerts and the pod lifecycle read."""

    namespace: str
    name: str
    uid: str
    created: datetime | None
    terminal: bool = False
    requests: Mapping[str, Fraction] = field(default_factory=dict)
    """Effective pod requests by resource name (GPU resources included)."""
    limits: Mapping[str, Fraction] = field(default_factory=dict)
    """Effective pod limits by resource name."""
    annotations: Mapping[str, str] = field(default_factory=dict)
    """Only the `gpu.ds01.io/` ones: the lifecycle's state and the user's keep-alive."""
    owner: OwnerRef | None = None
    """The controller that made the pod (a Job, a ReplicaSet...), or None for a bare pod."""
    deleting: bool = False
    """Has a deletionTimestamp: on its way out, nothing more to decide about it."""

    def gpu_requests(self) -> dict[str, int]:
        """Devices asked for, by gpu.ds01.io resource name."""
        return {
            name: int(amount)
            for name, amount in self.requests.items()
            if name.startswith(names.PREFIX) and amount > 0
        }


def _amounts(container: Mapping[str, Any], which: str) -> dict[str, Fraction]:
    resources = container.get("resources") or {}
    out: dict[str, Fraction] = {}
    for name, value in (resources.get(which) or {}).items():
        try:
            out[name] = parse_quantity(value)
        except ValueError:
            continue  # the apiserver validated it; an unreadable value counts as nothing
    return out


def _add(total: dict[str, Fraction], more: Mapping[str, Fraction]) -> dict[str, Fraction]:
    out = dict(total)
    for name, amount in more.items():
        out[name] = out.get(name, Fraction(0)) + amount
    return out


def _at_least(total: dict[str, Fraction], other: Mapping[str, Fraction]) -> dict[str, Fraction]:
    out = dict(total)
    for name, amount in other.items():
        out[name] = max(out.get(name, Fraction(0)), amount)
    return out


def effective(
    containers: Sequence[Mapping[str, Any]],
    init_containers: Sequence[Mapping[str, Any]],
    overhead: Mapping[str, Any] | None,
    which: str,
) -> dict[str, Fraction]:
    """The pod's effective ``which`` ("requests" or "limits"), per resource."""
    total: dict[str, Fraction] = {}
    for container in containers:
        total = _add(total, _amounts(container, which))
    sidecars: dict[str, Fraction] = {}
    peak_init: dict[str, Fraction] = {}
    for container in init_containers:
        amounts = _amounts(container, which)
        if container.get("restartPolicy") == "Always":
            sidecars = _add(sidecars, amounts)
        else:
            peak_init = _at_least(peak_init, _add(sidecars, amounts))
    result = _at_least(_add(total, sidecars), peak_init)
    for name, value in (overhead or {}).items():
        try:
            result[name] = result.get(name, Fraction(0)) + parse_quantity(value)
        except ValueError:
            continue
    return {name: amount for name, amount in result.items() if amount}


def parse_pod(body: Mapping[str, Any]) -> Pod:
    """The projection of a pod as the apiserver returns it (a plain dict)."""
    metadata = body.get("metadata") or {}
    spec = body.get("spec") or {}
    created = metadata.get("creationTimestamp")
    if isinstance(created, str):
        created = datetime.fromisoformat(created.replace("Z", "+00:00"))
    phase = (body.get("status") or {}).get("phase")
    containers = spec.get("containers") or []
    init = spec.get("initContainers") or []
    overhead = spec.get("overhead")
    controller = next(
        (r for r in metadata.get("ownerReferences") or () if r.get("controller")), None
    )
    return Pod(
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        uid=str(metadata.get("uid") or ""),
        created=created if isinstance(created, datetime) else None,
        terminal=phase in ("Succeeded", "Failed"),
        requests=effective(containers, init, overhead, "requests"),
        limits=effective(containers, init, overhead, "limits"),
        annotations={
            k: str(v)
            for k, v in (metadata.get("annotations") or {}).items()
            if k.startswith(names.PREFIX)
        },
        owner=(
            OwnerRef(
                str(controller.get("apiVersion") or ""),
                str(controller.get("kind") or ""),
                str(controller.get("name") or ""),
            )
            if controller
            else None
        ),
        deleting=metadata.get("deletionTimestamp") is not None,
    )
