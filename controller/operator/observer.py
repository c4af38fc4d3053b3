"""Copies one pass's observations (`controller.policy.observe`) into the Prometheus metrics.

Gauges whose label sets come and go with objects (nodes, accounts, pending
requests, groups) are cleared and set again each pass, so a deleted node or
an approved request leaves no stale series behind. The only memory kept
between passes is which grants were already counted as denied or revoked.
"""

from __future__ import annotations

from collections.abc import Set
from datetime import datetime

import structlog
from prometheus_client import Gauge

from controller.operator import metrics
from controller.policy.observe import ENFORCEMENT_MODES, Observations, observe
from controller.policy.plan import Plan, Snapshot

log = structlog.get_logger("ds01.operator")

_PER_OBJECT: tuple[Gauge, ...] = (
    metrics.PENDING_SINCE,
    metrics.GROUP_GRANTED,
    metrics.GROUP_IN_USE,
    metrics.ACCOUNT_GROUP,
    metrics.ALLOWANCE,
    metrics.BUDGET,
    metrics.BUDGET_USED,
    metrics.BUDGET_EXHAUSTED,
    metrics.OVER_USE,
    metrics.NODE_HEARTBEAT,
    metrics.NODE_ENFORCEMENT,
    metrics.NODE_ENFORCEMENT_DESIRED,
    metrics.NODE_GPUS,
    metrics.NODE_HEALTHY_DEVICES,
    metrics.NODE_UNHEALTHY_GPUS,
    metrics.NODE_AGENT_READY,
    metrics.NODE_SPEC_BEHIND,
    metrics.NODE_VIOLATIONS,
    metrics.NODE_UNFINISHED_REVOCATIONS,
)


class Observer:
    """Called by the reconciler after each pass that was written."""

    def __init__(self) -> None:
        self.counted: dict[str, str] = {}

    def record(self, snapshot: Snapshot, decided: Plan, now: datetime, failed: Set[str]) -> None:
        """Update the metrics; a failure here is logged and never fails the pass."""
        try:
            seen = observe(
                snapshot.grants, snapshot.nodes, decided, now, failed=failed, counted=self.counted
            )
        except Exception:
            log.exception("metrics not updated for this pass")
            return
        present = {f"{g.metadata.namespace}/{g.metadata.name}" for g in snapshot.grants}
        self.counted = {k: v for k, v in (self.counted | seen.counted).items() if k in present}
        publish(seen)

    def forget(self) -> None:
        """Drop every per-object series: for a replica that stops leading, so its last
        figures do not linger beside the new leader's (counters stay: they only grow)."""
        for gauge in _PER_OBJECT:
            gauge.clear()
        self.counted = {}


def publish(seen: Observations) -> None:
    for reason, count in seen.denials.items():
        metrics.DENIALS.labels(reason=reason).inc(count)
    for reason, count in seen.revocations.items():
        metrics.REVOCATIONS.labels(reason=reason).inc(count)
    for gauge in _PER_OBJECT:
        gauge.clear()
    for request in seen.pending:
        metrics.PENDING_SINCE.labels(
            namespace=request.namespace, grant=request.name, subject=request.subject
        ).set(request.since)
    for group, amount in seen.group_granted.items():
        metrics.GROUP_GRANTED.labels(group=group).set(amount)
    for group, amount in seen.group_in_use.items():
        metrics.GROUP_IN_USE.labels(group=group).set(amount)
    _publish_accounts(seen)
    _publish_nodes(seen)


def _publish_accounts(seen: Observations) -> None:
    for account in seen.accounts:
        subject = account.subject
        for group in account.groups:
            metrics.ACCOUNT_GROUP.labels(subject=subject, group=group).set(1)
        if account.allowance is not None:
            metrics.ALLOWANCE.labels(subject=subject).set(account.allowance)
        if account.budget is not None:
            metrics.BUDGET.labels(subject=subject).set(account.budget)
        metrics.BUDGET_USED.labels(subject=subject).set(account.budget_used)
        metrics.BUDGET_EXHAUSTED.labels(subject=subject).set(int(account.budget_exhausted))
        metrics.OVER_USE.labels(subject=subject).set(int(account.over_use))


def _publish_nodes(seen: Observations) -> None:
    for node in seen.nodes:
        name = node.node
        if node.heartbeat is not None:
            metrics.NODE_HEARTBEAT.labels(node=name).set(node.heartbeat)
        for mode in ENFORCEMENT_MODES:
            metrics.NODE_ENFORCEMENT.labels(node=name, mode=mode).set(int(node.in_force == mode))
            metrics.NODE_ENFORCEMENT_DESIRED.labels(node=name, mode=mode).set(
                int(node.desired == mode)
            )
        metrics.NODE_GPUS.labels(node=name).set(node.gpus)
        metrics.NODE_HEALTHY_DEVICES.labels(node=name).set(node.healthy_devices)
        metrics.NODE_UNHEALTHY_GPUS.labels(node=name).set(node.unhealthy_gpus)
        metrics.NODE_AGENT_READY.labels(node=name).set(int(node.agent_ready))
        behind = node.spec_generation - (node.applied_generation or 0)
        metrics.NODE_SPEC_BEHIND.labels(node=name).set(max(0, behind))
        for kind, count in node.violations.items():
            metrics.NODE_VIOLATIONS.labels(node=name, kind=kind).set(count)
        metrics.NODE_UNFINISHED_REVOCATIONS.labels(node=name).set(node.unfinished_revocations)
