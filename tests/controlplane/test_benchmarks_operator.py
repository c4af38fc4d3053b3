"""The operator scaling sweep runs end to end at a tiny size and reports every field.

The class of fault: a benchmark that silently measures nothing (grants never
Active, a fleet that never wrote a status, an audit count of zero because the
apiserver's audit policy missed the operator) or that only works at the size it
was written for. Runs `python -m benchmarks.operator_sweep` as a user would
(its own control plane per size, the simulated GPU fleet, the operator) at two
tiny sizes and checks its output's shape. No number is judged: timings belong to
the benchmark, run at full size (docs/performance.md, "Operator at scale").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.operator_sweep import COLUMNS, GROWTH

SIZES = ((20, 2), (30, 3))
STEADY = 3


def test_sweep_makes_every_grant_active_counts_the_operators_requests_and_plots(
    tmp_path: Path,
) -> None:
    out, plot = tmp_path / "sweep.json", tmp_path / "sweep.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.operator_sweep",
            "--sizes=" + ",".join(f"{g}:{n}" for g, n in SIZES),
            f"--steady={STEADY}",
            "--scan-interval=1",
            f"--plot={plot}",
            f"--json={out}",
        ],
        capture_output=True,
        text=True,
        timeout=1200,  # two control planes; about 2 min on an idle 2-core machine
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for label, _, _ in COLUMNS:
        assert label in result.stdout, f"column {label!r} missing:\n{result.stdout}"
    for measure in GROWTH:
        assert f"- {measure}: x^" in result.stdout, f"no growth for {measure}:\n{result.stdout}"
    assert plot.read_bytes().startswith(b"\x89PNG")
    sizes = json.loads(out.read_text())
    assert [(s["grants"], s["nodes"]) for s in sizes] == list(SIZES)
    for size in sizes:
        assert size["users"] == max(1, size["grants"] // 10)
        assert size["steady_n"] == STEADY
        assert 0 < size["burst_p50_s"] <= size["burst_p99_s"] <= size["burst_makespan_s"]
        assert 0 < size["steady_p50_s"] <= size["steady_p99_s"]
        assert size["rss_before_mib"] > 0 and 0 < size["rss_mib"] <= size["rss_peak_mib"]
        assert size["cpu_seconds"] > 0
        # Every grant was approved and its status written, by the operator itself.
        verbs = size["request_verbs"]
        assert verbs.get("patch gpugrants", 0) >= size["grants"] + STEADY, verbs
        assert verbs.get("patch gpugrants/status", 0) >= size["grants"] + STEADY, verbs
        assert size["requests"] == sum(verbs.values())
        fleet = size["fleet"]
        assert fleet["nodes"] == size["nodes"] and fleet["errors"] == 0
        assert fleet["writes"] >= size["nodes"], fleet  # every node published its status
