"""The device plugin's hint: which of the kubelet's free devices the admitted pod should get.

`policy.podsteering` ranks the devices; this finds what it needs. The
reservations are the GPUNode spec in force. The pod is not named by the device
plugin API, so it is inferred: the kubelet admits pods one at a time and
allocates their devices during admission, so the pod being admitted is one
that is bound to this node, still Pending, asks for the resource, and is not
yet in PodResources. When those candidates belong to more than one owner (or
none), no owner is assumed and only the others' reservations are avoided.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import structlog

from controller.agent.agent import Agent
from controller.policy.podsteering import tiers

log = structlog.get_logger("ds01.agent.steering")

PodRef = tuple[str, str]


def asks_for(pod: Any, resource: str) -> bool:
    """Whether a pod (the client's V1Pod) asks for ``resource`` in any container."""
    spec = pod.spec
    containers = [*(spec.containers or []), *(spec.init_containers or [])]
    for container in containers:
        resources = container.resources
        if resources is None:
            continue
        if resource in (resources.limits or {}) or resource in (resources.requests or {}):
            return True
    return False


class Steering:
    """Answers `DevicePluginManager.steer` from the agent's views."""

    def __init__(
        self,
        agent: Agent,
        pending: Callable[[str], Iterable[PodRef]],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.agent = agent
        self.pending = pending
        """Pods bound to this node, still Pending, asking for a resource."""
        self.clock = clock

    def owner(self, resource: str) -> str | None:
        """The owner of the pod the kubelet is admitting, when that is unambiguous."""
        by_namespace, allocations = self.agent.allocations_now()
        candidates = [pod for pod in self.pending(resource) if pod not in allocations]
        owners = {by_namespace.get(namespace) for namespace, _ in candidates}
        return owners.pop() if len(owners) == 1 else None

    def __call__(self, resource: str, available: list[str]) -> list[list[str]]:
        policy = self.agent.policy
        reservations = policy.spec.reservations if policy is not None else None
        if not reservations:
            return [available]
        inventory = self.agent.inventory
        parents = {slot.uuid: slot.gpu.uuid for slot in inventory.slots()} if inventory else {}
        owner = self.owner(resource)
        ranked = tiers(available, reservations, owner, parents, self.clock())
        log.debug("allocation steered", resource=resource, owner=owner, tiers=ranked)
        return ranked
