"""One extended resource's device plugin: a gRPC server on its own unix socket, and registration.

kubelet's protocol (k8s.io/kubelet deviceplugin v1beta1): the plugin serves
`DevicePlugin` on a socket in the device-plugin directory, and only then calls
`Registration.Register` on kubelet's socket there with the socket's file name;
kubelet dials back, asks for the options and keeps one ListAndWatch stream
open for as long as it wants the devices. An ended stream makes kubelet drop
them, so a stream ends only when the plugin stops or kubelet goes away.

Threads, not asyncio: grpc's standard server answers a unary call over a
unix socket in well under a millisecond (see benchmarks/device_plugin.py), and
the agent's scan loop is synchronous. Each open ListAndWatch stream holds one
worker thread, parked on the `DeviceTable` condition.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import structlog

from controller.agent.deviceplugin.allocate import CDI_KIND, container_response
from controller.agent.deviceplugin.devices import Advertised, DeviceTable, UnknownDeviceError
from controller.agent.deviceplugin.preferred import preferred
from controller.agent.deviceplugin.proto import deviceplugin_v1beta1_pb2 as pb
from controller.agent.deviceplugin.proto import deviceplugin_v1beta1_pb2_grpc as pb_grpc
from controller.api import names

log = structlog.get_logger("ds01.agent.deviceplugin")

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
"""kubelet's Registration socket, in the device-plugin directory."""
OPTIONS = pb.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)
STREAM_POLL_S = 5.0
"""Longest a parked ListAndWatch thread waits before re-checking that its client is alive."""


def socket_name(resource: str) -> str:
    """Our socket's file name for ``resource``: `ds01-gpu.sock`, `ds01-mig-1g.10gb.sock`.

    The `ds01-` prefix keeps it apart from other vendors' plugins in the shared directory.
    """
    if resource.startswith(names.MIG_RESOURCE_PREFIX):
        return f"ds01-mig-{resource[len(names.MIG_RESOURCE_PREFIX) :]}.sock"
    return f"ds01-{resource.rsplit('/', 1)[-1]}.sock"


def _devices(advertised: Advertised) -> pb.ListAndWatchResponse:
    # No topology: the inventory has no NUMA node yet, and an absent topology
    # tells kubelet's topology manager "no preference".
    return pb.ListAndWatchResponse(
        devices=[pb.Device(ID=uuid, health=health) for uuid, health in advertised.devices]
    )


Steer = Callable[[str, list[str]], list[list[str]]]
"""(resource, the kubelet's free device IDs) -> the IDs in tiers, best first
(`policy.podsteering`: the admitted pod's owner's reservations, then free devices)."""


def _one_tier(resource: str, available: list[str]) -> list[list[str]]:
    return [available]


class DevicePluginServicer(pb_grpc.DevicePluginServicer):
    """The five DevicePlugin calls over one `DeviceTable`."""

    def __init__(
        self,
        table: DeviceTable,
        device_root: str,
        cdi_kind: str,
        host_device_root: str = "/dev",
        steer: Steer = _one_tier,
    ) -> None:
        self.table = table
        self.device_root = device_root
        self.host_device_root = host_device_root
        self.steer = steer
        self.cdi_kind = cdi_kind
        self.stopped = threading.Event()

    def GetDevicePluginOptions(  # noqa: N802 (gRPC's method name)
        self, request: pb.Empty, context: Any
    ) -> pb.DevicePluginOptions:
        return OPTIONS

    def ListAndWatch(  # noqa: N802 (gRPC's method name)
        self, request: pb.Empty, context: Any
    ) -> Iterator[pb.ListAndWatchResponse]:
        context.add_callback(self.table.wake)
        current = self.table.advertised()
        yield _devices(current)
        while context.is_active() and not self.stopped.is_set():
            latest = self.table.wait_newer(current.version, STREAM_POLL_S)
            if latest.version != current.version and not self.stopped.is_set():
                current = latest
                yield _devices(current)

    def GetPreferredAllocation(  # noqa: N802 (gRPC's method name)
        self, request: pb.PreferredAllocationRequest, context: Any
    ) -> pb.PreferredAllocationResponse:
        slots = self.table.slots()
        responses = []
        for r in request.container_requests:
            available = list(r.available_deviceIDs)
            try:
                tiers = self.steer(self.table.resource, available)
            except Exception:  # a hint only: never fail an allocation over it
                log.exception("steering failed; topology alone decides")
                tiers = [available]
            picks = list(r.must_include_deviceIDs)
            for tier in [*tiers, available]:
                if len(picks) >= r.allocation_size:
                    break
                picks = preferred(slots, tier, picks, r.allocation_size)
            responses.append(pb.ContainerPreferredAllocationResponse(deviceIDs=picks))
        return pb.PreferredAllocationResponse(container_responses=responses)

    def Allocate(  # noqa: N802 (gRPC's method name)
        self, request: pb.AllocateRequest, context: Any
    ) -> pb.AllocateResponse:
        responses = []
        for container in request.container_requests:
            try:
                slots, control = self.table.lookup(container.devices_ids)
            except UnknownDeviceError as e:
                log.warning("allocate refused", resource=self.table.resource, unknown=e.device_ids)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
                raise  # not reached: abort raises
            unhealthy = [s.uuid for s in slots if not s.healthy]
            if unhealthy:
                # kubelet chose from the list it had; health reaches it through
                # ListAndWatch. A device that just flapped may well work, and
                # refusing would fail the pod outright, so this is only logged.
                log.warning("allocating unhealthy devices", devices=unhealthy)
            responses.append(
                container_response(
                    slots, control, self.device_root, self.cdi_kind, self.host_device_root
                )
            )
        return pb.AllocateResponse(container_responses=responses)

    def PreStartContainer(  # noqa: N802 (gRPC's method name)
        self, request: pb.PreStartContainerRequest, context: Any
    ) -> pb.PreStartContainerResponse:
        return pb.PreStartContainerResponse()


