"""One resource's advertised devices and their health, shared by the gRPC threads and the agent.

The agent's scan loop writes (a new inventory, a health flip); kubelet's calls
read (ListAndWatch, Allocate, GetPreferredAllocation) on gRPC worker threads.
A `DeviceTable` is the one place both meet: a lock, the current slots, and a
version that changes only when what kubelet sees (IDs and health) changes, so a
ListAndWatch stream sends a new list exactly when there is something new, a
recovery included (NVIDIA's plugin never reports a device healthy again).

The table outlives gRPC servers: when kubelet restarts and the plugin serves on
a fresh socket, the new server reads the same table.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from controller.agent.inventory import DeviceNode, Slot

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
"""kubelet's two health values (k8s.io/kubelet deviceplugin constants)."""


class UnknownDeviceError(LookupError):
    """Kubelet asked for a device ID this resource does not advertise."""

    def __init__(self, resource: str, device_ids: list[str]) -> None:
        self.resource = resource
        self.device_ids = device_ids
        super().__init__(
            f"unknown device ID(s) for {resource}: {', '.join(device_ids)} "
            "(not advertised by this plugin; kubelet's view may be stale)"
        )


@dataclass(frozen=True)
class Advertised:
    """What ListAndWatch sends: (ID, health) pairs in inventory order, and their version."""

    version: int
    devices: tuple[tuple[str, str], ...]


class DeviceTable:
    """The slots of one extended resource and the control devices every container needs."""

    def __init__(
        self, resource: str, slots: Iterable[Slot], control: Iterable[DeviceNode] = ()
    ) -> None:
        self.resource = resource
        self._changed = threading.Condition()
        self._slots: dict[str, Slot] = {}
        self._control: tuple[DeviceNode, ...] = ()
        self._advertised = Advertised(0, ())
        self.replace(slots, control)

    def replace(self, slots: Iterable[Slot], control: Iterable[DeviceNode] = ()) -> bool:
        """Take a new view of this resource's slots; True when kubelet's view changed.

        Slots of other resources are ignored, so callers may pass a whole
        inventory's `slots()`.
        """
        mine = {s.uuid: s for s in slots if s.resource == self.resource}
        devices = tuple((uuid, HEALTHY if s.healthy else UNHEALTHY) for uuid, s in mine.items())
        with self._changed:
            self._slots = mine
            self._control = tuple(control)
            if devices == self._advertised.devices:
                return False
            self._advertised = Advertised(self._advertised.version + 1, devices)
            self._changed.notify_all()
            return True

    def advertised(self) -> Advertised:
        """The current (version, devices) pair, consistent with each other."""
        with self._changed:
            return self._advertised

    def wait_newer(self, version: int, timeout_s: float) -> Advertised:
        """Block until the version differs from ``version``, `wake()` is called, or the timeout.

        Returns the current advertisement either way; the caller compares
        versions. A stream's termination callback calls `wake()` so that its
        worker thread is released at once instead of at the timeout.
        """
        with self._changed:
            if self._advertised.version == version:
                self._changed.wait(timeout_s)
            return self._advertised

    def wake(self) -> None:
        """Release every waiting ListAndWatch stream (stop, or a client went away)."""
        with self._changed:
            self._changed.notify_all()

    def slots(self) -> dict[str, Slot]:
        """UUID -> slot, a copy taken under the lock."""
        with self._changed:
            return dict(self._slots)

    def control(self) -> tuple[DeviceNode, ...]:
        with self._changed:
            return self._control

    def lookup(self, device_ids: Iterable[str]) -> tuple[list[Slot], tuple[DeviceNode, ...]]:
        """The slots of ``device_ids`` and the control devices.

        Raises UnknownDeviceError naming every ID this resource does not advertise.
        """
        with self._changed:
            ids = list(device_ids)
            unknown = [i for i in ids if i not in self._slots]
            if unknown:
                raise UnknownDeviceError(self.resource, unknown)
            return [self._slots[i] for i in ids], self._control
