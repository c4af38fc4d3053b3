"""Benchmark: what the operator costs as grants and nodes grow (docs/performance.md).

For each size GRANTS:NODES (default 1000:50, 3000:200, 10000:500; users =
grants / 10), on a fresh local control plane:

1. a simulated fleet of NODES GPUNodes (`benchmarks.gpufleet`) whose status the
   agent's own code keeps current at the agent's cadence, in its own process;
2. the operator, started once the nodes exist (as its ServiceAccount);
3. burst: GRANTS auto-approved grants created by 8 clients; makespan (first create
   to last Active) and each grant's create-to-Active p50/p99;
4. settle: until every account's published policy counts its grants;
5. steady: `--steady` more grants one at a time, create-to-Active p50/p99.

Per size it prints the operator's RSS (before the grants, now, peak), its
CPU-seconds over the run (from /proc), and the apiserver requests the operator
sent per grant, counted in the apiserver's audit log (a policy that records only
the operator's ServiceAccount). Then a growth verdict per measure (the exponent
of a power law through the sizes: 1 is linear) and a plot. Not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config

from benchmarks.gpufleet import FleetProcess
from benchmarks.operator_grants import (
    ActiveWatcher,
    create_grant,
    percentile,
    rss_kib,
    settle,
    setup_accounts,
)
from controller.api.accountpolicy import POLICY_CONFIGMAP
from controller.cli.dev import install, start_operator
from controller.devcluster.controlplane import LocalCluster
from controller.devcluster.process import wait_until

OPERATOR_USER = "system:serviceaccount:ds01-system:ds01-operator"
AUDIT_POLICY = f"""apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
  - level: Metadata
    users: ["{OPERATOR_USER}"]
  - level: None
