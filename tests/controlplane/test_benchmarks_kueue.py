"""The Kueue side-by-side benchmark runs end to end at a tiny size and reports every field.

The class of fault: a comparison that silently measures nothing (an object
never admitted, a controller that never started, a column left empty) or that
only works at the size it was written for. Runs `python -m
benchmarks.kueue_compare` as a user would (its own control plane, Kueue's core
variant built from the Go module proxy on first use, a couple of minutes cold)
and checks its output's shape. No number is judged: timings belong to the
benchmark, run at full size (docs/performance.md, "Kueue side by side").
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks.kueue_compare import ROWS
from controller.devcluster import kueue
from tests.benchrun import missing_fields, run_benchmark

USERS, WORKLOADS = 2, 6


def test_kueue_comparison_admits_every_object_on_both_sides_and_prints_every_row(
    tmp_path: Path,
) -> None:
    out = tmp_path / "result.json"
    output = run_benchmark(
        "kueue_compare",
        f"--users={USERS}",
        f"--workloads={WORKLOADS}",
        "--clients=2",
        "--variant=core",
        f"--json={out}",
        timeout_s=1500,  # a cold Kueue build is minutes on 2 cores
    )
    rows = {label: rf"^{re.escape(label)}\s+{{n}}\s+{{n}}\s+(?:{{n}}|-)$" for label, _, _ in ROWS}
    assert not (missing := missing_fields(output, rows)), f"rows missing: {missing}\n{output}"
    document = json.loads(out.read_text())
    assert (document["users"], document["workloads"]) == (USERS, WORKLOADS)
    assert document["kueue_version"] == kueue.planned().version
    for side, controller in (("ds01", "ds01 operator"), ("kueue", "Kueue minimalkueue")):
        numbers = document[side]
        assert numbers["controller"] == controller
        assert numbers["admitted"] == WORKLOADS
        assert 0 < numbers["p50_ms"] <= numbers["p99_ms"] <= numbers["max_ms"]
        assert numbers["makespan_s"] > 0 and numbers["throughput_per_s"] > 0
        assert 0 <= numbers["cpu_burst_s"] <= numbers["cpu_until_idle_s"]
        assert 0 < numbers["rss_mib"] <= numbers["rss_peak_mib"]
        assert set(numbers["server_cpu_s"]) == {"kube-apiserver", "etcd"}


def test_kueue_build_refuses_an_unknown_command_by_name() -> None:
    with pytest.raises(ValueError, match=r"commands: unknown Kueue command\(s\) \['kubelet'\]"):
        kueue.ensure(("kubelet",))


def test_kueue_is_built_from_its_own_wrapper_module_not_the_kubernetes_one() -> None:
    """Sharing tools/k8s would lift Kueue's Kubernetes libraries to the apiserver's."""
    wrapper = (kueue.wrapper_dir() / "go.mod").read_text()
    kubernetes = (kueue.wrapper_dir().parent / "k8s" / "go.mod").read_text()

    def requires(go_mod: str, module: str) -> bool:
        return re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+v", go_mod, re.M) is not None

    assert requires(wrapper, kueue.MODULE) and kueue.planned().version.startswith("v")
    assert not requires(wrapper, "k8s.io/kubernetes")
    assert not requires(kubernetes, kueue.MODULE)
