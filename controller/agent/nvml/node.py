"""The node's GPUs as NVML reports them: inventory, live samples and XID health.

One `Nvml` per agent process. `start()` initialises NVML (through the pinned
`pynvml` binding, optionally loading a given library, as tests do with the
fake), reads the device majors, reads every GPU and its NVLinks once, and
registers for XID events. Each `scan()` (or `inventory()` then `sample()`)
then polls XIDs without blocking, re-enumerates GPUs and MIG devices (a MIG
layout or a lost GPU can change at any time; facts of a GPU that cannot change
are cached by UUID, NVLinks are never read again), and samples utilisation,
memory and compute processes.

Errors are handled per call: a call NVML cannot answer yields None (or leaves
the GPU as last seen), and a GPU that answers GPU_IS_LOST is reported lost and
unhealthy in the same scan instead of raising. Only `start()` raises, with
`NvmlUnavailableError`, because an agent that cannot see its GPUs must not run.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import pynvml
import structlog

from controller.agent.inventory import (
    DeviceNode,
    Gpu,
    GpuProcess,
    Inventory,
    Sample,
    XidEvent,
)
from controller.agent.nvml.binding import (
    MIB,
    GpuLostError,
    Handle,
    NvmlUnavailableError,
    address,
    describe,
    error_code,
    is_lost,
    text,
    use_library,
)
from controller.agent.nvml.devnodes import DeviceNumbers
from controller.agent.nvml.health import APPLICATION_XIDS, HealthLedger
from controller.agent.nvml.mig import MigDevice, mig_handles, read_slice
from controller.agent.nvml.nvlink import NO_LINKS, Links, peers, read_links

log = structlog.get_logger("ds01.agent.nvml")
T = TypeVar("T")

NO_ID = 0xFFFFFFFF
"""GPU/compute instance id of an event or process that concerns the whole GPU."""
XID_EVENTS = pynvml.nvmlEventTypeXidCriticalError


@dataclass(frozen=True)
class Scan:
    """One full scan: what the node has, what it is doing, and the XIDs seen since the last."""

    inventory: Inventory
    sample: Sample
    xids: tuple[XidEvent, ...]


@dataclass
class _Entry:
    """A GPU as last seen: facts fixed while it exists, its handle and its MIG devices."""

    index: int
    uuid: str
    name: str
    memory_mib: int
    minor: int
    device: DeviceNode
    pci_bus_id: str | None
    handle: Handle
    mig_enabled: bool = False
    mig_total: int | None = None
    migs: list[MigDevice] = field(default_factory=list)


class Nvml:
    """The NVML layer of the node agent. Thread-safe; see the module docstring."""

    def __init__(
        self,
        *,
        library: str | os.PathLike[str] | None = None,
        proc_root: str | os.PathLike[str] = "/proc",
        dev_root: str | os.PathLike[str] = "/dev",
        ignored_xids: Iterable[int] = APPLICATION_XIDS,
        xid_recovery_s: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """`library`: an NVML shared library to load instead of the system's.

        `proc_root`/`dev_root`: where `/proc/devices` (and the MIG minors) are
        read and under which device paths are reported. `xid_recovery_s`: see
        `controller.agent.nvml.health`; None keeps XID-marked devices unhealthy
        until `mark_healthy`.
        """
        self._library = library
        self._proc_root = Path(proc_root)
        self._dev_root = Path(dev_root)
        self._health = HealthLedger(ignored_xids, xid_recovery_s, clock)
        self._lock = threading.RLock()
        # Held while waiting for events, so close() never frees a set being waited on.
        self._wait_lock = threading.Lock()
        self._devices: DeviceNumbers | None = None
        self._driver: str | None = None
        self._events: Handle | None = None
        self._entries: dict[str, _Entry] = {}
        self._addresses: dict[int, str] = {}
        self._links: dict[str, Links] = {}
        self._registered: set[str] = set()
        self._wait_failure: int | None = None

    # ---- lifecycle ----

    def start(self) -> Inventory:
        """Initialise NVML and read the node; NvmlUnavailableError when that is impossible."""
        with self._lock:
            if self._devices is not None:
                return self._build_inventory()
            if self._library is not None:
                use_library(self._library)
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as exc:
                raise NvmlUnavailableError(f"nvmlInit failed: {describe(exc)}") from exc
            try:
                devices = DeviceNumbers(self._proc_root, self._dev_root)
            except NvmlUnavailableError:
                pynvml.nvmlShutdown()
                raise
            self._driver = self._query(lambda: text(pynvml.nvmlSystemGetDriverVersion()))
            self._events = self._query(pynvml.nvmlEventSetCreate)
            if self._events is None:
                log.error("no NVML event set: XIDs will not be seen")
            self._devices = devices
            self._refresh()
            return self._build_inventory()

    def close(self) -> None:
        """Release the event set and shut NVML down; idempotent.

        Waits for a poll in progress in another thread (at most its timeout).
        """
        with self._wait_lock, self._lock:
            if self._devices is None:
                return
            if self._events is not None:
                self._query(pynvml.nvmlEventSetFree, self._events)
                self._events = None
            self._query(pynvml.nvmlShutdown)
            self._devices = None
            self._entries.clear()
            self._addresses.clear()
            self._registered.clear()

    def __enter__(self) -> Nvml:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ---- public reads ----

    def inventory(self) -> Inventory:
        """Poll pending XIDs (no wait), re-enumerate GPUs and MIG devices, return the result.

        NVLinks stay cached. With `sample()` this is the agent's `GpuSource`;
        `scan()` does both and also returns the XID events.
        """
        self.poll_xids()
        with self._lock:
            self._refresh()
            return self._build_inventory()

    def last_inventory(self) -> Inventory:
        """The inventory as of the last enumeration, with current health; no NVML calls."""
        with self._lock:
            return self._build_inventory()

    def sample(self) -> Sample:
        """Utilisation, memory and compute processes of every GPU that answers."""
        with self._lock:
            return self._sample()

    def scan(self, xid_timeout_ms: int = 0) -> Scan:
        """XID poll, re-enumeration, sample: what the agent does each period."""
        xids = self.poll_xids(xid_timeout_ms)
        with self._lock:
            self._refresh()
            sample = self._sample()
            return Scan(self._build_inventory(), sample, tuple(xids))

    def poll_xids(self, timeout_ms: int = 0, max_events: int = 64) -> list[XidEvent]:
        """XID events since the last poll, waiting at most `timeout_ms` for the first.

        Critical XIDs mark their device (GPU, or MIG slice when NVML names its
        instance) unhealthy. Application XIDs are returned but change nothing.
        A dedicated thread may call this with a long timeout; a poll that finds
        such a thread waiting returns [] at once instead of queueing behind it
        (that thread reports the events), so scans never block on it.
        """
        if timeout_ms <= 0:
            acquired = self._wait_lock.acquire(blocking=False)
        else:
            acquired = self._wait_lock.acquire(timeout=timeout_ms / 1000)
        if not acquired:
            return []
        try:
            return self._drain_events(timeout_ms, max_events)
        finally:
            self._wait_lock.release()

    def mark_healthy(self, uuid: str) -> bool:
        """Declare a GPU or MIG slice healthy again (after a reset, or by an admin)."""
        with self._lock:
            return self._health.mark_healthy(uuid)

    def unhealthy(self) -> dict[str, str]:
        """UUID (GPU or MIG) -> why it is unhealthy."""
        with self._lock:
            return self._health.unhealthy()

    # ---- enumeration ----

    def _require_devices(self) -> DeviceNumbers:
        if self._devices is None:
            raise RuntimeError("Nvml.start() has not been called")
        return self._devices

    def _refresh(self) -> None:
        self._require_devices()
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as exc:
            log.error("NVML device count failed: keeping the last inventory", error=describe(exc))
            return
        by_index = {entry.index: entry for entry in self._entries.values()}
        entries: dict[str, _Entry] = {}
        for index in range(count):
            entry = self._refresh_gpu(index, by_index.get(index))
            if entry is not None:
                entries[entry.uuid] = entry
        self._entries = entries
        self._addresses = {address(entry.handle): uuid for uuid, entry in entries.items()}

    def _refresh_gpu(self, index: int, previous: _Entry | None) -> _Entry | None:
        uuid = previous.uuid if previous else None
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = text(pynvml.nvmlDeviceGetUUID(handle))
            # After a loss everything is read again: a reset GPU may come back changed.
            renewed = self._health.is_lost(uuid)
            entry = self._entries.get(uuid)
            if entry is None or renewed:
                entry = self._describe(index, handle, uuid)
            entry.index, entry.handle = index, handle
            self._read_mig(entry)
            if uuid not in self._links or renewed:
                self._links[uuid] = read_links(handle)
            if uuid not in self._registered or renewed:
                self._register_events(uuid, handle)
        except (pynvml.NVMLError, GpuLostError) as exc:
            reason = exc.reason if isinstance(exc, GpuLostError) else describe(exc)
            if uuid is None:
                log.error("GPU unreadable before it was known", index=index, error=reason)
                return None
            if isinstance(exc, GpuLostError) or is_lost(exc):
                self._health.lost(uuid, reason)
            else:
                log.warning("NVML call failed: GPU kept as last seen", gpu=uuid, error=reason)
            return self._entries.get(uuid, previous)
        self._health.answered(uuid)
        for mig in entry.migs:
            self._health.answered(mig.slice.uuid)
        return entry

    def _describe(self, index: int, handle: Handle, uuid: str) -> _Entry:
        minor = int(pynvml.nvmlDeviceGetMinorNumber(handle))
        return _Entry(
            index=index,
            uuid=uuid,
            name=text(pynvml.nvmlDeviceGetName(handle)),
            memory_mib=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total) // MIB,
            minor=minor,
            device=self._require_devices().gpu(minor),
            pci_bus_id=self._query(lambda: text(pynvml.nvmlDeviceGetPciInfo(handle).busId)),
            handle=handle,
        )

    def _read_mig(self, entry: _Entry) -> None:
        try:
            current, _pending = pynvml.nvmlDeviceGetMigMode(entry.handle)
        except pynvml.NVMLError_NotSupported:
            current = pynvml.NVML_DEVICE_MIG_DISABLE  # not a MIG-capable GPU
        entry.mig_enabled = current == pynvml.NVML_DEVICE_MIG_ENABLE
        if not entry.mig_enabled:
            entry.migs, entry.mig_total = [], None
            return
        entry.mig_total = int(pynvml.nvmlDeviceGetMaxMigDeviceCount(entry.handle))
        # Read again every time: a MIG UUID alone does not prove the instance is
        # unchanged (a re-created instance can reuse GPU/compute instance ids).
        entry.migs = [
            MigDevice(
                read_slice(
                    handle,
                    text(pynvml.nvmlDeviceGetUUID(handle)),
                    parent=entry.handle,
                    gpu_minor=entry.minor,
                    gpu_memory_mib=entry.memory_mib,
                    devices=self._require_devices(),
                ),
                handle,
            )
            for handle in mig_handles(entry.handle, entry.mig_total)
        ]

    def _register_events(self, uuid: str, handle: Handle) -> None:
        """Ask for this GPU's XIDs; a GPU without them stays usable, so failures only log."""
        if self._events is None:
            return
        try:
            if int(pynvml.nvmlDeviceGetSupportedEventTypes(handle)) & XID_EVENTS:
                pynvml.nvmlDeviceRegisterEvents(handle, XID_EVENTS, self._events)
            else:
                log.warning("GPU reports no XID events", gpu=uuid)
        except pynvml.NVMLError as exc:
            if is_lost(exc):
                raise
            log.warning("cannot register for XID events", gpu=uuid, error=describe(exc))
        self._registered.add(uuid)

    # ---- sampling ----

    def _query(self, call: Callable[..., T], *args: Any) -> T | None:
        """One NVML call: its answer, or None when NVML has none. A lost GPU raises GpuLostError."""
        try:
            return call(*args)
        except pynvml.NVMLError as exc:
            if is_lost(exc):
                raise GpuLostError(describe(exc)) from exc
            if error_code(exc) != pynvml.NVML_ERROR_NOT_SUPPORTED:
                log.debug(
                    "NVML call failed", call=getattr(call, "__name__", "?"), error=describe(exc)
                )
            return None

    def _sample(self) -> Sample:
        utilization: dict[str, int | None] = {}
        memory: dict[str, int] = {}
        processes: list[GpuProcess] = []
        for entry in sorted(self._entries.values(), key=lambda e: e.index):
            if self._health.is_lost(entry.uuid):
                continue
            gpu_memory: dict[str, int] = {}
            gpu_processes: list[GpuProcess] = []
            try:
                # NOT_SUPPORTED in MIG mode: no utilisation counters for MIG at all.
                rates = self._query(pynvml.nvmlDeviceGetUtilizationRates, entry.handle)
                gpu_util = None if rates is None else int(rates.gpu)
                targets = [(entry.handle, entry.uuid)]
                targets += [(mig.handle, mig.slice.uuid) for mig in entry.migs]
                for handle, uuid in targets:
                    info = self._query(pynvml.nvmlDeviceGetMemoryInfo, handle)
                    if info is not None:
                        gpu_memory[uuid] = int(info.used) // MIB
                # A MIG GPU's processes are read per MIG device, which names their slice.
                for handle, uuid in targets[1:] if entry.migs else targets:
                    gpu_processes += self._processes(handle, uuid)
            except GpuLostError as lost:
                self._health.lost(entry.uuid, lost.reason)
                continue
            utilization[entry.uuid] = gpu_util
            memory.update(gpu_memory)
            processes.extend(gpu_processes)
        return Sample(utilization, memory, tuple(processes), self._health.lost_uuids())

    def _processes(self, handle: Handle, uuid: str) -> list[GpuProcess]:
        found = self._query(pynvml.nvmlDeviceGetComputeRunningProcesses, handle) or ()
        # usedGpuMemory is None where NVML cannot tell (the binding maps "not available").
        return [
            GpuProcess(
                pid=int(proc.pid),
                device_uuid=uuid,
                used_memory_mib=None if proc.usedGpuMemory is None else proc.usedGpuMemory // MIB,
            )
            for proc in found
        ]

    # ---- events ----

    def _drain_events(self, timeout_ms: int, max_events: int) -> list[XidEvent]:
        events: list[XidEvent] = []
        wait_ms = max(timeout_ms, 0)
        while self._events is not None and len(events) < max_events:
            try:
                data = pynvml.nvmlEventSetWait(self._events, wait_ms)
            except pynvml.NVMLError as exc:
                if error_code(exc) != pynvml.NVML_ERROR_TIMEOUT:
                    self._wait_failed(exc)
                break
            wait_ms = 0  # drain what is already queued, then stop
            self._wait_failure = None
            if int(data.eventType) != XID_EVENTS:
                continue
            with self._lock:
                for uuid in self._event_devices(data):
                    event = XidEvent(device_uuid=uuid, xid=int(data.eventData))
                    self._health.record_xid(event)
                    events.append(event)
        return events

    def _wait_failed(self, exc: BaseException) -> None:
        """The event wait itself failed: find out which GPU is gone by asking each one."""
        if self._wait_failure != error_code(exc):
            log.warning("NVML event wait failed: probing GPUs", error=describe(exc))
            self._wait_failure = error_code(exc)
        with self._lock:
            for entry in self._entries.values():
                try:
                    self._query(pynvml.nvmlDeviceGetMemoryInfo, entry.handle)
                except GpuLostError as lost:
                    self._health.lost(entry.uuid, lost.reason)

    def _event_devices(self, data: Any) -> list[str]:
        """The UUIDs an event concerns: its GPU, or the MIG devices of the instance it names."""
        uuid = self._addresses.get(address(data.device))
        if uuid is None:
            try:
                uuid = text(pynvml.nvmlDeviceGetUUID(data.device))
            except pynvml.NVMLError as exc:
                log.warning("event for an unknown GPU", error=describe(exc))
                return []
        gi, ci = int(data.gpuInstanceId), int(data.computeInstanceId)
        entry = self._entries.get(uuid)
        if entry is None or not entry.mig_enabled or gi == NO_ID:
            return [uuid]
        matches = [
            mig.slice.uuid
            for mig in entry.migs
            if mig.slice.gpu_instance_id == gi and ci in (NO_ID, mig.slice.compute_instance_id)
        ]
        return matches or [uuid]

    # ---- inventory ----

    def _build_inventory(self) -> Inventory:
        devices = self._require_devices()
        entries = sorted(self._entries.values(), key=lambda e: e.index)
        reach = peers(
            {e.uuid: self._links.get(e.uuid, NO_LINKS) for e in entries},
            {e.uuid: e.pci_bus_id for e in entries if e.pci_bus_id},
        )
        index_of = {e.uuid: e.index for e in entries}
        gpus = []
        for e in entries:
            reason = self._health.reason(e.uuid)
            migs = tuple(
                replace(m.slice, healthy=self._health.reason(m.slice.uuid) is None) for m in e.migs
            )
            gpus.append(
                Gpu(
                    index=e.index,
                    uuid=e.uuid,
                    name=e.name,
                    memory_mib=e.memory_mib,
                    device=e.device,
                    pci_bus_id=e.pci_bus_id,
                    mig_enabled=e.mig_enabled,
                    mig_total_slices=e.mig_total,
                    mig=migs,
                    nvlink_peers=frozenset(
                        index_of[p] for p in reach.get(e.uuid, ()) if p in index_of
                    ),
                    healthy=reason is None,
                    health_reason=reason,
                )
            )
        return Inventory(
            gpus=tuple(gpus),
            driver_version=self._driver,
            control=devices.control(),
            caps_major=devices.majors.caps,
        )
