"""The control plane's benchmarks still run: each at a tiny size, checked for every line it prints.

Each starts its own local apiserver, etcd and operator (or agent), as the
benchmark does for a person. See `tests.benchrun`.
"""

from __future__ import annotations

import json

from tests.benchrun import missing_fields, run_benchmark


def test_revocation_benchmark_runs_and_prints_both_latencies_and_pass_cpu() -> None:
    output = run_benchmark("revocation", "--trials", "2")
    quantiles = r"p50 +{n} ms  p99 +{n} ms  max +{n} ms"
    assert not missing_fields(
        output,
        {
            "EPERM": r"^revocation -> EPERM on a new open, 2 trials: " + quantiles,
            "holder gone": r"^revocation -> holder gone: +" + quantiles,
            "pass CPU": r"^agent CPU per enforcement pass: +" + quantiles,
        },
    )


def test_operator_grants_benchmark_runs_and_prints_burst_steady_and_rss() -> None:
    output = run_benchmark("operator_grants", "--users", "2", "--grants", "6", "--steady", "2")
    latencies = r"n={n} p50={n} ms p99={n} ms max={n} ms mean={n} ms"
    assert not missing_fields(
        output,
        {
            "burst": r"^burst: 6 grants for 2 users created and Active in {n}s \({n} grants/s\)$",
            "burst latency": r"^burst time-to-Active: " + latencies,
            "catch-up": r"^accounts settled {n}s after the last Active \(catch-up\)$",
            "steady latency": r"^steady time-to-Active with 6 grants present: " + latencies,
            "slowest": r"^  slowest steady grant: #{n} of 2$",
            "RSS": r"^operator RSS: {n} MiB now, {n} MiB peak$",
        },
    )


def test_operator_failover_benchmark_runs_and_finds_nothing_done_twice() -> None:
    # 20 is its least: the leader is killed once half the grants exist and 10 are Active.
    output = run_benchmark(
        "operator_failover",
        *("--grants", "20", "--users", "4", "--lease", "5s", "--renew", "4s", "--retry", "500ms"),
    )
    assert not missing_fields(
        output,
        {
            "how": r"^SIGKILL; lease 5s, renew deadline 4s, retry 500ms$",
            **{
                check: rf"^{check}: {{n}}"
                for check in (
                    "transitions recorded twice",
                    "Events posted twice",
                    "devices held by two grants",
                    "overlapping reservations",
                    "transitions not recorded",
                )
            },
        },
    )
    summary = json.loads(next(line for line in output.splitlines() if line.startswith("{")))
    assert summary["grants"] == 20
    for field in ("states", "killed", "leaseTransitions", "takeoverSeconds", "convergedSeconds"):
        assert field in summary, field