def unix_channel(path: Path) -> grpc.Channel:
    """A client channel to the unix socket ``path`` that connects afresh.

    gRPC shares connections ("subchannels") process-wide by target, so a new
    channel would inherit a failed connection's reconnect backoff (up to two
    minutes) and report the old failure: a kubelet that just restarted would
    look down. A channel-local pool makes each new channel dial at once.
    """
    return grpc.insecure_channel(f"unix://{path}", options=[("grpc.use_local_subchannel_pool", 1)])


def file_identity(path: Path) -> tuple[int, int, int] | None:
    """(device, inode, ctime ns) of ``path``, or None when it is missing.

    The ctime guards against inode reuse: a socket deleted and re-created at
    once can get the same inode number back.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


class ResourcePlugin:
    """Serves one resource on `<plugin_dir>/<socket_name>`; registers it with kubelet.

    Not thread-safe by itself: `DevicePluginManager` calls start/stop/register
    from one thread at a time. The `DeviceTable` it serves is thread-safe.
    """

    def __init__(
        self,
        table: DeviceTable,
        plugin_dir: Path,
        device_root: str = "/dev",
        cdi_kind: str = CDI_KIND,
        *,
        max_workers: int = 8,
        host_device_root: str = "/dev",
        steer: Steer = _one_tier,
    ) -> None:
        self.table = table
        self.resource = table.resource
        self.plugin_dir = plugin_dir
        self.socket = plugin_dir / socket_name(table.resource)
        self.device_root = device_root
        self.host_device_root = host_device_root
        self.steer = steer
        self.cdi_kind = cdi_kind
        self.max_workers = max_workers
        self._server: Any = None
        self._servicer: DevicePluginServicer | None = None
        self.socket_identity: tuple[int, int, int] | None = None
        """Identity of the socket we bound; differs from the file's when kubelet removed it."""

    @property
    def serving(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Bind the socket and serve; a stale file of ours (from a crash) is replaced."""
        if self._server is not None:
            return
        self.socket.unlink(missing_ok=True)
        servicer = DevicePluginServicer(
            self.table, self.device_root, self.cdi_kind, self.host_device_root, self.steer
        )
        server = grpc.server(
            ThreadPoolExecutor(
                max_workers=self.max_workers, thread_name_prefix=f"dp-{self.socket.stem}"
            )
        )
        pb_grpc.add_DevicePluginServicer_to_server(servicer, server)
        server.add_insecure_port(f"unix://{self.socket}")
        server.start()
        self._server, self._servicer = server, servicer
        self.socket_identity = file_identity(self.socket)
        log.info("serving", resource=self.resource, socket=str(self.socket))

    def stop(self, grace_s: float | None = 1.0) -> None:
        """End the streams, stop serving, and remove our socket if it is still ours.

        The server is fully stopped before anything else touches the path, and
        a file that is not the socket we bound is left alone.
        """
        server, servicer = self._server, self._servicer
        self._server = self._servicer = None
        if servicer is not None:
            servicer.stopped.set()
            self.table.wake()
        if server is not None:
            server.stop(grace_s).wait()
        if file_identity(self.socket) == self.socket_identity:
            self.socket.unlink(missing_ok=True)
        self.socket_identity = None

    def socket_intact(self) -> bool:
        """True while the socket file is still the one we bound (kubelet wipes it on restart)."""
        return self._server is not None and file_identity(self.socket) == self.socket_identity

    def register(self, kubelet_socket: Path, timeout_s: float = 5.0) -> None:
        """Call kubelet's `Registration.Register` for this resource; grpc.RpcError on failure."""
        request = pb.RegisterRequest(
            version=API_VERSION,
            endpoint=self.socket.name,
            resource_name=self.resource,
            options=OPTIONS,
        )
        with unix_channel(kubelet_socket) as channel:
            pb_grpc.RegistrationStub(channel).Register(request, timeout=timeout_s)
        log.info("registered", resource=self.resource, endpoint=self.socket.name)
