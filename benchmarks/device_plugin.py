"""Benchmark: device plugin Allocate and GetPreferredAllocation latency, measured by the client.

Starts the real `DevicePluginManager` (grpc's standard threaded server) on a
temporary device-plugin directory with a simulated kubelet, then times calls
from a generated stub over the plugin's unix socket, one at a time, after a
warm-up:

- an 8-GPU node (two NVLink quads): Allocate of 1 GPU and of 4 GPUs, and
  GetPreferredAllocation of 1 and of 4 out of 8;
- a node with one A100 in MIG mode (seven 1g.10gb slices): Allocate and
  GetPreferredAllocation of one slice.

It also times a health flip: `set_health` on the agent's side until a
ListAndWatch client holds the new list.

Prints p50/p99/max per call (DESIGN target: Allocate p99 under 2 ms). The
plugin's own log lines are silenced so that they do not dominate the output.
Not a test: it asserts nothing; run `python -m benchmarks.device_plugin`.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import structlog

from controller.agent.deviceplugin.manager import DevicePluginManager
from controller.agent.deviceplugin.proto import deviceplugin_v1beta1_pb2 as pb
from controller.agent.deviceplugin.proto import deviceplugin_v1beta1_pb2_grpc as pb_grpc
from controller.agent.deviceplugin.server import socket_name, unix_channel
from controller.agent.deviceplugin.simkubelet import SimulatedKubelet
from controller.agent.inventory import DeviceNode, Gpu, Inventory, MigSlice
from controller.api.names import GPU_RESOURCE

Stub = pb_grpc.DevicePluginStub
CONTROL = (
    DeviceNode("/dev/nvidiactl", 195, 255),
    DeviceNode("/dev/nvidia-uvm", 510, 0),
    DeviceNode("/dev/nvidia-uvm-tools", 510, 1),
)


def _gpu(index: int, **kw: Any) -> Gpu:
    quad = {j for j in range(8) if j // 4 == index // 4 and j != index}
    return Gpu(
        index=index,
        uuid=f"GPU-{index:08x}-1111-2222-3333-444444444444",
        name="NVIDIA H100 80GB HBM3",
        memory_mib=81559,
        device=DeviceNode(f"/dev/nvidia{index}", 195, index),
        pci_bus_id=f"0000:{0x18 + 0x10 * index:02x}:00.0",
        nvlink_peers=frozenset(quad),
        **kw,
    )


def eight_gpus() -> Inventory:
    return Inventory(gpus=tuple(_gpu(i) for i in range(8)), control=CONTROL)


def mig_node() -> Inventory:
    slices = tuple(
        MigSlice(
            uuid=f"MIG-{n:08x}-1111-2222-3333-444444444444",
            profile="1g.10gb",
            slices=1,
            placement_start=n,
            gpu_instance_id=7 + n,
            compute_instance_id=0,
            capabilities=(
                DeviceNode(f"/dev/nvidia-caps/nvidia-cap{10 + 2 * n}", 237, 10 + 2 * n),
                DeviceNode(f"/dev/nvidia-caps/nvidia-cap{11 + 2 * n}", 237, 11 + 2 * n),
            ),
        )
        for n in range(7)
    )
    return Inventory(
        gpus=(_gpu(0, mig_enabled=True, mig_total_slices=7, mig=slices),), control=CONTROL
    )


def measure(call: Callable[[], object], warmup: int, iterations: int) -> list[float]:
    """Latencies of ``call`` in milliseconds, after ``warmup`` unmeasured calls."""
    for _ in range(warmup):
        call()
    out = []
    for _ in range(iterations):
        start = time.perf_counter_ns()
        call()
        out.append((time.perf_counter_ns() - start) / 1e6)
    return out


def report(name: str, samples: list[float]) -> None:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * len(ordered)) - 1)]
    print(f"{name:<44} p50 {p50:6.3f} ms   p99 {p99:6.3f} ms   max {ordered[-1]:7.3f} ms")


def allocate(ids: list[str]) -> pb.AllocateRequest:
    return pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=ids)])


def prefer(available: list[str], size: int) -> pb.PreferredAllocationRequest:
    return pb.PreferredAllocationRequest(
        container_requests=[
            pb.ContainerPreferredAllocationRequest(
                available_deviceIDs=available, allocation_size=size
            )
        ]
    )


@dataclass
class Node:
    """What a timed call may use: the client stub and the agent's side of the plugin."""

    stub: Stub
    plugins: DevicePluginManager


class HealthFlip:
    """Flip one device's health, then wait for the stream to deliver the new list."""

    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        self.healthy = True
        self.stream: Iterator[pb.ListAndWatchResponse] | None = None

    def __call__(self, node: Node) -> None:
        if self.stream is None:
            self.stream = node.stub.ListAndWatch(pb.Empty())
            next(self.stream)
        self.healthy = not self.healthy
        node.plugins.set_health(self.uuid, self.healthy)
        next(self.stream)


def run_node(
    inventory: Inventory,
    resource: str,
    calls: dict[str, Callable[[Node], object]],
    args: argparse.Namespace,
) -> None:
    """Serve ``inventory`` to a simulated kubelet and time each of ``calls`` on ``resource``."""
    directory = Path(tempfile.mkdtemp(prefix="dp-bench-", dir="/tmp"))
    kubelet = SimulatedKubelet(directory)
    kubelet.start()
    plugins = DevicePluginManager(inventory, directory)
    plugins.start()
    channel = unix_channel(directory / socket_name(resource))
    node = Node(pb_grpc.DevicePluginStub(channel), plugins)
    try:
        for name, call in calls.items():
            report(name, measure(partial(call, node), args.warmup, args.iterations))
    finally:
        channel.close()
        plugins.stop()
        kubelet.stop()
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    print(
        f"device plugin latency, client over a unix socket: {args.iterations} calls each "
        f"after {args.warmup} warm-up; {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, grpcio {grpc.__version__}"
    )
    gpus = [g.uuid for g in eight_gpus().gpus]
    run_node(
        eight_gpus(),
        GPU_RESOURCE,
        {
            "Allocate, 1 whole GPU": lambda n: n.stub.Allocate(allocate(gpus[5:6]), timeout=5),
            "Allocate, 4 whole GPUs (of 8)": lambda n: n.stub.Allocate(
                allocate(gpus[4:]), timeout=5
            ),
            "GetPreferredAllocation, 1 of 8 GPUs": lambda n: n.stub.GetPreferredAllocation(
                prefer(gpus, 1), timeout=5
            ),
            "GetPreferredAllocation, 4 of 8 GPUs": lambda n: n.stub.GetPreferredAllocation(
                prefer(gpus, 4), timeout=5
            ),
            "GetPreferredAllocation, 4 of 7 GPUs": lambda n: n.stub.GetPreferredAllocation(
                prefer(gpus[1:], 4), timeout=5
            ),
            "health flip -> ListAndWatch delivers": HealthFlip(gpus[2]),
        },
        args,
    )
    slices = [m.uuid for m in mig_node().gpus[0].mig]
    run_node(
        mig_node(),
        "gpu.ds01.io/mig-1g.10gb",
        {
            "Allocate, 1 MIG slice (1g.10gb)": lambda n: n.stub.Allocate(
                allocate(slices[3:4]), timeout=5
            ),
            "GetPreferredAllocation, 1 of 7 MIG slices": lambda n: n.stub.GetPreferredAllocation(
                prefer(slices, 1), timeout=5
            ),
        },
        args,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
