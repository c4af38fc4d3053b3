"""The Grafana dashboard: who holds and uses GPUs, what waits, what was refused, node health.

Panels are declared as data (`ROWS`) and laid out on Grafana's 24-column grid
by `dashboard()`; the JSON is deterministic, so the committed file can be
compared with a fresh render. Queries use the `datasource` and `node`
template variables and Grafana's `$__rate_interval`.

Where the series come from: `ds01_*` without `agent` is the operator (one
replica, cluster-wide facts from the GPUNode reports and the plan);
`ds01_agent_*` is each node's agent (per-GPU figures, joined to the node name
through `ds01_agent_info` on the scrape's `instance`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

UID = "ds01-controller"
TITLE = "ds01-controller: GPU access"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
NODE = 'node=~"$node"'
RATE = "$__rate_interval"
AGENT_NODE = "on (instance) group_left (node) ds01_agent_info"
"""Joins a per-GPU agent series to its node name."""


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False
    """Table panels read the current value only."""


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"
    unit: str = "short"
    width: int = 12
    height: int = 8
    thresholds: tuple[tuple[float, str], ...] = field(default=())
    """(value, colour) steps above the green base, for stat panels."""


def q(expr: str, legend: str = "", instant: bool = False) -> Query:
    return Query(" ".join(expr.split()), legend, instant)


OVERVIEW = [
    Panel(
        "GPU-equivalents granted",
        "Sum over all users of their Active GPUGrants.",
        (q("sum(ds01_gpu_equivalents_granted)"),),
        kind="stat",
        width=4,
        height=4,
    ),
    Panel(
        "GPU-equivalents in use",
        "What the agents report users' workloads using, on every node.",
        (q("sum(ds01_gpu_equivalents_in_use)"),),
        kind="stat",
        width=4,
        height=4,
    ),
    Panel(
        "Requests waiting",
        "GPUGrants in state Pending: waiting for an approver.",
        (q('sum(ds01_grants{state="Pending"})'),),
        kind="stat",
        width=4,
        height=4,
        thresholds=((1, "yellow"), (10, "red")),
    ),
    Panel(
        "Oldest waiting request",
        "How long the oldest Pending GPUGrant has waited.",
        (q("max(time() - ds01_grant_pending_created_timestamp_seconds)"),),
        kind="stat",
        unit="s",
        width=4,
        height=4,
        thresholds=((14400, "yellow"), (86400, "red")),
    ),
    Panel(
        "Nodes not enforcing",
        "GPU nodes whose agent reports a mode other than Enforce.",
        (q('count(ds01_node_enforcement{mode="Enforce"} == 0) or vector(0)'),),
        kind="stat",
        width=4,
        height=4,
        thresholds=((1, "red"),),
    ),
    Panel(
        "Agents silent > 2 min",
        "GPU nodes whose agent has not written its GPUNode status for two minutes.",
        (
            q(
                "count(time() - max by (node) (ds01_node_heartbeat_timestamp_seconds) > 120) "
                "or vector(0)"
            ),
        ),
        kind="stat",
        width=4,
        height=4,
        thresholds=((1, "red"),),
    ),
]

PEOPLE = [
    Panel(
        "In use per user",
        "GPU-equivalents each user's workloads use (agent reports, every node).",
        (q("sum by (subject) (ds01_gpu_equivalents_in_use)", "{{subject}}"),),
    ),
    Panel(
        "Granted per user",
        "GPU-equivalents of each user's Active GPUGrants.",
        (q("sum by (subject) (ds01_gpu_equivalents_granted)", "{{subject}}"),),
    ),
    Panel(
        "In use and granted per group",
        "Members' use and Active grants summed per group (a user in two groups counts in both).",
        (
            q("sum by (group) (ds01_group_gpu_equivalents_in_use)", "{{group}} in use"),
            q("sum by (group) (ds01_group_gpu_equivalents_granted)", "{{group}} granted"),
        ),
    ),
    Panel(
        "Allowance and use per user",
        "Allowance (limit plus active grants), use, and the share of the allowance in use.",
        (
            q("ds01_account_gpu_allowance", "allowance", instant=True),
            q("sum by (subject) (ds01_gpu_equivalents_in_use)", "in use", instant=True),
            q(
                "sum by (subject) (ds01_gpu_equivalents_in_use) / ds01_account_gpu_allowance",
                "share",
                instant=True,
            ),
        ),
        kind="table",
    ),
]

REQUESTS = [
    Panel(
        "Grants by state",
        "GPUGrants in each state (Pending, Approved without devices, Scheduled, Active, ...).",
        (q("sum by (state) (ds01_grants)", "{{state}}"),),
    ),
    Panel(
        "Waiting requests and their age",
        "Every Pending GPUGrant, its user and how long it has waited.",
        (q("time() - ds01_grant_pending_created_timestamp_seconds", instant=True),),
        kind="table",
        unit="s",
    ),
    Panel(
        "Refusals by reason",
        "Requests refused per hour: Denied (an approver), RateLimited "
        "(grantRequestsPerDay), NotAllowed (the policy), Invalid/Error (set aside).",
        (q("sum by (reason) (increase(ds01_denials_total[1h]))", "{{reason}}"),),
    ),
    Panel(
        "Revocations by reason",
        "Approved grants ended early per hour: Revoked (spec.revocation) or Deleted.",
        (q("sum by (reason) (increase(ds01_revocations_total[1h]))", "{{reason}}"),),
    ),
]

BUDGETS = [
    Panel(
        "Budget used",
        "Share of each user's GPU-hour budget used in its window (users with a budget).",
        (q("ds01_account_budget_used_gpu_hours / ds01_account_budget_gpu_hours", "{{subject}}"),),
        unit="percentunit",
    ),
    Panel(
        "Budget burn",
        "GPU-equivalent-hours each user burns per hour (the budget's rate of use).",
        (q("deriv(ds01_account_budget_used_gpu_hours[1h]) * 3600", "{{subject}}"),),
    ),
    Panel(
        "Budgets exhausted and quota over-use",
        "Accounts whose budget is used up (new GPU pods refused) or whose pods exceed "
        "their allowance (the quota race; see the operator's QuotaOverUse Event).",
        (
            q("ds01_account_budget_exhausted == 1", "{{subject}} budget exhausted"),
            q("ds01_account_over_use == 1", "{{subject}} over its allowance"),
        ),
        kind="table",
    ),
]

NODES = [
    Panel(
        "GPU utilisation",
        "Per GPU, from each node's agent (NVML reports none for GPUs in MIG mode).",
        (
            q(
                f"ds01_agent_gpu_utilization_percent * {AGENT_NODE}",
                "{{node}} GPU {{gpu}}",
            ),
        ),
        unit="percent",
    ),
    Panel(
        "GPU memory in use",
        "Per GPU, from each node's agent.",
        (q(f"ds01_agent_gpu_memory_used_mib * {AGENT_NODE}", "{{node}} GPU {{gpu}}"),),
        unit="mbytes",
    ),
    Panel(
        "Agent heartbeat age",
        "Seconds since each node's agent last wrote its GPUNode status (it writes at least "
        "every 30 s); the operator stops judging reports older than --report-max-age.",
        (
            q(
                f"time() - max by (node) (ds01_node_heartbeat_timestamp_seconds{{{NODE}}})",
                "{{node}}",
            ),
        ),
        unit="s",
    ),
    Panel(
        "Healthy devices",
        "Allocatable devices (GPUs and MIG slices) healthy per node, and GPUs reported unhealthy.",
        (
            q(f"ds01_node_healthy_devices{{{NODE}}}", "{{node}} healthy devices"),
            q(f"ds01_node_unhealthy_gpus{{{NODE}}}", "{{node}} unhealthy GPUs"),
        ),
    ),
    Panel(
        "Enforcement mode",
        "The mode each agent reports in force and the one the operator asks for.",
        (
            q(f"ds01_node_enforcement{{{NODE}}} == 1", "in force", instant=True),
            q(f"ds01_node_enforcement_desired{{{NODE}}} == 1", "desired", instant=True),
            q(f"ds01_node_spec_generations_behind{{{NODE}}}", "spec behind", instant=True),
        ),
        kind="table",
    ),
    Panel(
        "Violations and unfinished revocations",
        "GPU use that breaks policy by kind (Unattributed: held by nobody's workload), and "
        "revoked use past its grace the agent still reports.",
        (
            q(f"sum by (node, kind) (ds01_node_violations{{{NODE}}})", "{{node}} {{kind}}"),
            q(f"ds01_node_unfinished_revocations{{{NODE}}}", "{{node}} unfinished revocations"),
        ),
    ),
    Panel(
        "Agent scan time (p99)",
        "Wall time of one agent scan: NVML, /proc, attribution, status.",
        (
            q(
                f"histogram_quantile(0.99, sum by (le, instance) "
                f"(rate(ds01_agent_scan_duration_seconds_bucket[{RATE}])))",
                "{{instance}}",
            ),
        ),
        unit="s",
    ),
    Panel(
        "Agent status writes",
        "Seconds since each agent's own last GPUNode status write (from the agent's side).",
        (
            q(
                f"time() - ds01_agent_status_written_timestamp_seconds * {AGENT_NODE}",
                "{{node}}",
            ),
        ),
        unit="s",
    ),
]

OPERATOR = [
    Panel(
        "Reconcile latency",
        "Time to plan and write one pass over every object (p50, p99).",
        (
            q(
                f"histogram_quantile(0.5, sum by (le) "
                f"(rate(ds01_operator_reconcile_duration_seconds_bucket[{RATE}])))",
                "p50",
            ),
            q(
                f"histogram_quantile(0.99, sum by (le) "
                f"(rate(ds01_operator_reconcile_duration_seconds_bucket[{RATE}])))",
                "p99",
            ),
        ),
        unit="s",
        width=8,
    ),
    Panel(
        "Passes and errors",
        "Planning passes per second, and passes that failed (retried in 2 s).",
        (
            q(f"sum(rate(ds01_operator_reconciles_total[{RATE}]))", "passes"),
            q(f"sum(rate(ds01_operator_reconcile_errors_total[{RATE}]))", "errors"),
        ),
        width=8,
    ),
    Panel(
        "API writes by result",
        "Writes to the apiserver per second by what and result (ok, or the HTTP status).",
        (
            q(
                f"sum by (what, result) (rate(ds01_operator_api_writes_total[{RATE}]))",
                "{{what}} {{result}}",
            ),
        ),
        width=8,
    ),
    Panel(
        "Objects set aside",
        "Objects the operator could not decide (Ready=False Invalid/Error), by kind.",
        (q("sum by (kind) (ds01_operator_objects_failed)", "{{kind}}"),),
        width=12,
    ),
    Panel(
        "Ended grants deleted",
        "Grants deleted by the retention policy per hour.",
        (q("increase(ds01_operator_grants_deleted_total[1h])", "deleted"),),
        width=12,
    ),
]

ROWS: list[tuple[str, list[Panel]]] = [
    ("Overview", OVERVIEW),
    ("Users and groups", PEOPLE),
    ("Requests, refusals and revocations", REQUESTS),
    ("Budgets and quota", BUDGETS),
    ("Nodes and agents", NODES),
    ("Operator", OPERATOR),
]

VARIABLES: list[dict[str, Any]] = [
    {
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
    },
    {
        "name": "node",
        "label": "GPU node",
        "type": "query",
        "datasource": DATASOURCE,
        "definition": "label_values(ds01_node_gpus, node)",
        "query": {"query": "label_values(ds01_node_gpus, node)", "refId": "node"},
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "refresh": 2,
        "sort": 1,
        "current": {},
        "hide": 0,
    },
]


def _panel(panel: Panel, ident: int, x: int, y: int) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    steps += [{"color": colour, "value": value} for value, colour in panel.thresholds]
    targets = []
    for ref, query in zip("ABCDEFGH", panel.queries, strict=False):
        target: dict[str, Any] = {
            "refId": ref,
            "datasource": DATASOURCE,
            "expr": query.expr,
            "legendFormat": query.legend,
            "instant": query.instant,
            "range": not query.instant,
        }
        if panel.kind == "table":
            target["format"] = "table"
        targets.append(target)
    return {
        "id": ident,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "targets": targets,
        "fieldConfig": {
            "defaults": {"unit": panel.unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": {},
    }


def dashboard() -> dict[str, Any]:
    """The dashboard model, ready for Grafana's import or a provisioning ConfigMap."""
    panels: list[dict[str, Any]] = []
    ident, y = 1, 0
    for title, row in ROWS:
        panels.append(
            {
                "id": ident,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        ident, y = ident + 1, y + 1
        x, line = 0, 0
        for panel in row:
            if x + panel.width > 24:
                x, y = 0, y + line
                line = 0
            panels.append(_panel(panel, ident, x, y))
            ident, x, line = ident + 1, x + panel.width, max(line, panel.height)
        y += line
    return {
        "uid": UID,
        "title": TITLE,
        "description": "GPU grants, use, refusals, budgets, node health and the operator "
        "(generated by `ds01 monitoring render`; edit controller/monitoring, not this file).",
        "tags": ["ds01", "gpu"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "1m",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-24h", "to": "now"},
        "templating": {"list": VARIABLES},
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }


def expressions() -> list[tuple[str, str]]:
    """(where, expression) of every query and variable, for checks."""
    found = [
        (f"dashboard panel {p.title!r}", query.expr)
        for _, row in ROWS
        for p in row
        for query in p.queries
    ]
    found += [
        (f"dashboard variable {v['name']!r}", v["definition"])
        for v in VARIABLES
        if "definition" in v
    ]
    return found
