"""What kubelet must give a container for its allocated slots: device nodes, CDI names, envs.

The device specs are the boundary. kubelet turns them into the container's
device cgroup rules and device nodes, so the container can open exactly the
allocated GPUs (and, for a MIG slice, its capability devices) plus the control
devices every CUDA process needs, and nothing else.

The CDI names (`nvidia.com/gpu=<uuid>`, in the NVIDIA container toolkit's CDI
spec) are how the runtime brings the driver's user-space libraries; they
repeat the same devices, which does not widen access.

`NVIDIA_VISIBLE_DEVICES` is set only as a convenience for tools that read it.
It is not a boundary: any pod can set that variable itself, and with the
NVIDIA runtime's environment mode that alone would expose GPUs (NVIDIA's
device plugin issues 61, 1596, 1605), which is why access here never depends
on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from controller.agent.deviceplugin.proto import deviceplugin_v1beta1_pb2 as pb
from controller.agent.inventory import DeviceNode, Slot

CDI_KIND = "nvidia.com/gpu"
"""The NVIDIA container toolkit's CDI kind; its spec names devices by UUID too."""
VISIBLE_DEVICES_ENV = "NVIDIA_VISIBLE_DEVICES"
PERMISSIONS = "rw"
"""Read and write; never `m` (mknod), so a container cannot create other device nodes."""


def host_path(node: DeviceNode, device_root: str = "/dev", host_root: str = "/dev") -> str:
    """The node's path as kubelet (on the host) sees it.

    The agent may read the host's /dev through another mount (``device_root``,
    e.g. `/host/dev` in a container); kubelet and the container runtime need the
    host's own path, so that prefix is mapped back to ``host_root``: `/dev` on a
    real node, the device tree's directory on a simulated one.
    """
    root = device_root.rstrip("/")
    if root and root != host_root.rstrip("/") and node.path.startswith(root + "/"):
        return host_root.rstrip("/") + node.path[len(root) :]
    return node.path


def container_path(node: DeviceNode, device_root: str = "/dev") -> str:
    """Where the container sees the node: under `/dev`, by its name in ``device_root``."""
    root = device_root.rstrip("/")
    if root and node.path.startswith(root + "/"):
        return "/dev" + node.path[len(root) :]
    return node.path


def device_nodes(slots: Sequence[Slot], control: Iterable[DeviceNode]) -> list[DeviceNode]:
    """The allocated slots' device nodes then the control devices, each once, in order.

    Two MIG slices of one GPU share the GPU's node; a slice adds its capability devices.
    """
    seen: set[str] = set()
    out: list[DeviceNode] = []
    for node in [*(n for s in slots for n in s.devices), *control]:
        if node.path not in seen:
            seen.add(node.path)
            out.append(node)
    return out


def container_response(
    slots: Sequence[Slot],
    control: Iterable[DeviceNode],
    device_root: str = "/dev",
    cdi_kind: str = CDI_KIND,
    host_root: str = "/dev",
) -> pb.ContainerAllocateResponse:
    """kubelet's answer for one container that was allocated ``slots``."""
    uuids = [s.uuid for s in slots]
    response = pb.ContainerAllocateResponse(
        devices=[
            pb.DeviceSpec(
                container_path=container_path(n, device_root),
                host_path=host_path(n, device_root, host_root),
                permissions=PERMISSIONS,
            )
            for n in device_nodes(slots, control)
        ],
        cdi_devices=[pb.CDIDevice(name=f"{cdi_kind}={u}") for u in uuids],
    )
    response.envs[VISIBLE_DEVICES_ENV] = ",".join(uuids)
    return response
