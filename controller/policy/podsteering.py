"""Which of the kubelet's free devices a pod should get: its owner's reservations first.

The device plugin API does not say which pod a device is for: the kubelet offers
the free devices (`GetPreferredAllocation`) and then names the ones it took
(`Allocate`). A reserving grant holds specific devices for one user
(`GPUNode.spec.reservations`), so the plugin ranks the free devices in three
tiers and the kubelet fills the request from the first tier on:

1. devices reserved now for the pod's owner (when the agent knows who is being
   admitted: `owner`);
2. devices nobody holds;
3. devices held for someone else, last: taken only when nothing else is free
   (the enforcement passes then judge that use, as they judge any other).

A reservation on a whole GPU covers its MIG slices. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from controller.api.node import Reservation


def holder(
    device: str,
    reservations: Sequence[Reservation],
    parents: Mapping[str, str],
    now: datetime,
) -> str | None:
    """Who ``device`` (or the GPU it is a slice of) is reserved for now, if anyone."""
    ids = {device, parents.get(device, device)}
    for reservation in reservations:
        starts = reservation.from_ or now
        if reservation.device_uuid in ids and starts <= now < reservation.until:
            return reservation.user
    return None


def tiers(
    available: Sequence[str],
    reservations: Sequence[Reservation],
    owner: str | None,
    parents: Mapping[str, str],
    now: datetime,
) -> list[list[str]]:
    """``available`` split into the three tiers above (each in the kubelet's order)."""
    mine: list[str] = []
    free: list[str] = []
    others: list[str] = []
    for device in dict.fromkeys(available):
        held_for = holder(device, reservations, parents, now)
        if held_for is None:
            free.append(device)
        elif owner is not None and held_for == owner:
            mine.append(device)
        else:
            others.append(device)
    return [mine, free, others]
