"""Which container holds which of our devices, from kubelet's PodResources API.

Allocate cannot see the pod it serves, so the mapping from device to
(namespace, pod, container) comes from kubelet afterwards: `List` on the
pod-resources socket returns every pod's assigned device IDs. Only our
resources (`gpu.ds01.io/...`) are kept; other vendors' devices are not ours
to attribute.

The client never raises into the caller's scan loop. A missing socket or a
kubelet that is down or restarting comes back as a result with `error` set,
and `last_good` still holds the previous answer: the agent keeps enforcing
on its last view rather than revoking for lack of data (fail open, DESIGN 5).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from controller.agent.deviceplugin.proto import podresources_v1_pb2 as pr
from controller.agent.deviceplugin.proto import podresources_v1_pb2_grpc as pr_grpc
from controller.agent.deviceplugin.server import unix_channel
from controller.api import names

DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")


@dataclass(frozen=True)
class ContainerRef:
    """A container of a pod, as kubelet names it."""

    namespace: str
    pod: str
    container: str


@dataclass(frozen=True)
class ContainerDevices:
    """One container's devices of one of our resources."""

    ref: ContainerRef
    resource: str
    device_ids: tuple[str, ...]


@dataclass(frozen=True)
class PodResourcesResult:
    """One `List` call's answer: our devices per container, or why there is none."""

    containers: tuple[ContainerDevices, ...]
    error: str | None = None
    """None on success; otherwise what went wrong (and `containers` is empty)."""
    taken_at: float = 0.0
    """time.monotonic() of the call."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def by_device(self) -> dict[str, ContainerRef]:
        """Device ID -> the container holding it."""
        return {d: c.ref for c in self.containers for d in c.device_ids}


def ours(
    response: pr.ListPodResourcesResponse, prefix: str = names.PREFIX
) -> list[ContainerDevices]:
    """Our resources' entries of a `List` response, in kubelet's order."""
    out = []
    for pod in response.pod_resources:
        for container in pod.containers:
            ref = ContainerRef(pod.namespace, pod.name, container.name)
            for devices in container.devices:
                if devices.resource_name.startswith(prefix) and devices.device_ids:
                    out.append(
                        ContainerDevices(ref, devices.resource_name, tuple(devices.device_ids))
                    )
    return out


class PodResourcesClient:
    """A client of kubelet's pod-resources socket, one channel kept between calls."""

    def __init__(
        self,
        socket: str | Path = DEFAULT_SOCKET,
        timeout_s: float = 2.0,
        prefix: str = names.PREFIX,
    ) -> None:
        self.socket = Path(socket)
        self.timeout_s = timeout_s
        self.prefix = prefix
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self.last_good: PodResourcesResult | None = None
        """The newest successful answer; the caller's view while kubelet is unreachable."""

    def list(self) -> PodResourcesResult:
        """Ask kubelet once. Never raises for transport errors: see `PodResourcesResult.error`."""
        now = time.monotonic()
        if not os.path.exists(self.socket):
            return PodResourcesResult((), f"pod-resources socket {self.socket} is missing", now)
        try:
            response = self._stub().List(pr.ListPodResourcesRequest(), timeout=self.timeout_s)
        except grpc.RpcError as e:
            # A fresh channel next time (see unix_channel): a failed one waits out
            # gRPC's reconnect backoff; a restarted kubelet should be seen at once.
            self.close()
            return PodResourcesResult(
                (), f"PodResources List on {self.socket}: {e.code().name}: {e.details()}", now
            )
        result = PodResourcesResult(tuple(ours(response, self.prefix)), None, now)
        self.last_good = result
        return result

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None

    def _stub(self) -> pr_grpc.PodResourcesListerStub:
        with self._lock:
            if self._channel is None:
                self._channel = unix_channel(self.socket)
            return pr_grpc.PodResourcesListerStub(self._channel)
