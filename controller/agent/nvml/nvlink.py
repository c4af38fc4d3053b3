"""NVLink connections of a GPU, read once and cached by the caller.

Querying links is slow on real hardware (NVIDIA's device plugin was reported
at ~0.6 s per NVLink query when it did this per allocation), and links do not
change while the driver is loaded, so the agent reads them once per GPU.

A link ends at another GPU (identified by its PCI bus id) or at an NVSwitch;
GPUs that reach the switch fabric are all peers of each other (DGX/HGX).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pynvml

from controller.agent.nvml.binding import Handle, is_lost, text


@dataclass(frozen=True)
class Links:
    """Where one GPU's active links go."""

    remote_bus_ids: frozenset[str]
    switch: bool


NO_LINKS = Links(frozenset(), switch=False)
SWITCH = pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH


def read_links(handle: Handle) -> Links:
    """Walk the GPU's links until NVML says there are no more. Lost errors propagate."""
    remotes: set[str] = set()
    switch = False
    for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
        try:
            active = pynvml.nvmlDeviceGetNvLinkState(handle, link)
        except pynvml.NVMLError as exc:
            if is_lost(exc):
                raise
            break  # NOT_SUPPORTED: no NVLink at all; INVALID_ARGUMENT: past the last link
        if not active:
            continue
        try:
            if pynvml.nvmlDeviceGetNvLinkRemoteDeviceType(handle, link) == SWITCH:
                switch = True
                continue
            remotes.add(text(pynvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId).upper())
        except pynvml.NVMLError as exc:
            if is_lost(exc):
                raise
            continue  # this link's far end is unknown; the others still count
    return Links(frozenset(remotes), switch)


def peers(links: Mapping[str, Links], bus_ids: Mapping[str, str]) -> dict[str, frozenset[str]]:
    """UUID -> UUIDs it reaches over NVLink (symmetric), from each GPU's links and bus id."""
    by_bus = {bus.upper(): uuid for uuid, bus in bus_ids.items()}
    fabric = {uuid for uuid, found in links.items() if found.switch}
    result: dict[str, set[str]] = {uuid: set() for uuid in bus_ids}
    for uuid, found in links.items():
        direct = {by_bus[bus] for bus in found.remote_bus_ids if bus in by_bus}
        if found.switch:
            direct |= fabric
        for other in direct - {uuid}:
            result.setdefault(uuid, set()).add(other)
            result.setdefault(other, set()).add(uuid)
    return {uuid: frozenset(found) for uuid, found in result.items()}
