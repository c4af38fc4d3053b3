"""Benchmark: what the runtime wrapper `ds01-runc` adds to `docker run`.

Two private dockerds side by side, one with plain runc as its default runtime and
one with `ds01-runc` (as on a DS01 host), and an agent answering the wrapper (fake
NVML, Enforce mode, accounts from a static view). Alternating so drift hits both:

- `docker run --rm --network none IMAGE true`: the wrapper's create path (Python,
  the agent's answer, the bundle rewritten) plus its pass-through commands (sh);
- the same with a fake GPU mapped in (closed at creation: the agent also records it);
- the same with the agent stopped (the wrapper waits for nothing: connection refused,
  then the fail-closed table).

Prints p50/p99 and the added latency; asserts nothing.

    .venv/bin/python -m benchmarks.runtime_wrapper [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from controller.agent.main import AgentOptions, build
from controller.agent.publisher import PolicyView
from controller.api.node import GPUNodeSpec
from controller.devcluster.dockerd import IMAGE, Dockerd
from controller.devcluster.fakegpu import a100_node
from controller.runtime import logs
from tests.agent.enforcehost import KEY, StaticCluster
from tests.agent.fakehost import FakeHost, fake_library, point_fake_at


def quantiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[round(0.99 * (len(ordered) - 1))]


def run(engine: Dockerd, *argv: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        engine.docker_command("run", "--rm", "--network", "none", *argv, IMAGE, "true"),
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    logs.configure("WARNING")
    root = Path(tempfile.mkdtemp(prefix="ds01-brw-", dir="/tmp"))  # short socket paths
    plain = Dockerd(root / "plain", wrapper=False)
    wrapped = Dockerd(root / "wrapped")
    closers = []
    try:
        plain.start()
        wrapped.start()
        host = FakeHost(root, fake_library(), a100_node())
        point_fake_at(host.path)
        host.write()
        tree = host.make_tree()
        key = root / "gateway.key"
        key.write_bytes(KEY)
        options = AgentOptions(
            node="bench-runtime",
            nvml_library=host.library,
            driver_proc_root=tree.proc_root,
            dev_root=tree.dev_root,
            docker_socket=str(wrapped.socket),
            gateway_key=key,
            audit_log=root / "audit.jsonl",
            lifecycle_interval_s=0,
            runtime_dir=wrapped.runtime_dir,
        )
        agent, closers = build(options, None)
        agent.cluster = StaticCluster()
        agent.policy = PolicyView(GPUNodeSpec(enforcement="Enforce"), 1)
        agent.enforce()  # publishes the fail-closed table
        gpu = agent.source.inventory().gpus[2].device.path
        for engine in (plain, wrapped):
            run(engine)  # warm the image and the page cache
        cases = {
            "docker run --rm IMAGE true": (),
            "... with a GPU mapped (closed)": ("--device", f"{gpu}:/dev/gpu0"),
        }
        for what, argv in cases.items():
            times: dict[str, list[float]] = {"plain": [], "wrapped": []}
            for _ in range(args.runs):
                times["plain"].append(run(plain, *argv))
                times["wrapped"].append(run(wrapped, *argv))
            report(what, times["plain"], times["wrapped"])
        for close in reversed(closers):
            close()
        closers = []
        times = {"plain": [], "wrapped": []}
        for _ in range(args.runs):
            times["plain"].append(run(plain))
            times["wrapped"].append(run(wrapped))
        report("... agent stopped (fail closed)", times["plain"], times["wrapped"])
    finally:
        for close in reversed(closers):
            close()
        for engine in (plain, wrapped):
            engine.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def report(what: str, plain: list[float], wrapped: list[float]) -> None:
    p50, p99 = quantiles(plain)
    w50, w99 = quantiles(wrapped)
    added = (w50 - p50) * 1000
    print(
        f"{what:<34} runc p50 {p50 * 1000:6.0f} ms p99 {p99 * 1000:6.0f} ms | "
        f"ds01-runc p50 {w50 * 1000:6.0f} ms p99 {w99 * 1000:6.0f} ms | "
        f"added p50 {added:+5.0f} ms ({added / (p50 * 1000) * 100:+4.0f}%)",
        flush=True,
    )


if __name__ == "__main__":
    main()
