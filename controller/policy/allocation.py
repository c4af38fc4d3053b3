"""Which concrete devices a reserving grant holds: first fit, MIG- and NVLink-aware.

The inventory comes from what the agents report in GPUNode status. A slot is a
whole GPU (not in MIG mode) or a MIG instance, always named by UUID. Two
reservations never share a device while their windows overlap; allocations
already made are kept (devices do not move under a user) and new ones are
decided in creation order, so the result depends only on the objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from controller.api.kinds import GPUNode


@dataclass(frozen=True)
class Slot:
    """One allocatable device."""

    node: str
    uuid: str
    gpu_index: int
    mig_profile: str | None = None
    placement: int = 0
    healthy: bool = True
    nvlink_peers: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Window:
    """A half-open time interval [start, end)."""

    start: datetime
    end: datetime

    def overlaps(self, other: Window) -> bool:
        return self.start < other.end and other.start < self.end


@dataclass(frozen=True)
class Request:
    """What a reserving grant asks for."""

    key: str
    count: int
    window: Window
    mig_profile: str | None = None
    node_name: str | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict)
    device_uuids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Allocation:
    """Devices held for one request on one node."""

    node: str
    slots: tuple[Slot, ...]
    closeness: str = "Single"

    @property
    def uuids(self) -> tuple[str, ...]:
        return tuple(s.uuid for s in self.slots)


@dataclass(frozen=True)
class Refusal:
    """Why a request could not be placed (yet)."""

    reason: str
    message: str


def inventory(nodes: Sequence[GPUNode]) -> dict[str, list[Slot]]:
    """Allocatable slots per node, from the agents' reports (GPUNode status)."""
    slots: dict[str, list[Slot]] = {}
    for node in nodes:
        name = node.metadata.name
        out = slots.setdefault(name, [])
        for device in (node.status.devices if node.status else None) or ():
            peers = frozenset(device.nvlink_peers or ())
            if device.mig_enabled:
                for mig in device.mig_instances or ():
                    out.append(
                        Slot(
                            name,
                            mig.uuid,
                            device.index,
                            mig.profile,
                            mig.placement_start,
                            mig.health == "Healthy" and device.health == "Healthy",
                            peers,
                        )
                    )
            else:
                out.append(
                    Slot(
                        name, device.uuid, device.index, None, 0, device.health == "Healthy", peers
                    )
                )
    return slots


class Ledger:
    """Reservations made so far: device UUID -> windows held."""

    def __init__(self) -> None:
        self._held: dict[str, list[tuple[Window, str]]] = {}

    def free(self, uuid: str, window: Window) -> bool:
        return not any(w.overlaps(window) for w, _ in self._held.get(uuid, ()))

    def hold(self, allocation: Allocation, window: Window, key: str) -> None:
        for uuid in allocation.uuids:
            if not self.free(uuid, window):
                raise ValueError(f"device {uuid} is already held over {window}")
            self._held.setdefault(uuid, []).append((window, key))

    def holders(self, uuid: str) -> list[str]:
        return [key for _, key in self._held.get(uuid, ())]


def _nvlink_set(free: list[Slot], count: int) -> list[Slot] | None:
    """``count`` GPUs that are all NVLink peers of each other, first fit by index."""
    for first in free:
        chosen = [first]
        for other in free:
            if other is first:
                continue
            if all(other.gpu_index in c.nvlink_peers for c in chosen):
                chosen.append(other)
                if len(chosen) == count:
                    return chosen
    return None


def place(
    request: Request,
    slots: Mapping[str, Sequence[Slot]],
    node_labels: Mapping[str, Mapping[str, str]],
    ledger: Ledger,
) -> Allocation | Refusal:
    """First node (by name) where the request fits; the devices chosen there."""
    nodes = sorted(slots)
    if request.node_name is not None:
        nodes = [n for n in nodes if n == request.node_name]
    nodes = [
        n
        for n in nodes
        if all(node_labels.get(n, {}).get(k) == v for k, v in request.node_selector.items())
    ]
    if not nodes:
        return Refusal("NoMatchingNode", "no GPU node matches spec.placement")
    for node in nodes:
        fitting = sorted(
            (
                s
                for s in slots[node]
                if s.healthy
                and s.mig_profile == request.mig_profile
                and ledger.free(s.uuid, request.window)
            ),
            key=lambda s: (s.gpu_index, s.placement),
        )
        if request.device_uuids:
            wanted = [s for s in fitting if s.uuid in request.device_uuids]
            if len(wanted) == len(request.device_uuids):
                return Allocation(node, tuple(wanted), "Explicit")
            continue
        if len(fitting) < request.count:
            continue
        if request.mig_profile is None and request.count > 1:
            linked = _nvlink_set(fitting, request.count)
            if linked is not None:
                return Allocation(node, tuple(linked), "NVLink")
            return Allocation(node, tuple(fitting[: request.count]), "PCIe")
        return Allocation(node, tuple(fitting[: request.count]), "Single")
    what = f"{request.count} x {request.mig_profile or 'whole GPU'}"
    if request.device_uuids:
        return Refusal(
            "DevicesUnavailable",
            "the devices in spec.placement.deviceUUIDs are not all free and healthy "
            "on one node for the whole window",
        )
    return Refusal("NoCapacity", f"no node has {what} free and healthy for the whole window")


def allocate_all(
    requests: Sequence[Request],
    existing: Mapping[str, Allocation],
    slots: Mapping[str, Sequence[Slot]],
    node_labels: Mapping[str, Mapping[str, str]],
) -> dict[str, Allocation | Refusal]:
    """Allocate every request: keep valid existing allocations, then place the rest in order.

    ``requests`` must come in a stable order (creation time, then name): that
    order decides who gets a contested device.
    """
    ledger = Ledger()
    known = {s.uuid: s for node in slots.values() for s in node}
    result: dict[str, Allocation | Refusal] = {}
    pending: list[Request] = []
    for request in requests:
        kept = existing.get(request.key)
        if (
            kept is not None
            and len(kept.uuids) == request.count
            and all(u in known and known[u].node == kept.node for u in kept.uuids)
            and all(known[u].mig_profile == request.mig_profile for u in kept.uuids)
            and all(ledger.free(u, request.window) for u in kept.uuids)
        ):
            refreshed = Allocation(kept.node, tuple(known[u] for u in kept.uuids), kept.closeness)
            ledger.hold(refreshed, request.window, request.key)
            result[request.key] = refreshed
        else:
            pending.append(request)
    for request in pending:
        placed = place(request, slots, node_labels, ledger)
        if isinstance(placed, Allocation):
            ledger.hold(placed, request.window, request.key)
        result[request.key] = placed
    return result
