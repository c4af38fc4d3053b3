"""A simulated kubelet: the gRPC servers kubelet runs for plugins and monitors, for tests.

Real gRPC over real unix sockets, speaking the same API as kubelet, so the
plugin and the PodResources client are exercised exactly as on a node:

- `SimulatedKubelet` serves `Registration` on `<dir>/kubelet.sock`, records
  each registration, and, like kubelet, dials the plugin back and keeps a
  ListAndWatch stream open, recording every device list it receives.
  `restart()` does what a kubelet restart does to the directory: the old
  server goes, every file there is deleted, a new `kubelet.sock` appears.
- `SimulatedPodResources` serves `PodResourcesLister.List` with a list the
  test sets.

It lives in the package (not under tests/) so benchmarks and `ds01 dev` can
use it too; the agent itself never imports it.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from controller.agent.deviceplugin.proto import deviceplugin_v1beta1_pb2 as pb
from controller.agent.deviceplugin.proto import deviceplugin_v1beta1_pb2_grpc as pb_grpc
from controller.agent.deviceplugin.proto import podresources_v1_pb2 as pr
from controller.agent.deviceplugin.proto import podresources_v1_pb2_grpc as pr_grpc
from controller.agent.deviceplugin.server import KUBELET_SOCKET, unix_channel


@dataclass(frozen=True)
class Registration:
    """One `Register` call as kubelet received it."""

    version: str
    endpoint: str
    resource_name: str
    pre_start_required: bool
    get_preferred_allocation_available: bool


class _Registrar(pb_grpc.RegistrationServicer):
    def __init__(self, kubelet: SimulatedKubelet) -> None:
        self.kubelet = kubelet

    def Register(  # noqa: N802 (gRPC's method name)
        self, request: pb.RegisterRequest, context: Any
    ) -> pb.Empty:
        self.kubelet._registered(request)
        return pb.Empty()


class SimulatedKubelet:
    """kubelet's side of the device plugin protocol on `<plugin_dir>/kubelet.sock`."""

    def __init__(self, plugin_dir: Path) -> None:
        self.plugin_dir = plugin_dir
        self.socket = plugin_dir / KUBELET_SOCKET
        self._lock = threading.Lock()
        self.registrations: list[Registration] = []
        self.device_lists: dict[str, list[list[tuple[str, str]]]] = {}
        """resource -> every device list its stream delivered: [(ID, health)], oldest first."""
        self._server: Any = None
        self._channels: list[grpc.Channel] = []

    def start(self) -> None:
        server = grpc.server(ThreadPoolExecutor(max_workers=4, thread_name_prefix="sim-kubelet"))
        pb_grpc.add_RegistrationServicer_to_server(_Registrar(self), server)
        server.add_insecure_port(f"unix://{self.socket}")
        server.start()
        self._server = server

    def stop(self) -> None:
        with self._lock:
            channels, self._channels = self._channels, []
        for channel in channels:
            channel.close()
        if self._server is not None:
            self._server.stop(0).wait()
            self._server = None
        self.socket.unlink(missing_ok=True)

    def restart(self) -> None:
        """What kubelet does on restart: stop, delete every socket in the directory, serve anew."""
        self.stop()
        for path in self.plugin_dir.iterdir():
            if not path.is_dir():
                path.unlink()
        self.start()

    def registered(self, resource: str) -> int:
        """How many times ``resource`` registered."""
        with self._lock:
            return sum(1 for r in self.registrations if r.resource_name == resource)

    def latest(self, resource: str) -> list[tuple[str, str]] | None:
        """The newest device list kubelet holds for ``resource``, None before the first."""
        with self._lock:
            lists = self.device_lists.get(resource)
            return lists[-1] if lists else None

    def _registered(self, request: pb.RegisterRequest) -> None:
        with self._lock:
            self.registrations.append(
                Registration(
                    version=request.version,
                    endpoint=request.endpoint,
                    resource_name=request.resource_name,
                    pre_start_required=request.options.pre_start_required,
                    get_preferred_allocation_available=(
                        request.options.get_preferred_allocation_available
                    ),
                )
            )
            channel = unix_channel(self.plugin_dir / request.endpoint)
            self._channels.append(channel)
        # kubelet answers Register at once and dials the plugin in the background.
        threading.Thread(
            target=self._watch, args=(channel, request.resource_name), daemon=True
        ).start()

    def _watch(self, channel: grpc.Channel, resource: str) -> None:
        stub = pb_grpc.DevicePluginStub(channel)
        try:
            stub.GetDevicePluginOptions(pb.Empty(), timeout=5)
            for response in stub.ListAndWatch(pb.Empty()):
                devices = [(d.ID, d.health) for d in response.devices]
                with self._lock:
                    self.device_lists.setdefault(resource, []).append(devices)
        except (grpc.RpcError, ValueError):
            # The plugin went away, or this kubelet closed the channel (ValueError:
            # "Channel closed!") in stop(): either way kubelet drops the devices.
            return


class _Lister(pr_grpc.PodResourcesListerServicer):
    def __init__(self, owner: SimulatedPodResources) -> None:
        self.owner = owner

    def List(  # noqa: N802 (gRPC's method name)
        self, request: pr.ListPodResourcesRequest, context: Any
    ) -> pr.ListPodResourcesResponse:
        with self.owner.lock:
            return pr.ListPodResourcesResponse(pod_resources=self.owner.pods)


class SimulatedPodResources:
    """kubelet's PodResourcesLister on ``socket``, answering with `pods` (set it any time)."""

    def __init__(self, socket: Path, pods: list[pr.PodResources] | None = None) -> None:
        self.socket = socket
        self.lock = threading.Lock()
        self.pods: list[pr.PodResources] = pods or []
        self._server: Any = None

    def set_pods(self, pods: list[pr.PodResources]) -> None:
        with self.lock:
            self.pods = pods

    def start(self) -> None:
        server = grpc.server(ThreadPoolExecutor(max_workers=2, thread_name_prefix="sim-podres"))
        pr_grpc.add_PodResourcesListerServicer_to_server(_Lister(self), server)
        server.add_insecure_port(f"unix://{self.socket}")
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0).wait()
            self._server = None
        self.socket.unlink(missing_ok=True)


def pod(namespace: str, name: str, containers: dict[str, dict[str, list[str]]]) -> pr.PodResources:
    """A PodResources message: container name -> resource name -> device IDs."""
    return pr.PodResources(
        namespace=namespace,
        name=name,
        containers=[
            pr.ContainerResources(
                name=container,
                devices=[
                    pr.ContainerDevices(resource_name=resource, device_ids=ids)
                    for resource, ids in resources.items()
                ],
            )
            for container, resources in containers.items()
        ],
    )
