"""Prometheus alerting rules: what needs a person, and which guide section says what to do.

One list (`ALERTS`), rendered twice: as a plain rules file for any Prometheus
(`rule_files:`) and as a PrometheusRule for the Prometheus Operator. Each
alert's `runbook` names the heading of docs/troubleshooting.md that explains
it. Thresholds follow the components' own clocks: the operator plans at least
once a minute; an agent writes its GPUNode status at least every 30 s; a
revocation's holders are ended within the agent's kill grace (10 s) of its
`effectiveAt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.api import names

GROUP = "ds01-controller"
RUNBOOKS = "docs/troubleshooting.md"


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    wait: str
    """How long the condition must hold (`for:`)."""
    severity: str
    summary: str
    description: str
    runbook: str
    """Anchor in docs/troubleshooting.md."""


ALERTS = [
    Alert(
        "DS01OperatorDown",
        "absent(ds01_operator_reconciles_total)",
        "5m",
        "critical",
        "The ds01 operator is not running or not scraped",
        "No operator has exposed metrics for 5 minutes: grants are not approved, activated or "
        "expired and quotas are not recomputed (admission and the agents keep enforcing what "
        "was last written).",
        "ds01operatordown",
    ),
    Alert(
        "DS01OperatorStalled",
        "sum(increase(ds01_operator_reconciles_total[10m])) == 0",
        "5m",
        "critical",
        "The ds01 operator runs but plans nothing",
        "The operator has not completed a planning pass in 10 minutes (it plans at least "
        "once a minute). Its log says why.",
        "ds01operatorstalled",
    ),
    Alert(
        "DS01ObjectsSetAside",
        "sum by (kind) (ds01_operator_objects_failed) > 0",
        "15m",
        "warning",
        "{{ $value }} {{ $labels.kind }} object(s) cannot be decided",
        "The operator set aside objects it cannot judge (Ready=False, reason Invalid or "
        "Error). They keep what they had; find them with `kubectl get ds01 -A` and read their "
        "Ready condition.",
        "ds01objectssetaside",
    ),
    Alert(
        "DS01AgentHeartbeatStale",
        "time() - max by (node) (ds01_node_heartbeat_timestamp_seconds) > 120",
        "3m",
        "critical",
        "The agent on {{ $labels.node }} stopped reporting",
        "The node's agent has not written its GPUNode status for over 2 minutes. The node "
        "keeps enforcing its last policy, but new grants, revocations and usage are not "
        "applied or counted there.",
        "ds01agentheartbeatstale",
    ),
    Alert(
        "DS01NodeNotEnforcing",
        'ds01_node_enforcement{mode="Enforce"} == 0',
        "15m",
        "warning",
        "GPU node {{ $labels.node }} is not in Enforce mode",
        "The node's agent reports Audit or Off (or no mode): GPU access there is reported, "
        "not enforced. Expected during an Audit-first rollout; otherwise check the node's "
        "gpu.ds01.io/enforcement label and the operator's --default-enforcement.",
        "ds01nodenotenforcing",
    ),
    Alert(
        "DS01NodeSpecNotApplied",
        "ds01_node_spec_generations_behind > 0",
        "10m",
        "warning",
        "The agent on {{ $labels.node }} has not applied its latest policy",
        "The GPUNode spec changed 10 minutes ago or more and the agent still reports an "
        "older applied generation.",
        "ds01nodespecnotapplied",
    ),
    Alert(
        "DS01GPUUnhealthy",
        "ds01_node_unhealthy_gpus > 0",
        "5m",
        "warning",
        "{{ $value }} GPU(s) unhealthy on {{ $labels.node }}",
        "The agent reports GPUs unhealthy (an XID error, or NVML lost them); no new grant "
        "gets them.",
        "ds01gpuunhealthy",
    ),
    Alert(
        "DS01QuotaOverUse",
        "ds01_account_over_use == 1",
        "10m",
        "warning",
        "{{ $labels.subject }} uses more GPUs than their allowance",
        "Pods admitted in the quota race together exceed the account's allowance. Nothing is "
        "deleted; the QuotaOverUse Event on the account's ds01-policy names the pods to stop.",
        "ds01quotaoveruse",
    ),
    Alert(
        "DS01BudgetExhausted",
        "ds01_account_budget_exhausted == 1",
        "0m",
        "info",
        "{{ $labels.subject }} used up their GPU-hour budget",
        "New GPU pods of this user are refused until the budget refills (`kubectl ds01 "
        "status --user` says when); running work keeps running.",
        "ds01budgetexhausted",
    ),
    Alert(
        "DS01GPUHeldByNobody",
        'sum by (node) (ds01_node_violations{kind="Unattributed"}) > 0',
        "10m",
        "warning",
        "A GPU process on {{ $labels.node }} belongs to nobody's workload",
        "The agent sees a process holding a GPU that it cannot attribute to any pod, "
        "container or login of a known account (a process outside every allowed cgroup). "
        "The GPUNode's status.violations names the device and pid.",
        "ds01gpuheldbynobody",
    ),
    Alert(
        "DS01RevocationNotEnforced",
        "ds01_node_unfinished_revocations > 0",
        "2m",
        "critical",
        "Revoked GPU use still runs on {{ $labels.node }}",
        "A revocation's grace period is over but its user's workload is still reported on "
        "the revoked devices: the agent could not end the holder.",
        "ds01revocationnotenforced",
    ),
    Alert(
        "DS01RequestWaitingLong",
        "time() - ds01_grant_pending_created_timestamp_seconds > 86400",
        "0m",
        "info",
        "{{ $labels.subject }}'s request {{ $labels.namespace }}/{{ $labels.grant }} "
        "has waited a day",
        "A GPUGrant has been Pending for over 24 hours: approve or deny it "
        "(`kubectl ds01 pending`).",
        "ds01requestwaitinglong",
    ),
]


def _rule(alert: Alert) -> dict[str, Any]:
    return {
        "alert": alert.name,
        "expr": alert.expr,
        "for": alert.wait,
        "labels": {"severity": alert.severity},
        "annotations": {
            "summary": alert.summary,
            "description": alert.description,
            "runbook": f"{RUNBOOKS}#{alert.runbook}",
        },
    }


def rule_groups() -> dict[str, Any]:
    """The plain rules file (Prometheus `rule_files:`)."""
    return {"groups": [{"name": GROUP, "rules": [_rule(a) for a in ALERTS]}]}


def prometheus_rule() -> dict[str, Any]:
    """The same rules as a PrometheusRule for the Prometheus Operator."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "ds01-controller",
            "namespace": "ds01-system",
            "labels": {names.PART_OF_LABEL: names.PART_OF},
        },
        "spec": rule_groups(),
    }


def expressions() -> list[tuple[str, str]]:
    return [(f"alert {a.name}", a.expr) for a in ALERTS]
