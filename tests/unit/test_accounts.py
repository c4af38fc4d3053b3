"""One account's decision: quota lines, budget, rates, over-use, alerts and the published policy.

Each pass is fed what the previous one published, as the operator reads it
back from the ConfigMap; a pass with nothing new must publish the same bytes
and announce nothing (writes only on change, no repeated Events).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

from controller.api.account import Account
from controller.api.accountpolicy import AccountPolicy
from controller.api.grant import GPUGrantStatus
from controller.api.kinds import GPUExemption, GPUGrant
from controller.api.names import GPU_RESOURCE
from controller.policy.accounts import AccountInputs, AccountSettings, decide
from controller.policy.effective import effective_limits
from controller.policy.pods import Pod
from controller.policy.quota import mig_resource
from tests.unit.fixtures import grant, later
from tests.unit.test_effective import limit

ALICE = Account(namespace="u-alice", user="alice@lab.example", groups=("student",))
MIG2 = mig_resource("2g.20gb")
EQ = {GPU_RESOURCE: Fraction(1), MIG2: Fraction(2, 7)}
SETTINGS = AccountSettings(alert_cooldown=timedelta(hours=4))


def limits(**spec: Any) -> Any:
    base = {
        "gpu": {"maxGPUEquivalents": 2, "maxDevicesPerWorkload": 2},
        "rates": {"maxWorkloads": 3, "workloadStartsPerHour": 10},
        "budget": {"gpuHours": 1, "window": "24h"},
    }
    base.update(spec)
    return effective_limits(
        ALICE.user, ALICE.groups, [limit("student", [("Group", "student")], 10, **base)]
    )


def gpu_pod(name: str, minute: float, resource: str = GPU_RESOURCE, count: int = 1) -> Pod:
    return Pod(
        "u-alice",
        name,
        f"uid-{name}",
        later(minute),
        requests={resource: Fraction(count), "memory": Fraction(16 * 1024**3)},
        limits={resource: Fraction(count), "memory": Fraction(16 * 1024**3), "cpu": Fraction(4)},
    )


def inputs(**extra: Any) -> AccountInputs:
    values: dict[str, Any] = {
        "account": ALICE,
        "limits": limits(),
        "exemptions": (),
        "grants": (),
        "pods": (),
        "equivalents": EQ,
    }
    values.update(extra)
    return AccountInputs(**values)


def document(data: dict[str, str]) -> AccountPolicy:
    return AccountPolicy.model_validate_json(data["policy.json"])


def condition(data: dict[str, str], type_: str) -> Any:
    return next(c for c in document(data).conditions if c.type == type_)


def test_quota_lines_limit_range_and_admission_parameters() -> None:
    decided = decide(inputs(pods=[gpu_pod("a", 0)]), later(1), SETTINGS)
    assert decided.quota == {
        "requests.gpu.ds01.io/gpu": "2",
        "requests.gpu.ds01.io/mig-2g.20gb": "3",
        "pods": "3",
        "limits.cpu": "96",
        "limits.memory": "96Gi",
    }
    assert decided.limit_range["limits"][0]["max"] == {"cpu": "32", "memory": "32Gi"}
    data = decided.data
    assert data["maxDevicesPerWorkload"] == "2"
    assert data["maxDevicesPerWorkloadSource"] == "GPURateLimit/student"
    assert data["gpuResources"] == "gpu,mig-2g.20gb"
    assert data["gpuRemaining"] == "1.0" and data["gpuBlocked"] == data["podsBlocked"] == ""
    assert float(data["gpuEquivalents.mig-2g.20gb"]) == 2 / 7
    doc = document(data)
    assert doc.format == "ds01.policy/v1" and doc.user == "alice@lab.example"
    assert doc.limits["gpu.maxGPUEquivalents"].source == "GPURateLimit/student"
    assert doc.limits["lifecycle.maxRuntime"].source == "built-in defaults"
    assert doc.allowance.total == "2" and doc.allowance.in_use == "1"
    assert [s.pod for s in doc.rates.starts] == ["a"]
    assert {c.type: c.status for c in doc.conditions} == {
        "Ready": "True",
        "BudgetExhausted": "False",
        "WorkloadStartsLimited": "False",
        "OverUse": "False",
    }


def test_nothing_new_means_the_same_bytes_and_no_announcements() -> None:
    first = decide(inputs(pods=[gpu_pod("a", 0)]), later(1), SETTINGS)
    second = decide(inputs(pods=[gpu_pod("a", 0)], published=first.data), later(30), SETTINGS)
    assert second.data == first.data and second.quota == first.quota
    assert second.events == () and second.audit == ()


def test_active_grants_add_to_the_allowance() -> None:
    active = GPUGrantStatus(state="Active")
    extra = grant("more", count=2)
    host = grant("host", count=4, access="Host")
    pending = grant("later", count=1)
    grants: list[tuple[GPUGrant, GPUGrantStatus]] = [
        (extra, active),
        (host, active),
        (pending, GPUGrantStatus(state="Pending")),
    ]
    decided = decide(inputs(grants=grants), later(1), SETTINGS)
    # 2 + 2 + 4: a Host grant also opens host access, and adds like any other.
    assert decided.quota["requests.gpu.ds01.io/gpu"] == "8"
    assert decided.data["gpuAllowanceSource"] == (
        "GPURateLimit/student + GPUGrant/more, GPUGrant/host"
    )
    doc = document(decided.data)
    assert [g.name for g in doc.grants] == ["host", "more"]
    assert [g.name for g in doc.pending] == ["later"]


def run(passes: list[tuple[datetime, float]], **extra: Any) -> list[tuple[datetime, Any]]:
    """Decide at each (time, GPU-equivalents the agents report), feeding back what was published."""
    published: dict[str, str] | None = None
    out = []
    for at, rate in passes:
        decided = decide(
            inputs(reported=Fraction(rate), published=published, **extra), at, SETTINGS
        )
        published = decided.data
        out.append((at, decided))
    return out


def test_budget_exhaustion_freezes_gpu_quota_and_the_window_restores_it() -> None:
    pods = [gpu_pod("a", 0)]
    results = run(
        [(later(0), 1.0), (later(30), 1.0), (later(60), 1.0), (later(61), 0.0), (later(62), 0.0)],
        pods=pods,
    )
    before = results[1][1]
    assert before.quota["requests.gpu.ds01.io/gpu"] == "2"
    assert before.wake_at == later(60)  # the moment 1 GPU-hour is used up
    exhausted = results[2][1]
    assert exhausted.quota["requests.gpu.ds01.io/gpu"] == "1"  # held at current use
    assert exhausted.quota["requests.gpu.ds01.io/mig-2g.20gb"] == "0"
    assert [e.reason for e in exhausted.events] == ["BudgetExhausted"]
    assert [a.event_type for a in exhausted.audit] == ["quota.budget_exhausted"]
    blocked = exhausted.data["gpuBlocked"]
    assert "your GPU budget is used up: 1 of 1 GPU-hours used in the last 24h" in blocked
    assert "(budget.gpuHours from GPURateLimit/student)" in blocked
    assert document(exhausted.data).budget.exhausted
    # Still exhausted after the use stops, and said only once.
    assert results[3][1].events == () and results[4][1].data["gpuBlocked"]
    assert results[4][1].quota["requests.gpu.ds01.io/gpu"] == "1"
    # The window moves past the used hour: back to the allowance.
    published = results[4][1].data
    restored = decide(
        inputs(pods=pods, published=published), later(60) + timedelta(hours=24), SETTINGS
    )
    assert restored.quota["requests.gpu.ds01.io/gpu"] == "2"
    assert [e.reason for e in restored.events] == ["BudgetRestored"]
    assert restored.data["gpuBlocked"] == ""
    assert document(published).budget.restores_at == later(60) + timedelta(hours=24)


def test_a_restart_keeps_the_budget_record() -> None:
    """The stored rate covers the time the operator was away."""
    first = decide(inputs(reported=Fraction(1)), later(0), SETTINGS)
    # No pass for 90 minutes (operator down), then it comes back and sees the same use.
    back = decide(inputs(reported=Fraction(1), published=first.data), later(90), SETTINGS)
    assert document(back.data).budget.exhausted
    assert round(document(back.data).budget.used_gpu_hours, 6) == 1.5


def test_budget_exemption_lifts_enforcement_but_keeps_counting() -> None:
    exemption = GPUExemption.model_validate(
        {
            "metadata": {"name": "deadline"},
            "spec": {
                "subject": {"kind": "User", "name": ALICE.user},
                "exemptFrom": ["Budget"],
                "category": "ResearchGrant",
                "reason": "camera-ready",
            },
        }
    )
    results = run([(later(0), 1.0), (later(90), 1.0)], exemptions=[exemption])
    decided = results[-1][1]
    assert decided.quota["requests.gpu.ds01.io/gpu"] == "2"
    assert decided.data["gpuBlocked"] == ""
    budget = condition(decided.data, "BudgetExhausted")
    assert budget.status == "False" and budget.reason == "Exempt"
    assert "not enforced: a GPUExemption from Budget is in force" in budget.message
    assert document(decided.data).exemptions[0].name == "deadline"


def test_starts_per_hour_hold_the_pod_count_until_the_window_moves() -> None:
    capped = limits(rates={"maxWorkloads": 5, "workloadStartsPerHour": 2})
    pods = [Pod("u-alice", "a", "uid-a", later(0)), Pod("u-alice", "b", "uid-b", later(10))]
    limited = decide(inputs(limits=capped, pods=pods), later(11), SETTINGS)
    assert limited.quota["pods"] == "2"
    assert "you started 2 workloads in the last 1h" in limited.data["podsBlocked"]
    assert "new pods are refused until 2026-11-25T13:00:00Z" in limited.data["podsBlocked"]
    assert [e.reason for e in limited.events] == ["WorkloadStartsLimited"]
    assert limited.wake_at == later(60)
    # Pod a is deleted: its start still counts.
    still = decide(
        inputs(limits=capped, pods=pods[1:], published=limited.data), later(20), SETTINGS
    )
    assert still.quota["pods"] == "1" and still.data["podsBlocked"]
    free = decide(inputs(limits=capped, pods=pods[1:], published=still.data), later(60), SETTINGS)
    assert free.quota["pods"] == "5" and free.data["podsBlocked"] == ""
    assert [e.reason for e in free.events] == ["WorkloadStartsRestored"]


def test_rate_limit_exemption_lifts_the_start_limit() -> None:
    exemption = GPUExemption.model_validate(
        {
            "metadata": {"name": "burst"},
            "spec": {
                "subject": {"kind": "Group", "name": "student"},
                "exemptFrom": ["RateLimits"],
                "category": "Waiver",
                "reason": "workshop",
            },
        }
    )
    capped = limits(rates={"maxWorkloads": 5, "workloadStartsPerHour": 1})
    decided = decide(
        inputs(limits=capped, pods=[gpu_pod("a", 0)], exemptions=[exemption]), later(1), SETTINGS
    )
    assert decided.quota["pods"] == "5" and decided.data["podsBlocked"] == ""
    assert condition(decided.data, "WorkloadStartsLimited").reason == "Exempt"


def test_overuse_from_a_race_is_reported_once_with_what_to_do() -> None:
    one = limits(gpu={"maxGPUEquivalents": 1})
    pods = [gpu_pod("whole", 0), gpu_pod("slice", 1, MIG2)]
    over = decide(inputs(limits=one, pods=pods), later(2), SETTINGS)
    assert over.quota["requests.gpu.ds01.io/gpu"] == "1"
    assert over.quota["requests.gpu.ds01.io/mig-2g.20gb"] == "1"
    assert over.data["gpuRemaining"] == "0.0"
    reasons = [e.reason for e in over.events]
    assert "QuotaOverUse" in reasons
    message = next(e.message for e in over.events if e.reason == "QuotaOverUse")
    assert "your pods request 1.286 GPU-equivalents but your allowance is 1" in message
    assert "Delete GPU pods to get back within it (the newest: slice)" in message
    audit = next(a for a in over.audit if a.event_type == "quota.overuse")
    assert audit.details["pods"] == {GPU_RESOURCE: 1, MIG2: 1}
    assert audit.object_key == "configmap:u-alice/ds01-policy"
    again = decide(inputs(limits=one, pods=pods, published=over.data), later(3), SETTINGS)
    assert "QuotaOverUse" not in [e.reason for e in again.events]
    resolved = decide(inputs(limits=one, pods=pods[:1], published=over.data), later(4), SETTINGS)
    assert "QuotaOverUseResolved" in [e.reason for e in resolved.events]


def test_alerts_are_remembered_in_the_published_object() -> None:
    pods = [gpu_pod(n, i) for i, n in enumerate(["a", "b"])]
    full = decide(inputs(pods=pods), later(5), SETTINGS)
    alerts = {(a.details["metric"], a.details["level"]) for a in full.audit}
    assert alerts == {("gpu", 100)}
    assert [e.type for e in full.events] == ["Warning"]
    quiet = decide(inputs(pods=pods, published=full.data), later(60), SETTINGS)
    assert quiet.events == ()
    repeat = decide(
        inputs(pods=pods, published=quiet.data), later(5) + timedelta(hours=4), SETTINGS
    )
    assert [a.event_type for a in repeat.audit] == ["alert.quota_100"]


def test_unreadable_published_object_starts_afresh() -> None:
    decided = decide(
        inputs(published={"format": "ds01.policy/v0", "policy.json": "{"}), later(1), SETTINGS
    )
    assert json.loads(decided.data["policy.json"])["format"] == "ds01.policy/v1"
    other = ALICE.model_copy(update={"namespace": "u-x"})
    assert decide(inputs(account=other), later(1), SETTINGS).namespace == "u-x"
