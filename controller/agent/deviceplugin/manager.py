"""The node's device plugins: one per resource, kept served and registered across kubelet restarts.

This is what the agent's main loop holds. It builds one `ResourcePlugin` per
extended resource present in the inventory (`gpu.ds01.io/gpu` for whole GPUs,
`gpu.ds01.io/mig-<profile>` per MIG profile), serves them all, and registers
each with kubelet. The loop then only reports what it learns:

    plugins = DevicePluginManager(inventory, "/var/lib/kubelet/device-plugins")
    plugins.start()
    ...
    plugins.update(new_inventory)          # new health, MIG layout changes
    plugins.set_health(uuid, False, "XID 79")
    ...
    plugins.stop()

A supervisor thread checks, every `check_interval_s`, what a kubelet restart
looks like from here: kubelet deletes every plugin socket in the directory and
creates a new `kubelet.sock`. A socket of ours that is gone (or is no longer
the file we bound) is served again; a kubelet socket we have not registered
with (new identity) gets a fresh registration. Polling a few `stat` calls a
second costs nothing measurable and needs no inotify binding.

Registration failures (kubelet not up yet, kubelet refusing) are logged,
shown in `status()`, and retried with backoff; they never raise into the
caller, because the plugin serving while kubelet is away is harmless and
kubelet finds it again when it comes back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

import grpc
import structlog

from controller.agent.deviceplugin.allocate import CDI_KIND
from controller.agent.deviceplugin.devices import DeviceTable
from controller.agent.deviceplugin.server import (
    KUBELET_SOCKET,
    ResourcePlugin,
    Steer,
    file_identity,
)
from controller.agent.inventory import Gpu, Inventory, Slot

log = structlog.get_logger("ds01.agent.deviceplugin")

DEFAULT_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")


@dataclass(frozen=True)
class PluginStatus:
    """One resource's plugin as the agent reports it (GPUNode status, logs, tests)."""

    resource: str
    socket: str
    serving: bool
    registered: bool
    """Registered with the kubelet socket that exists now."""
    registrations: int
    """Successful registrations since start: more than one means kubelet restarted."""
    last_error: str | None
    devices: tuple[str, ...]
    unhealthy: tuple[str, ...]


@dataclass
class _Entry:
    plugin: ResourcePlugin
    registered_with: tuple[int, int, int] | None = None
    registrations: int = 0
    last_error: str | None = None
    failures: int = 0
    next_attempt: float = 0.0
    attempted_with: tuple[int, int, int] | None = None


def _by_resource(inventory: Inventory) -> dict[str, list[Slot]]:
    groups: dict[str, list[Slot]] = {}
    for slot in inventory.slots():
        groups.setdefault(slot.resource, []).append(slot)
    return groups


def _with_health(gpu: Gpu, uuid: str, healthy: bool, reason: str | None) -> Gpu | None:
    """``gpu`` with it or its MIG slice ``uuid`` set to ``healthy``; None if neither is ``uuid``."""
    if gpu.uuid == uuid:
        return replace(gpu, healthy=healthy, health_reason=None if healthy else reason)
    if any(m.uuid == uuid for m in gpu.mig):
        mig = tuple(replace(m, healthy=healthy) if m.uuid == uuid else m for m in gpu.mig)
        return replace(gpu, mig=mig)
    return None


