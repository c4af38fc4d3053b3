"""A simulated fleet of GPU nodes for benchmarks: N GPUNodes kept current as agents keep them.

No kubelet, no NVML: each simulated node has a fixed inventory (8 GPUs, a mix of
DS01's A100 server with two GPUs in MIG mode, all-whole A100s and H100s with
four GPUs in MIG mode) and a few workloads owned by the benchmark's users. Every
node is scanned at the agent's cadence (`--interval` of `ds01 agent`, 5 s) and
its status built and written by the agent's own code: `controller.agent.report`
builds the `GPUNodeStatus` and `controller.agent.publisher.Publisher` decides
whether to write it (on change, at most every 2 s, else a 30 s heartbeat) and
sends the same merge patch. Busy GPUs report changing utilisation, so a node with
work writes at every scan, as a real one does; workloads start and end now and then.

It lives in `benchmarks/`, not `controller.devcluster`, because it drives the
agent's code, which the layer contract keeps out of the devcluster package.
It writes as the cluster admin (one client, a small connection pool), not as
each node's agent identity: 500 agent certificates would mean 500 TLS clients
on 2 cores. What the operator sees is the same objects; the apiserver skips the
per-node admission checks an agent's writes go through.
"""

from __future__ import annotations

import heapq
import multiprocessing
import random
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client, config

from controller.agent.inventory import DeviceNode, Gpu, Inventory, MigSlice, Sample
from controller.agent.publisher import Publisher
from controller.agent.report import Health, status
from controller.api.node import GPUNodeStatus, WorkloadReport
from controller.runtime.audit import AuditLog

SCAN_INTERVAL = 5.0
"""Seconds between an agent's scans (`ds01 agent --interval`)."""

# (share of nodes, product name, memory MiB, MIG layout per GPU index)
_A100_MIG = ("2g.20gb", "2g.20gb", "2g.20gb", "1g.10gb")
_H100_MIG = ("3g.40gb", "3g.40gb")
NODE_KINDS: tuple[tuple[float, str, int, dict[int, tuple[str, ...]]], ...] = (
    (0.6, "NVIDIA A100-SXM4-80GB", 81920, {0: _A100_MIG, 1: _A100_MIG}),
    (0.25, "NVIDIA A100-SXM4-80GB", 81920, {}),
    (0.15, "NVIDIA H100 80GB HBM3", 81559, {i: _H100_MIG for i in range(4)}),
)


def _uuid(prefix: str, *parts: object) -> str:
    return f"{prefix}-{uuid.uuid5(uuid.NAMESPACE_URL, '/'.join(map(str, parts)))}"


def node_inventory(node: str, kind: int, gpus: int = 8) -> Inventory:
    """What NVML would report on one simulated node of ``NODE_KINDS[kind]``."""
    _, name, memory, layouts = NODE_KINDS[kind]
    out = []
    for index in range(gpus):
        slices, start = [], 0
        for gi, profile in enumerate(layouts.get(index, ()), start=1):
            width = int(profile[0])
            slices.append(
                MigSlice(
                    uuid=_uuid("MIG", node, index, gi),
                    profile=profile,
                    slices=width,
                    placement_start=start,
                    gpu_instance_id=gi,
                    compute_instance_id=0,
                    capabilities=(
                        DeviceNode(
                            f"/dev/nvidia-caps/nvidia-cap{index * 16 + gi}", 511, index * 16 + gi
                        ),
                    ),
                )
            )
            start += width
        out.append(
            Gpu(
                index=index,
                uuid=_uuid("GPU", node, index),
                name=name,
                memory_mib=memory,
                device=DeviceNode(f"/dev/nvidia{index}", 195, index),
                pci_bus_id=f"00000000:{0x07 + index * 0x10:02X}:00.0",
                mig_enabled=bool(slices),
                mig_total_slices=7 if slices else None,
                mig=tuple(slices),
                nvlink_peers=frozenset(i for i in range(gpus) if i != index),
            )
        )
    return Inventory(gpus=tuple(out), driver_version="550.90.07")


def _slots(inventory: Inventory) -> list[str]:
    return [s.uuid for s in inventory.slots()]


@dataclass
class SimNode:
    """One node's agent state: its inventory, its workloads, its publisher."""

    name: str
    inventory: Inventory
    publisher: Publisher
    random: random.Random
    workloads: dict[str, WorkloadReport] = field(default_factory=dict)
    """Device UUID -> the workload using it."""
    last: GPUNodeStatus | None = None
    written_at: datetime | None = None
    scanning: bool = False
    """A scan is queued or running: a slow fleet runs late, never two scans at once."""


