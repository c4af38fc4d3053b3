"""The node's benchmarks still run: each at a tiny size, checked for every line it prints.

Needs what the benchmarks need (root, gcc for the fake NVML, dockerd, Linux
users), as the other agent tests do. See `tests.benchrun`.
"""

from __future__ import annotations

from tests.benchrun import missing_fields, run_benchmark


def test_agent_scan_benchmark_runs_and_prints_cpu_wall_parts_and_rss() -> None:
    output = run_benchmark("agent_scan", "--repetitions", "20", "--processes", "10")
    assert not missing_fields(
        output,
        {
            "node": r"^node: 8 GPUs, {n} slots, 10 GPU processes seen per scan$",
            "NVML scan cpu": r"^full scan, 20 repetitions \(ms\):\n  cpu   p50 +{n}  p99 +{n}  max +{n}",
            "NVML scan wall": r"^  wall  p50 +{n}  p99 +{n}  max +{n}",
            "xid poll": r"^  xid poll  cpu p50 +{n}",
            "inventory": r"^  inventory cpu p50 +{n}",
            "sample": r"^  sample    cpu p50 +{n}",
            "NVML RSS": r"^NVML-only process RSS: {n} MiB \(peak {n} MiB\)$",
            "whole scan": r"^whole agent scan \(10 workloads attributed\), 2 repetitions \(ms\):\n"
            r"  cpu   p50 +{n}  p99 +{n}  max +{n}",
            "agent RSS": r"^agent process RSS: {n} MiB \(peak {n} MiB; target < 90 MB\)$",
        },
    )


def test_device_plugin_benchmark_runs_and_prints_every_call() -> None:
    output = run_benchmark("device_plugin", "--iterations", "10", "--warmup", "2")
    calls = [
        "Allocate, 1 whole GPU",
        "Allocate, 4 whole GPUs \\(of 8\\)",
        "GetPreferredAllocation, 1 of 8 GPUs",
        "GetPreferredAllocation, 4 of 8 GPUs",
        "GetPreferredAllocation, 4 of 7 GPUs",
        "health flip -> ListAndWatch delivers",
        "Allocate, 1 MIG slice \\(1g.10gb\\)",
        "GetPreferredAllocation, 1 of 7 MIG slices",
    ]
    assert not missing_fields(
        output, {call: rf"^{call} +p50 +{{n}} ms +p99 +{{n}} ms +max +{{n}} ms$" for call in calls}
    )


def test_runtime_wrapper_benchmark_runs_and_prints_its_three_cases() -> None:
    output = run_benchmark("runtime_wrapper", "--runs", "1")
    side_by_side = (
        r" +runc p50 +{n} ms p99 +{n} ms \| ds01-runc p50 +{n} ms p99 +{n} ms \| added p50 +{n} ms"
    )
    assert not missing_fields(
        output,
        {
            "plain": r"^docker run --rm IMAGE true" + side_by_side,
            "GPU mapped": r"^\.\.\. with a GPU mapped \(closed\)" + side_by_side,
            "agent stopped": r"^\.\.\. agent stopped \(fail closed\)" + side_by_side,
        },
    )


def test_gateway_benchmark_runs_and_prints_run_cycle_and_logs_rows() -> None:
    output = run_benchmark(
        "gateway", "--runs", "1", "--cycles", "2", "--log-trials", "1", "--log-mib", "1"
    )
    side_by_side = (
        r" +engine p50 +{n} ms p99 +{n} ms \| gateway p50 +{n} ms p99 +{n} ms \| "
        r"added p50 +{n} ms \( *{n}%\)$"
    )
    assert not missing_fields(
        output,
        {
            "docker run": r"^docker run --rm \(1 runs\)" + side_by_side,
            "API cycle": r"^create/start/wait/rm \(2\)" + side_by_side,
            "logs -f": r"^logs -f, 1 MiB of lines +engine p50 +{n} MiB/s min +{n} \| "
            r"gateway p50 +{n} MiB/s min +{n} \| gateway/engine +{n}%  \(bytes read: \[1048576\]\)$",
            "logs -f CPU": r"^logs -f, gateway CPU +p50 +{n} ms per MiB relayed",
        },
    )