class DevicePluginManager:
    """All of a node's device plugins, their health, and their registration with kubelet.

    Thread-safe: `update`, `set_health` and `status` may be called from any thread.
    """

    def __init__(
        self,
        inventory: Inventory,
        plugin_dir: str | Path = DEFAULT_PLUGIN_DIR,
        *,
        device_root: str = "/dev",
        host_device_root: str = "/dev",
        cdi_kind: str = CDI_KIND,
        check_interval_s: float = 1.0,
        register_timeout_s: float = 5.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.plugin_dir = Path(plugin_dir)
        self.kubelet_socket = self.plugin_dir / KUBELET_SOCKET
        self.device_root = device_root
        self.host_device_root = host_device_root
        self.steer: Steer | None = None
        """Ranks the kubelet's free devices for the pod being admitted (set by the agent)."""
        self.cdi_kind = cdi_kind
        self.check_interval_s = check_interval_s
        self.register_timeout_s = register_timeout_s
        self.max_backoff_s = max_backoff_s
        self._lock = threading.RLock()
        self._inventory = inventory
        self._entries: dict[str, _Entry] = {}
        self._started = False
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.update(inventory)

    def _steer(self, resource: str, available: list[str]) -> list[list[str]]:
        return self.steer(resource, available) if self.steer is not None else [available]

    # -- what the agent calls -------------------------------------------------

    def start(self) -> None:
        """Serve every resource, make a first registration attempt, start supervising.

        Raises FileNotFoundError when the device-plugin directory is missing
        (a misconfigured path, or no kubelet on this node): that is a setup
        error, not something to retry.
        """
        if not self.plugin_dir.is_dir():
            raise FileNotFoundError(f"device-plugin directory {self.plugin_dir} does not exist")
        with self._lock:
            if self._started:
                return
            self._started = True
            self._stopping.clear()
            for entry in self._entries.values():
                entry.plugin.start()
        self._supervise_once()
        self._thread = threading.Thread(
            target=self._supervise, name="ds01-deviceplugin-supervisor", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """End every stream, stop serving, remove our sockets. Idempotent."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        with self._lock:
            for entry in self._entries.values():
                entry.plugin.stop()
                entry.registered_with = None
            self._started = False

    def update(self, inventory: Inventory) -> None:
        """Take a new inventory: health changes are streamed, resources appear and go.

        A resource no longer present (a MIG profile reconfigured away) has its
        plugin stopped, which ends its stream: kubelet then drops its devices.
        """
        groups = _by_resource(inventory)
        with self._lock:
            self._inventory = inventory
            for resource in [r for r in self._entries if r not in groups]:
                log.info("resource gone", resource=resource)
                self._entries.pop(resource).plugin.stop()
            for resource, slots in groups.items():
                entry = self._entries.get(resource)
                if entry is None:
                    table = DeviceTable(resource, slots, inventory.control)
                    plugin = ResourcePlugin(
                        table,
                        self.plugin_dir,
                        self.device_root,
                        self.cdi_kind,
                        host_device_root=self.host_device_root,
                        steer=self._steer,
                    )
                    self._entries[resource] = _Entry(plugin)
                    if self._started:
                        plugin.start()
                elif entry.plugin.table.replace(slots, inventory.control):
                    log.info(
                        "devices changed",
                        resource=resource,
                        unhealthy=[s.uuid for s in slots if not s.healthy],
                    )
        self._wake.set()

    def set_health(self, uuid: str, healthy: bool, reason: str | None = None) -> bool:
        """Mark a GPU or MIG slice (by UUID) healthy or not; False when the UUID is unknown.

        A GPU's health covers its MIG slices. This edits the current inventory,
        so a later `update` with the agent's own view replaces it: whichever the
        agent says last is what kubelet sees.
        """
        with self._lock:
            gpus, found = [], False
            for gpu in self._inventory.gpus:
                changed = _with_health(gpu, uuid, healthy, reason)
                found = found or changed is not None
                gpus.append(changed or gpu)
            if not found:
                return False
            if not healthy:
                log.warning("device unhealthy", device=uuid, reason=reason)
            self.update(replace(self._inventory, gpus=tuple(gpus)))
            return True

    @property
    def inventory(self) -> Inventory:
        with self._lock:
            return self._inventory

    def status(self) -> list[PluginStatus]:
        """One line per resource, sorted by resource name."""
        kubelet = file_identity(self.kubelet_socket)
        with self._lock:
            out = []
            for resource, entry in sorted(self._entries.items()):
                advertised = entry.plugin.table.advertised().devices
                out.append(
                    PluginStatus(
                        resource=resource,
                        socket=str(entry.plugin.socket),
                        serving=entry.plugin.serving,
                        registered=kubelet is not None and entry.registered_with == kubelet,
                        registrations=entry.registrations,
                        last_error=entry.last_error,
                        devices=tuple(d for d, _ in advertised),
                        unhealthy=tuple(d for d, h in advertised if h != "Healthy"),
                    )
                )
            return out

    def __enter__(self) -> DevicePluginManager:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- supervision ------------------------------------------------------------

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.check_interval_s)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self._supervise_once()
            except Exception:  # keep supervising: a bug here must not end registration
                log.exception("device plugin supervision failed")

    def _due(self) -> Iterator[tuple[_Entry, tuple[int, int, int]]]:
        """Under the lock: re-serve wiped sockets; yield entries that need registering now."""
        kubelet = file_identity(self.kubelet_socket)
        now = time.monotonic()
        for entry in self._entries.values():
            plugin = entry.plugin
            if not plugin.socket_intact():
                log.info("plugin socket gone; serving again", resource=plugin.resource)
                plugin.stop(grace_s=0)
                plugin.start()
                entry.registered_with = None
            if kubelet is None or entry.registered_with == kubelet:
                continue
            if entry.attempted_with != kubelet or now >= entry.next_attempt:
                yield entry, kubelet

    def _supervise_once(self) -> None:
        with self._lock:
            if not self._started or self._stopping.is_set():
                return
            due = list(self._due())
        # Register outside the lock: an unresponsive kubelet must not block
        # update()/set_health() for the length of the timeout.
        for entry, kubelet in due:
            error: str | None = None
            try:
                entry.plugin.register(self.kubelet_socket, self.register_timeout_s)
            except grpc.RpcError as e:
                error = f"{e.code().name}: {e.details()}"
            with self._lock:
                entry.attempted_with = kubelet
                if error is None:
                    entry.registered_with = kubelet
                    entry.registrations += 1
                    entry.failures = 0
                    entry.last_error = None
                else:
                    entry.failures += 1
                    backoff = min(self.check_interval_s * 2**entry.failures, self.max_backoff_s)
                    entry.next_attempt = time.monotonic() + backoff
                    entry.last_error = error
                    log.warning(
                        "registration failed",
                        resource=entry.plugin.resource,
                        error=error,
                        retry_in_s=round(backoff, 1),
                    )