"""
DEFAULT_SIZES = "1000:50,3000:200,10000:500"
CLIENTS = 8


@dataclass
class Result:
    """One size's measurements (times in seconds, memory in MiB)."""

    grants: int
    nodes: int
    users: int
    rss_before_mib: float = 0.0
    rss_mib: float = 0.0
    rss_peak_mib: float = 0.0
    kib_per_grant: float = 0.0
    cpu_seconds: float = 0.0
    """The operator's CPU from the first create to the end of the steady phase."""
    requests: int = 0
    requests_per_grant: float = 0.0
    request_verbs: dict[str, int] = field(default_factory=dict)
    burst_makespan_s: float = 0.0
    burst_p50_s: float = 0.0
    burst_p99_s: float = 0.0
    settle_s: float = 0.0
    steady_n: int = 0
    steady_p50_s: float = 0.0
    steady_p99_s: float = 0.0
    fleet: dict[str, Any] = field(default_factory=dict)

    @property
    def rss_added_mib(self) -> float:
        return self.rss_mib - self.rss_before_mib


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` so far (fields 14 and 15 of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class AuditCounter:
    """Counts the operator's requests in the apiserver's audit log, from a mark."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def mark(self) -> None:
        self._offset = self.path.stat().st_size if self.path.exists() else 0

    def since_mark(self) -> Counter[str]:
        verbs: Counter[str] = Counter()
        with self.path.open("rb") as log:
            log.seek(self._offset)
            for line in log:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line being written
                ref = entry.get("objectRef") or {}
                sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
                verbs[f"{entry.get('verb')} {ref.get('resource', '?')}{sub}"] += 1
        return verbs


def measure(grants: int, nodes: int, steady: int, interval: float) -> Result:
    users = [f"bench{u:04d}@lab.example" for u in range(max(1, grants // 10))]
    result = Result(grants, nodes, len(users))
    workdir = Path(tempfile.mkdtemp(prefix="ds01-sweep-"))
    policy = workdir / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    audit_log = workdir / "apiserver-audit.log"
    extra = (f"--audit-policy-file={policy}", f"--audit-log-path={audit_log}")
    with LocalCluster(workdir / "cluster", extra_apiserver_args=extra) as cluster:
        install(cluster, samples=False)
        api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        api_client.configuration.connection_pool_maxsize = CLIENTS
        custom = client.CustomObjectsApi(api_client)
        core = client.CoreV1Api(api_client)
        setup_accounts(custom, core, users)
        fleet = FleetProcess(str(cluster.kubeconfig), nodes, users, interval)
        fleet.start()
        try:
            operator = start_operator(cluster)
            wait_until(
                lambda: _accounts_published(core, len(users)),
                600,
                "the operator to publish every account's policy",
            )
            result.rss_before_mib = rss_kib(operator.pid)[0] / 1024
            _phases(
                custom,
                core,
                users,
                pid=operator.pid,
                counter=AuditCounter(audit_log),
                steady=steady,
                result=result,
            )
        finally:
            result.fleet = fleet.stop()
    return result


def _phases(
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    users: list[str],
    *,
    pid: int,
    counter: AuditCounter,
    steady: int,
    result: Result,
) -> None:
    """Burst, settle and steady on a running operator (pid ``pid``), into ``result``."""
    grants = result.grants
    watcher = ActiveWatcher(custom)
    watcher.start()
    counter.mark()
    cpu_start = cpu_seconds(pid)

    started = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        created = list(pool.map(lambda i: create_grant(custom, users, i), range(grants)))
    watcher.wait_for([k for k, _ in created], 1800)
    finished = max(watcher.active[k] for k, _ in created)
    burst = [watcher.active[k] - t for k, t in created]
    result.burst_makespan_s = finished - started
    result.burst_p50_s = percentile(burst, 50)
    result.burst_p99_s = percentile(burst, 99)
    per_user = Counter(users[i % len(users)] for i in range(grants))
    result.settle_s = settle(core, dict(per_user), finished)

    latencies = []
    for i in range(steady):
        key, t = create_grant(custom, users, grants + i)
        watcher.wait_for([key], 120)
        latencies.append(watcher.active[key] - t)
    result.steady_n = len(latencies)
    if latencies:
        result.steady_p50_s = percentile(latencies, 50)
        result.steady_p99_s = percentile(latencies, 99)
    result.cpu_seconds = cpu_seconds(pid) - cpu_start
    current, peak = rss_kib(pid)
    result.rss_mib, result.rss_peak_mib = current / 1024, peak / 1024
    result.kib_per_grant = (current - result.rss_before_mib * 1024) / (grants + steady)
    verbs = counter.since_mark()
    result.requests = sum(verbs.values())
    result.requests_per_grant = result.requests / (grants + steady)
    result.request_verbs = dict(verbs.most_common())


def _accounts_published(core: client.CoreV1Api, users: int) -> bool:
    """Whether the operator's first passes are done: every account's policy published."""
    listed = core.list_config_map_for_all_namespaces(
        field_selector=f"metadata.name={POLICY_CONFIGMAP}"
    )
    return len(listed.items) >= users


def growth(xs: list[float], ys: list[float]) -> str:
    """The exponent k of y ~ x^k between the smallest and largest size, in words."""
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len(pairs) < 2:
        return "n/a"
    (x0, y0), (x1, y1) = pairs[0], pairs[-1]
    k = math.log(y1 / y0) / math.log(x1 / x0)
    word = (
        "flat"
        if abs(k) < 0.15
        else "sub-linear"
        if k < 0.85
        else "linear"
        if k <= 1.15
        else "super-linear"
    )
    return f"x^{k:.2f} ({word})"


COLUMNS = (
    ("grants", "grants", "{:.0f}"),
    ("nodes", "nodes", "{:.0f}"),
    ("users", "users", "{:.0f}"),
    ("RSS before grants MiB", "rss_before_mib", "{:.0f}"),
    ("RSS MiB", "rss_mib", "{:.0f}"),
    ("RSS peak MiB", "rss_peak_mib", "{:.0f}"),
    ("KiB/grant", "kib_per_grant", "{:.1f}"),
    ("CPU s", "cpu_seconds", "{:.1f}"),
    ("requests/grant", "requests_per_grant", "{:.2f}"),
    ("burst makespan s", "burst_makespan_s", "{:.1f}"),
    ("burst p50 s", "burst_p50_s", "{:.2f}"),
    ("burst p99 s", "burst_p99_s", "{:.2f}"),
    ("settle s", "settle_s", "{:.1f}"),
    ("steady p50 s", "steady_p50_s", "{:.3f}"),
    ("steady p99 s", "steady_p99_s", "{:.3f}"),
)
GROWTH = {
    "rss_added_mib": "memory the grants added (RSS - RSS before)",
    "cpu_seconds": "operator CPU-seconds",
    "requests": "operator requests",
    "burst_makespan_s": "burst makespan",
    "steady_p50_s": "steady p50 (one grant, with all present)",
}
"""Totals, and one latency, as they grow with the grants: x^1 is linear."""


def table(results: list[Result]) -> str:
    """A Markdown table: one row per size, then how each measure grows with the grants."""
    head = "| " + " | ".join(c[0] for c in COLUMNS) + " |"
    rule = "|" + "---|" * len(COLUMNS)
    rows = [
        "| " + " | ".join(fmt.format(getattr(r, attr)) for _, attr, fmt in COLUMNS) + " |"
        for r in results
    ]
    xs = [float(r.grants) for r in results]
    verdicts = [
        f"- {attr}: {growth(xs, [float(getattr(r, attr)) for r in results])} — {what}"
        for attr, what in GROWTH.items()
    ]
    return "\n".join(
        [head, rule, *rows, "", "growth with the number of grants (y ~ x^k):", *verdicts]
    )


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r.grants for r in results]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    panels = (
        ("operator RSS (MiB)", (("now", "rss_mib"), ("peak", "rss_peak_mib"))),
        ("operator CPU-seconds (burst + steady)", (("CPU s", "cpu_seconds"),)),
        ("apiserver requests per grant", (("operator", "requests_per_grant"),)),
        (
            "apply -> Active (s)",
            (
                ("burst makespan", "burst_makespan_s"),
                ("burst p99", "burst_p99_s"),
                ("steady p99", "steady_p99_s"),
            ),
        ),
    )
    for ax, (title, series) in zip(axes.flat, panels, strict=True):
        for label, attr in series:
            ax.plot(xs, [getattr(r, attr) for r in results], marker="o", label=label)
        ax.set_title(title)
        ax.set_xlabel("grants (nodes: " + ", ".join(str(r.nodes) for r in results) + ")")
        ax.set_ylim(bottom=0)  # from zero, so growth reads as growth
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        grants, _, nodes = part.partition(":")
        try:
            sizes.append((int(grants), int(nodes)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--sizes: {part!r} is not GRANTS:NODES (for example 1000:50)"
            ) from None
        if sizes[-1][0] < 1 or sizes[-1][1] < 1:
            raise argparse.ArgumentTypeError(f"--sizes: {part!r} needs at least 1 of each")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=parse_sizes, default=parse_sizes(DEFAULT_SIZES), help=DEFAULT_SIZES
    )
    parser.add_argument("--steady", type=int, default=50, help="steady grants per size")
    parser.add_argument(
        "--scan-interval", type=float, default=5.0, help="seconds between a node's scans"
    )
    parser.add_argument("--plot", type=Path, default=Path("docs/performance-sweep.png"))
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    parser.add_argument(
        "--report",
        type=Path,
        nargs="+",
        default=None,
        help="measure nothing: print the table and draw the plot from these --json files",
    )
    args = parser.parse_args(argv)

    if args.report:
        loaded = [Result(**r) for path in args.report for r in json.loads(path.read_text())]
        print(table(sorted(loaded, key=lambda r: r.grants)))
        plot(sorted(loaded, key=lambda r: r.grants), args.plot)
        print(f"\nplot: {args.plot}")
        return 0
    results = []
    for grants, nodes in args.sizes:
        print(f"== {grants} grants, {nodes} nodes, {max(1, grants // 10)} users", flush=True)
        found = measure(grants, nodes, args.steady, args.scan_interval)
        for name, attr, fmt in COLUMNS[3:]:
            print(f"  {name}: {fmt.format(getattr(found, attr))}")
        top = ", ".join(f"{k} {v}" for k, v in list(found.request_verbs.items())[:6])
        print(f"  operator requests: {found.requests} ({top})")
        print(f"  fleet: {json.dumps(found.fleet)}", flush=True)
        results.append(found)
        if args.json:  # after every size: a long sweep cut short keeps what it measured
            args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    print()
    print(table(results))
    plot(results, args.plot)
    print(f"\nplot: {args.plot}")
    if args.json:
        print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
