"""What each user uses and holds right now, per node: the rates the usage history integrates.

- used: the distinct devices the user's workloads hold on each node (GPUNode
  status), each counted by its GPU-equivalents, as the budget counts them;
- granted: the GPU-equivalents of the user's Active grants, on the node that
  holds their devices (`-` for grants that only raise the allowance);
- unused: what those grants reserve and nobody uses (`status.usage.reservedIdle`,
  which the operator keeps current).

A reaped idle pod adds its devices' GPU-equivalents times the time it was idle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from fractions import Fraction

from controller.api.kinds import GPUGrant, GPUNode
from controller.policy.quota import equivalent_of
from controller.policy.usage import device_equivalents, fraction
from controller.policy.usagehistory import NO_NODE, Figures


def current(nodes: Sequence[GPUNode], grants: Sequence[GPUGrant]) -> dict[str, dict[str, Figures]]:
    """user -> node -> rates now."""
    equivalents = device_equivalents(nodes)
    out: dict[str, dict[str, Figures]] = {}

    def add(user: str, node: str, more: Figures) -> None:
        per_node = out.setdefault(user, {})
        per_node[node] = per_node.get(node, Figures()) + more

    for node in nodes:
        held: dict[str, set[str]] = {}
        for workload in (node.status.workloads if node.status else None) or ():
            if workload.owner:
                held.setdefault(workload.owner, set()).update(workload.devices)
        for user, devices in held.items():
            amount = sum((equivalents.get(u, Fraction(1)) for u in devices), Fraction(0))
            add(user, node.metadata.name, Figures(used=float(amount)))
    for grant in grants:
        status = grant.status
        if status is None or status.state != "Active" or status.gpu_equivalents is None:
            continue
        where = status.allocations[0].node if status.allocations else NO_NODE
        idle = status.usage.reserved_idle if status.usage else 0.0
        size = float(fraction(status.gpu_equivalents))
        add(grant.spec.subject.name, where, Figures(granted=size, unused=idle))
    return out


def reaped_hours(
    gpu_requests: Mapping[str, int],
    equivalents: Mapping[str, Fraction],
    idle_since: datetime | None,
    stopped_at: datetime,
) -> float:
    """GPU-equivalent-hours a pod stopped for idleness sat idle on its devices."""
    if idle_since is None or stopped_at <= idle_since:
        return 0.0
    size = sum(
        (n * equivalent_of(name, equivalents) for name, n in gpu_requests.items()), Fraction(0)
    )
    return float(size) * (stopped_at - idle_since).total_seconds() / 3600
