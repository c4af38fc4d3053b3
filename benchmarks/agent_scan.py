"""Benchmark: one full agent NVML scan on an 8-GPU node with 200 GPU processes.

Runs the agent's real NVML layer (`controller.agent.nvml.Nvml`) through the
pinned pynvml binding against the fake NVML library (controller/devcluster/fakegpu):
8 x A100-SXM4-40GB, GPUs 0 and 1 in MIG mode (8 MIG devices), NVSwitch, and
200 compute processes spread over the 6 whole GPUs and 8 MIG devices. A scan
is an XID poll (timeout 0), a refresh of GPUs and MIG devices, and a sample
of utilisation, memory and processes.

Prints p50/p99/max of CPU time (time.process_time, the whole process: the
fake library's C code included) and wall time per scan, a per-part
breakdown, and the process RSS. Not a test: it asserts nothing. Needs root
(the fake device tree is made with mknod), like the agent tests.

    .venv/bin/python -m benchmarks.agent_scan [--repetitions N] [--processes N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from controller.devcluster.fakegpu import ProcSpec, Topology, a100_node
from tests.agent.fakehost import FakeHost, fake_library, point_fake_at

# The DESIGN.md target this is compared with (section 8).
TARGET_CPU_MS = 20.0
TARGET_RSS_MB = 90.0


def with_processes(count: int, pids: list[int] | None = None) -> Topology:
    """The default 8-GPU node with `count` processes, round-robin over whole GPUs and MIG slices.

    With ``pids``, the GPU processes are those (real) processes, so /proc can be read for them.
    """
    topology = a100_node()
    targets: list[tuple[int, int | None, int | None]] = []
    for gpu in topology.gpus:
        if gpu.mig_enabled:
            targets += [(gpu.index, mig.gi, mig.ci) for mig in gpu.mig]
        else:
            targets.append((gpu.index, None, None))
    topology.processes = [
        ProcSpec(pid=pids[n] if pids else 100_000 + n, gpu=gpu, gi=gi, ci=ci, used_mib=256 + n)
        for n, (gpu, gi, ci) in ((n, targets[n % len(targets)]) for n in range(count))
    ]
    return topology


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def measure(call: Callable[[], object], repetitions: int) -> tuple[list[float], list[float]]:
    """CPU and wall milliseconds of each call."""
    cpu, wall = [], []
    for _ in range(repetitions):
        c0, w0 = time.process_time(), time.perf_counter()
        call()
        cpu.append((time.process_time() - c0) * 1000)
        wall.append((time.perf_counter() - w0) * 1000)
    return cpu, wall


def quantiles(values: list[float]) -> str:
    ordered = sorted(values)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"p50 {p50:7.3f}  p99 {p99:7.3f}  max {ordered[-1]:7.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ds01-agent-scan-") as tmp:
        root = Path(tmp)
        host = FakeHost(root, fake_library(), with_processes(args.processes))
        point_fake_at(host.path)
        nvml = host.start()
        try:
            first = nvml.scan()
            print(
                f"node: {len(first.inventory.gpus)} GPUs, {len(first.inventory.slots())} slots,"
                f" {len(first.sample.processes)} GPU processes seen per scan"
            )
            for _ in range(50):  # warm caches and allocators before measuring
                nvml.scan()
            cpu, wall = measure(nvml.scan, args.repetitions)
            print(f"full scan, {args.repetitions} repetitions (ms):")
            print(f"  cpu   {quantiles(cpu)}   (target < {TARGET_CPU_MS:.0f} ms)")
            print(f"  wall  {quantiles(wall)}")
            parts: dict[str, Callable[[], object]] = {
                "xid poll": nvml.poll_xids,
                "inventory": nvml.inventory,  # includes its own XID poll
                "sample": nvml.sample,
            }
            for name, call in parts.items():
                part_cpu, _ = measure(call, args.repetitions)
                print(f"  {name:9s} cpu {quantiles(part_cpu)}")
            current, peak = rss_mib()
            print(f"NVML-only process RSS: {current:.1f} MiB (peak {peak:.1f} MiB)")
        finally:
            host.close()
    whole_agent(args.processes, args.repetitions // 10)


def whole_agent(count: int, repetitions: int) -> None:
    """The agent's whole scan (NVML, /proc, attribution, status) with the full agent imported."""
    from controller.agent.agent import Agent
    from controller.agent.main import AgentOptions, build  # grpc, kubernetes, pydantic, ...

    sleepers = [subprocess.Popen(["sleep", "600"]) for _ in range(count)]
    try:
        with tempfile.TemporaryDirectory(prefix="ds01-agent-scan-") as tmp:
            host = FakeHost(
                Path(tmp), fake_library(), with_processes(count, [p.pid for p in sleepers])
            )
            point_fake_at(host.path)
            host.write()
            tree = host.make_tree()
            agent: Agent
            agent, closers = build(
                AgentOptions(
                    node="bench",
                    nvml_library=host.library,
                    driver_proc_root=tree.proc_root,
                    dev_root=tree.dev_root,
                ),
                None,
            )
            try:
                for _ in range(5):
                    report = agent.scan()
                cpu, wall = measure(agent.scan, repetitions)
                print(
                    f"whole agent scan ({len(report.workloads or [])} workloads attributed),"
                    f" {repetitions} repetitions (ms):"
                )
                print(f"  cpu   {quantiles(cpu)}   (target < {TARGET_CPU_MS:.0f} ms)")
                print(f"  wall  {quantiles(wall)}")
                current, peak = rss_mib()
                print(
                    f"agent process RSS: {current:.1f} MiB (peak {peak:.1f} MiB;"
                    f" target < {TARGET_RSS_MB:.0f} MB)"
                )
            finally:
                for close in reversed(closers):
                    close()
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()


if __name__ == "__main__":
    main()