class GPUFleet:
    """Creates ``nodes`` GPUNodes and keeps their status current until `stop`.

    ``owners`` are the users workloads are attributed to (the benchmark's users).
    ``busy`` is the share of devices with a workload; each scan, a node changes one
    workload (one ends, another starts) with probability ``churn``.
    """

    def __init__(
        self,
        api: client.ApiClient,
        nodes: int,
        owners: Sequence[str],
        *,
        interval: float = SCAN_INTERVAL,
        busy: float = 0.3,
        churn: float = 0.02,
        workers: int = 4,
        seed: int = 1,
        prefix: str = "sim",
    ) -> None:
        self.api = api
        self.owners = list(owners)
        self.interval = interval
        self.busy = busy
        self.churn = churn
        chooser = random.Random(seed)
        self.audit = AuditLog(None, "ds01-agent-sim")
        shares = [k[0] for k in NODE_KINDS]
        self.nodes = []
        for i in range(nodes):
            name = f"{prefix}-{i:04d}"
            kind = chooser.choices(range(len(NODE_KINDS)), shares)[0]
            inventory = node_inventory(name, kind)
            publisher = Publisher(api, name, self.audit)
            self.nodes.append(SimNode(name, inventory, publisher, random.Random(f"{seed}/{name}")))
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="sim-agent")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.scans = 0
        self.writes = 0
        self.errors = 0
        self._lock = threading.Lock()

    def create(self) -> None:
        """Create every GPUNode (as the agent does at start) and publish its first status."""
        for node in self.nodes:
            for slot in _slots(node.inventory):
                if node.random.random() < self.busy:
                    node.workloads[slot] = self._workload(node, slot)
        list(self.pool.map(self._first, self.nodes))

    def _first(self, node: SimNode) -> None:
        node.publisher.ensure_node()
        self._scan(node)

    def _workload(self, node: SimNode, device: str) -> WorkloadReport:
        owner = node.random.choice(self.owners)
        n = node.random.randrange(1 << 30)
        return WorkloadReport(
            kind="Container",
            name=f"train-{n:x}",
            container_id=f"{n:064x}",
            owner=owner,
            owner_source="GatewayLabel",
            devices=[device],
            allocated=[device],
        )

    def _scan(self, node: SimNode) -> None:
        """One agent scan: readings, maybe a workload change, the status, published if due."""
        now = datetime.now(UTC)
        rnd = node.random
        if node.workloads and rnd.random() < self.churn:
            del node.workloads[rnd.choice(sorted(node.workloads))]
            free = [s for s in _slots(node.inventory) if s not in node.workloads]
            if free:
                slot = rnd.choice(free)
                node.workloads[slot] = self._workload(node, slot)
        used = set(node.workloads)
        sample = Sample(
            utilization={
                g.uuid: None if g.mig_enabled else (rnd.randint(40, 100) if g.uuid in used else 0)
                for g in node.inventory.gpus
            },
            memory_used_mib={g.uuid: 20000 if g.uuid in used else 0 for g in node.inventory.gpus},
            processes=(),
        )
        report = status(
            inventory=node.inventory,
            sample=sample,
            workloads=list(node.workloads.values()),
            violations=[],
            mode="Audit",
            applied_generation=None,
            previous=node.last,
            health=Health(),
            cgroup_version="v2",
            now=now,
        )
        try:
            wrote = node.publisher.publish(report, now)
        except client.ApiException:
            with self._lock:
                self.errors += 1
            return
        finally:
            node.scanning = False
        node.last = report
        if wrote:
            node.written_at = now
        with self._lock:
            self.scans += 1
            self.writes += wrote

    def start(self) -> None:
        """Scan every node every ``interval``, the nodes' phases spread across it."""
        self._thread = threading.Thread(target=self._run, name="sim-fleet", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        step = self.interval / max(1, len(self.nodes))
        due = [(start + i * step, i) for i in range(len(self.nodes))]
        heapq.heapify(due)
        while not self._stop.is_set():
            at, i = heapq.heappop(due)
            if self._stop.wait(max(0.0, at - time.monotonic())):
                return
            node = self.nodes[i]
            if not node.scanning:
                node.scanning = True
                self.pool.submit(self._scan, node)
            heapq.heappush(due, (max(at + self.interval, time.monotonic()), i))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def heartbeat_age(self) -> timedelta:
        """The oldest heartbeat any node has written (to check the fleet keeps up)."""
        now = datetime.now(UTC)
        written = [n.written_at for n in self.nodes]
        return max((now - w for w in written if w is not None), default=timedelta(0))


def _serve(kubeconfig: str, nodes: int, owners: list[str], interval: float, ipc: Any) -> None:
    """The fleet's own process (see `FleetProcess`); ``ipc`` is (ready, stop, results)."""
    ready, stop, results = ipc
    api = config.new_client_from_config(config_file=kubeconfig)
    api.configuration.connection_pool_maxsize = 8
    fleet = GPUFleet(api, nodes, owners, interval=interval)
    fleet.create()
    ready.set()
    fleet.start()
    started, cpu = time.monotonic(), time.process_time()
    stop.wait()
    fleet.stop()
    results.put(
        {
            "nodes": nodes,
            "scans": fleet.scans,
            "writes": fleet.writes,
            "errors": fleet.errors,
            "seconds": time.monotonic() - started,
            "cpu_seconds": time.process_time() - cpu,
            "oldest_heartbeat_s": fleet.heartbeat_age().total_seconds(),
        }
    )


class FleetProcess:
    """The fleet in a process of its own, so its work does not share the GIL with the
    benchmark's clocks. `start` returns once every GPUNode has its first status."""

    def __init__(
        self, kubeconfig: str, nodes: int, owners: Sequence[str], interval: float = SCAN_INTERVAL
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._ready, self._stop, self._results = ctx.Event(), ctx.Event(), ctx.Queue()
        self._process = ctx.Process(
            target=_serve,
            args=(
                kubeconfig,
                nodes,
                list(owners),
                interval,
                (self._ready, self._stop, self._results),
            ),
            name="gpu-fleet",
            daemon=True,
        )

    def start(self, deadline_s: float = 600) -> None:
        self._process.start()
        end = time.monotonic() + deadline_s
        while not self._ready.wait(1):
            if not self._process.is_alive() or time.monotonic() > end:
                raise RuntimeError("the simulated GPU fleet did not come up")

    def stop(self) -> dict[str, Any]:
        """Stop scanning; what the fleet did (scans, status writes, errors, its CPU)."""
        self._stop.set()
        found: dict[str, Any] = self._results.get(timeout=120)
        self._process.join(30)
        return found
