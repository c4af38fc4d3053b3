"""Budgets, workload starts per hour and quota alerts, against the real control plane.

GPU use reaches the operator as the agents report it (GPUNode status, written
here as an agent would). Windows and cooldowns are seconds long through the
operator's flags and GPURateLimits (see OperatorEnv); every wait has a deadline.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from controller.cli.dev import add_simulated_node
from controller.devcluster import simnode
from controller.devcluster.process import wait_until
from tests.controlplane.accounts import (
    condition,
    create_pod,
    pod,
    refused_with,
    wait_document,
    wait_event,
    wait_quota,
)
from tests.controlplane.conftest import OperatorEnv
from tests.controlplane.kube import Kube
from tests.controlplane.test_account_quota import user_limit
from tests.controlplane.test_operator import make_account, report_workloads

GPU, MIG2 = "gpu.ds01.io/gpu", "gpu.ds01.io/mig-2g.20gb"


def exemption(env: OperatorEnv, name: str, user: str, rule: str) -> None:
    env.admin.apply(
        {
            "apiVersion": "gpu.ds01.io/v1alpha1",
            "kind": "GPUExemption",
            "metadata": {"name": name},
            "spec": {
                "subject": {"kind": "User", "name": user},
                "exemptFrom": [rule],
                "category": "Waiver",
                "reason": "test",
            },
        }
    )


def audit(env: OperatorEnv, namespace: str, event_type: str) -> list[dict[str, Any]]:
    return [
        r
        for r in env.audit_events()
        if r["event_type"] == event_type and r["details"].get("namespace") == namespace
    ]


@pytest.fixture(scope="module")
def budget_node(operator_env: OperatorEnv) -> str:
    add_simulated_node(operator_env.cluster, "budget-node")
    return "budget-node"


def test_budget_exhaustion_holds_gpu_quota_at_current_use_until_the_window_moves(
    operator_env: OperatorEnv, budget_node: str
) -> None:
    user = "budget@lab.example"
    namespace, kube = make_account(operator_env, user, "researcher", "budget")
    # 0.002 GPU-hours (7.2 GPU-seconds) per 10 seconds.
    user_limit(operator_env, "budget-small", user, budget={"gpuHours": "0.002", "window": "10s"})
    wait_document(
        kube, namespace, lambda d: d["budget"]["gpuHours"] == "0.002", "the budget published"
    )
    create_pod(kube, namespace, pod("training", {GPU: 1}))
    wait_quota(kube, namespace, {f"requests.{GPU}": "4"})
    device = simnode.inventory(budget_node)[3]["uuid"]
    workload = {
        "kind": "Pod",
        "name": "training",
        "namespace": namespace,
        "owner": user,
        "ownerSource": "Namespace",
        "devices": [device],
    }
    report_workloads(operator_env, budget_node, [workload])

    doc = wait_document(
        kube,
        namespace,
        lambda d: condition(d, "BudgetExhausted").get("status") == "True",
        "the budget to be used up",
    )
    assert doc["budget"]["exhausted"] and doc["budget"]["rate"] == 1.0
    assert doc["budget"]["usedGPUHours"] >= 0.002
    # Running work keeps running; nothing new with a GPU fits.
    wait_quota(kube, namespace, {f"requests.{GPU}": "1", f"requests.{MIG2}": "0"})
    [event] = wait_event(kube, namespace, "BudgetExhausted")
    assert event["type"] == "Warning"
    assert "your GPU budget is used up" in event["message"]
    message = refused_with(kube, namespace, pod("another", {GPU: 1}), "your GPU budget is used up")
    assert "(budget.gpuHours from GPURateLimit/budget-small)" in message
    assert "running work keeps running" in message
    create_pod(kube, namespace, pod("cpu-work"))
    wait_until(
        lambda: bool(audit(operator_env, namespace, "quota.budget_exhausted")),
        30,
        "the quota.budget_exhausted audit record",
    )

    # A Budget exemption lifts the enforcement (the use is still counted).
    exemption(operator_env, "budget-waiver", user, "Budget")
    doc = wait_document(
        kube,
        namespace,
        lambda d: condition(d, "BudgetExhausted").get("reason") == "Exempt",
        "the exemption to lift the budget",
    )
    assert doc["budget"]["exempt"] and doc["exemptions"][0]["name"] == "budget-waiver"
    wait_quota(kube, namespace, {f"requests.{GPU}": "4"})
    operator_env.admin.kubectl("delete", "gpuexemption", "budget-waiver")
    wait_quota(kube, namespace, {f"requests.{GPU}": "1"})

    # The use stops; once it has left the 10 s window the allowance is back.
    report_workloads(operator_env, budget_node, [])
    wait_document(
        kube,
        namespace,
        lambda d: (
            condition(d, "BudgetExhausted").get("status") == "False" and not d["budget"]["exempt"]
        ),
        "the budget to come back as the window moves",
    )
    wait_quota(kube, namespace, {f"requests.{GPU}": "4", f"requests.{MIG2}": "10"})
    assert len(wait_event(kube, namespace, "BudgetRestored", 2)) >= 2
    assert audit(operator_env, namespace, "quota.budget_restored")
    create_pod(kube, namespace, pod("another", {GPU: 1}))
    operator_env.admin.kubectl("delete", "gpuratelimit", "budget-small")


def test_workload_starts_per_hour_hold_the_pod_count_until_the_window_moves(
    operator_env: OperatorEnv,
) -> None:
    user = "starts@lab.example"
    namespace, kube = make_account(operator_env, user, "student", "starts")
    user_limit(
        operator_env, "starts-limit", user, rates={"workloadStartsPerHour": 3, "maxWorkloads": 10}
    )
    wait_quota(kube, namespace, {"pods": "10"})
    for name in ("one", "two", "three"):
        create_pod(kube, namespace, pod(name, memory="1Gi"))
    doc = wait_document(
        kube,
        namespace,
        lambda d: condition(d, "WorkloadStartsLimited").get("status") == "True",
        "the start rate to be reached",
    )
    assert doc["rates"]["limited"] and len(doc["rates"]["starts"]) == 3
    wait_quota(kube, namespace, {"pods": "3"})
    refused_with(
        kube,
        namespace,
        pod("four", memory="1Gi"),
        f"you started 3 workloads in the last {OperatorEnv.STARTS_WINDOW_S}s "
        "(rates.workloadStartsPerHour 3 from GPURateLimit/starts-limit); new pods are refused "
        "until",
    )
    [event] = wait_event(kube, namespace, "WorkloadStartsLimited")
    assert event["involvedObject"]["kind"] == "ConfigMap"
    # A deleted pod's start still counts: the line follows the pods that exist.
    kube.kubectl("delete", "pod", "one", "-n", namespace, "--wait=false")
    wait_quota(kube, namespace, {"pods": "2"})

    wait_event(kube, namespace, "WorkloadStartsRestored")
    wait_quota(kube, namespace, {"pods": "10"})
    create_pod(kube, namespace, pod("four", memory="1Gi"))
    assert audit(operator_env, namespace, "quota.starts_limited")
    assert audit(operator_env, namespace, "quota.starts_restored")

    # An exemption from RateLimits lifts the limit.
    exemption(operator_env, "starts-waiver", user, "RateLimits")
    wait_document(kube, namespace, lambda d: d["rates"]["exempt"], "the exemption in force")
    for name in ("five", "six", "seven", "eight"):
        create_pod(kube, namespace, pod(name, memory="1Gi"))
    doc = wait_document(
        kube,
        namespace,
        lambda d: condition(d, "WorkloadStartsLimited").get("reason") == "Exempt",
        "the start rate reached but not enforced",
    )
    assert (
        "not enforced: a GPUExemption from RateLimits is in force"
        in (condition(doc, "WorkloadStartsLimited")["message"])
    )
    assert quota_pods(kube, namespace) == "10"
    operator_env.admin.kubectl("delete", "gpuexemption", "starts-waiver")
    operator_env.admin.kubectl("delete", "gpuratelimit", "starts-limit")


def quota_pods(kube: Kube, namespace: str) -> str:
    return str(kube.get("resourcequota", "ds01", "-n", namespace)["spec"]["hard"]["pods"])


def test_quota_alerts_at_80_and_100_percent_with_a_cooldown(operator_env: OperatorEnv) -> None:
    user = "alerts@lab.example"
    namespace, kube = make_account(operator_env, user, "student", "alerts")
    user_limit(
        operator_env,
        "alerts-limit",
        user,
        rates={"maxWorkloads": 5, "workloadStartsPerHour": "Unlimited"},
        resources={"perUser": {"memory": "40Gi"}},
    )
    wait_quota(kube, namespace, {"pods": "5", "limits.memory": "40Gi"})
    for index in range(4):
        create_pod(kube, namespace, pod(f"p{index}", memory="8Gi"))

    def alerts(metric: str, level: int) -> list[dict[str, Any]]:
        return [
            r
            for r in audit(operator_env, namespace, f"alert.quota_{level}")
            if r["details"]["metric"] == metric
        ]

    wait_until(lambda: len(alerts("workloads", 80)) >= 2, 30, "the workloads alert to repeat")
    first, second = alerts("workloads", 80)[:2]
    gap = _time(second) - _time(first)
    assert gap >= timedelta(seconds=OperatorEnv.ALERT_COOLDOWN_S)
    assert first["details"]["message"] == (
        "workloads at once at 80%: 4 of 5 pods (limit from GPURateLimit/alerts-limit); "
        "delete finished pods to start new ones"
    )
    assert alerts("memory", 80)
    assert (
        "memory at 80%: 32Gi of 40Gi in memory limits"
        in alerts("memory", 80)[0]["details"]["message"]
    )
    events = wait_event(kube, namespace, "QuotaAlert", 3)
    assert {e["involvedObject"]["name"] for e in events} == {"ds01-policy"}
    # 100% is its own alert, sent at once.
    create_pod(kube, namespace, pod("p4", memory="8Gi"))
    wait_until(
        lambda: bool(alerts("workloads", 100)) and bool(alerts("memory", 100)),
        30,
        "the 100% alerts",
    )
    warnings = [e for e in events_now(kube, namespace) if e["type"] == "Warning"]
    assert any("workloads at once reached: 5 of 5 pods" in e["message"] for e in warnings)
    sent = wait_document(kube, namespace, lambda d: len(d["alerts"]) == 4, "four alerts recorded")
    assert {(a["metric"], a["level"]) for a in sent["alerts"]} == {
        ("workloads", 80),
        ("workloads", 100),
        ("memory", 80),
        ("memory", 100),
    }
    kube.kubectl("delete", "pods", "--all", "-n", namespace, "--wait=false")
    operator_env.admin.kubectl("delete", "gpuratelimit", "alerts-limit")


def events_now(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    return wait_event(kube, namespace, "QuotaAlert")


def _time(record: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
