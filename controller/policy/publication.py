"""The published per-account policy: the document, its conditions and the admission parameters.

`accounts.decide` gathers the facts; this module words them. Everything a user
reads (messages, conditions, the `ds01-policy` ConfigMap) is built here, and
so is reading back what was published last time (the operator's memory).
Messages say what happened, where the limit came from and what to do.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

from pydantic import ValidationError

from controller.api import accountpolicy as ap
from controller.api import names
from controller.api.account import Account
from controller.api.base import Condition
from controller.api.grant import GPUGrantStatus
from controller.api.kinds import GPUExemption, GPUGrant
from controller.policy import budget as budget_policy
from controller.policy import quota as quota_policy
from controller.policy import rates as rate_policy
from controller.policy.alerts import Sent
from controller.policy.conditions import Want, find
from controller.policy.effective import EffectiveLimits, leaves
from controller.policy.grants import equivalents as grant_equivalents
from controller.policy.pods import Pod
from controller.policy.quantity import format_quantity
from controller.policy.units import format_duration, format_gpu_equivalents

PENDING_STATES = ("Pending", "Approved")
IN_FORCE_STATES = ("Active", "Scheduled")
MAX_GRANTS = 50


@dataclass(frozen=True)
class Facts:
    """What `accounts.decide` found out about one account this pass."""

    account: Account
    limits: EffectiveLimits
    base: Fraction | None
    granted: Fraction
    allowance: Fraction | None
    in_use: Fraction
    used: Mapping[str, int]
    equivalents: Mapping[str, Fraction]
    allowed: frozenset[str]
    workloads: int
    cpu_used: Fraction
    memory_used: Fraction
    reported: Fraction
    hard: Mapping[str, str]
    budget_limit: float | None
    budget_window: timedelta | None
    budget_spent: float
    """GPU-hours inside the window as of the ledger's `as_of` (stable between records)."""
    over_budget: bool
    """Whether the use reached the budget now (before exemptions)."""
    ledger: budget_policy.Ledger
    budget_exempt: bool
    exhausted: bool
    starts: Sequence[rate_policy.Start]
    starts_limit: int | None
    starts_window: timedelta
    started: rate_policy.StartVerdict
    rate_exempt: bool
    limited: bool
    max_workloads: int | None
    grants: Sequence[tuple[GPUGrant, GPUGrantStatus]]
    exemptions: Sequence[GPUExemption]


# -- reading back ---------------------------------------------------------------


def parse(data: Mapping[str, str] | None) -> ap.AccountPolicy | None:
    """The document published last time; None when absent or not readable as v1."""
    if not data or data.get(ap.KEY_FORMAT) != ap.POLICY_FORMAT:
        return None
    try:
        return ap.AccountPolicy.model_validate_json(data.get(ap.KEY_DOCUMENT, ""))
    except ValidationError:
        return None


def ledger(previous: ap.AccountPolicy | None) -> budget_policy.Ledger:
    """The budget ledger as recorded."""
    if previous is None:
        return budget_policy.Ledger()
    b = previous.budget
    buckets = tuple(budget_policy.Bucket(x.start, x.end, x.gpu_hours) for x in b.buckets)
    return budget_policy.Ledger(buckets, b.rate, b.as_of)


def starts(previous: ap.AccountPolicy | None) -> tuple[rate_policy.Start, ...]:
    """The workload starts as recorded."""
    if previous is None:
        return ()
    return tuple(rate_policy.Start(s.at, s.uid, s.pod) for s in previous.rates.starts)


def sent(previous: ap.AccountPolicy | None) -> tuple[Sent, ...]:
    """The alerts sent, as recorded."""
    if previous is None:
        return ()
    return tuple(Sent(a.metric, a.level, a.sent_at) for a in previous.alerts)


# -- wording ------------------------------------------------------------------------


def _hours(value: float | None) -> str:
    if value is None:
        return "Unlimited"
    return f"{value:.4f}".rstrip("0").rstrip(".")


def _time(at: datetime | None) -> str:
    return at.isoformat().replace("+00:00", "Z") if at else "never"


def allowance_source(facts: Facts) -> str:
    """``GPURateLimit/student`` plus the active grants that add to it."""
    source = facts.limits.source_of("gpu.maxGPUEquivalents")
    active = [g for g, s in facts.grants if s.state == "Active"]
    if active:
        names = ", ".join(f"GPUGrant/{g.metadata.name}" for g in active)
        return f"{source} + {names}"
    return source


def _window(window: timedelta | None) -> str:
    if window is None:
        return "all time"
    return format_duration(timedelta(seconds=round(window.total_seconds())))


def budget_message(facts: Facts) -> str:
    source = facts.limits.source_of("budget.gpuHours")
    # An all-time budget has no "last" window to speak of.
    over = (
        "over all time"
        if facts.budget_window is None
        else f"in the last {_window(facts.budget_window)}"
    )
    spent = (
        f"{_hours(facts.budget_spent)} of {_hours(facts.budget_limit)} GPU-hours used "
        f"{over} (budget.gpuHours from {source})"
    )
    if facts.exhausted:
        back = _restores(facts)
        return (
            f"your GPU budget is used up: {spent}; new GPU pods are refused until about "
            f"{_time(back)} as the window moves; running work keeps running. If this blocks "
            "urgent work, ask an admin for a GPUExemption from Budget"
        )
    if facts.budget_exempt and facts.budget_limit is not None:
        return f"{spent}; not enforced: a GPUExemption from Budget is in force"
    return spent


def _restores(facts: Facts) -> datetime | None:
    as_of = facts.ledger.as_of
    if not facts.exhausted or as_of is None or facts.budget_limit is None:
        return None
    return budget_policy.restores_at(facts.ledger, as_of, facts.budget_window, facts.budget_limit)


def starts_message(facts: Facts) -> str:
    source = facts.limits.source_of("rates.workloadStartsPerHour")
    count = facts.started.count
    limit = "Unlimited" if facts.starts_limit is None else str(facts.starts_limit)
    window = _window(facts.starts_window)
    if facts.limited:
        return (
            f"you started {count} workloads in the last {window} "
            f"(rates.workloadStartsPerHour {limit} from {source}); new pods are refused until "
            f"{_time(facts.started.next_allowed)}; pods that exist keep running"
        )
    starts = "start" if count == 1 else "starts"
    text = f"{count} workload {starts} in the last {window} (limit {limit} from {source})"
    if facts.started.limited and facts.rate_exempt:
        text += "; not enforced: a GPUExemption from RateLimits is in force"
    return text


def _overuse_pods(live: Sequence[Pod], facts: Facts, excess: Fraction) -> list[str]:
    """The newest GPU pods whose deletion brings the account back within its allowance."""
    out: list[str] = []
    for pod in reversed(live):
        if excess <= 0:
            break
        requests = pod.gpu_requests()
        if requests:
            out.append(pod.name)
            excess -= quota_policy.used_equivalents(requests, facts.equivalents)
    return out


def conditions(facts: Facts, excess: Fraction, live: Sequence[Pod]) -> list[Want]:
    """The account's conditions, recomputed from the facts."""
    if facts.budget_limit is None:
        budget = Want("BudgetExhausted", False, "Unlimited", "no GPU-hour budget applies")
    elif facts.exhausted:
        budget = Want("BudgetExhausted", True, "Exhausted", budget_message(facts))
    elif facts.budget_exempt and facts.over_budget:
        budget = Want("BudgetExhausted", False, "Exempt", budget_message(facts))
    else:
        budget = Want("BudgetExhausted", False, "WithinBudget", budget_message(facts))
    if facts.limited:
        starts = Want("WorkloadStartsLimited", True, "RateLimited", starts_message(facts))
    elif facts.started.limited:
        starts = Want("WorkloadStartsLimited", False, "Exempt", starts_message(facts))
    else:
        starts = Want("WorkloadStartsLimited", False, "WithinRate", starts_message(facts))
    allowance = format_gpu_equivalents(facts.allowance)
    if excess > 0:
        names = ", ".join(_overuse_pods(live, facts, excess))
        over = Want(
            "OverUse",
            True,
            "AllowanceExceeded",
            f"your pods request {format_gpu_equivalents(facts.in_use)} GPU-equivalents but "
            f"your allowance is {allowance} ({allowance_source(facts)}): pods asking for "
            "different GPU resources were admitted at the same moment, each within its own "
            f"quota line. Delete GPU pods to get back within it (the newest: {names}); no new "
            "GPU pod is admitted until then",
        )
    else:
        over = Want(
            "OverUse",
            False,
            "WithinAllowance",
            f"{format_gpu_equivalents(facts.in_use)} of {allowance} GPU-equivalents in use",
        )
    ready = Want(
        "Ready",
        True,
        "Applied",
        f"ResourceQuota {ap.QUOTA_NAME} and LimitRange {ap.LIMIT_RANGE_NAME} follow "
        + (", ".join(f"GPURateLimit/{n}" for n in facts.limits.applied) or "the built-in defaults"),
    )
    return [ready, budget, starts, over]


def audit_details(facts: Facts, condition: str) -> dict[str, Any]:
    """What an audit record of a condition change adds to its message."""
    if condition == "BudgetExhausted":
        return {
            "gpuHoursUsed": round(facts.budget_spent, 6),
            "gpuHours": facts.budget_limit,
            "window": _window(facts.budget_window),
        }
    if condition == "WorkloadStartsLimited":
        return {"starts": facts.started.count, "limit": facts.starts_limit}
    return {
        "gpuEquivalentsInUse": format_gpu_equivalents(facts.in_use),
        "allowance": format_gpu_equivalents(facts.allowance),
        "pods": dict(facts.used),
    }


# -- the document and the ConfigMap ---------------------------------------------------


def _grant_entry(grant: GPUGrant, status: GPUGrantStatus) -> ap.GrantEntry:
    ready = find(status.conditions, "Ready")
    return ap.GrantEntry(
        name=grant.metadata.name,
        state=status.state or "Unknown",
        gpus=grant.spec.gpus.count,
        mig_profile=grant.spec.gpus.mig_profile,
        access=grant.spec.access,
        gpu_equivalents=format_gpu_equivalents(grant_equivalents(grant)),
        start=status.window.start if status.window else None,
        end=status.window.end if status.window else None,
        message=ready.message if ready else "",
    )


def _limit_value(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def document(
    facts: Facts, alerts_sent: Sequence[Sent], conditions: Sequence[Condition], now: datetime
) -> ap.AccountPolicy:
    """The `policy.json` document."""
    limits = facts.limits
    spec = limits.spec
    assert spec.rates and spec.budget
    allowance = facts.allowance
    remaining = None if allowance is None else max(Fraction(0), allowance - facts.in_use)
    quota_lines = []
    for key, hard in facts.hard.items():
        resource = key.removeprefix("requests.")
        if resource.startswith(names.PREFIX):
            used = str(facts.used.get(resource, 0))
            each = format_gpu_equivalents(quota_policy.equivalent_of(resource, facts.equivalents))
        elif key == "pods":
            used, each = str(facts.workloads), None
        elif key == "limits.cpu":
            used, each = format_quantity(facts.cpu_used), None
        else:
            used, each = format_quantity(facts.memory_used, memory=True), None
        quota_lines.append(
            ap.QuotaLine(resource=key, hard=hard, used=used, gpu_equivalents_each=each)
        )
    ledger = facts.ledger
    spent_then = facts.budget_spent
    budget = ap.Budget(
        gpu_hours=_hours(facts.budget_limit),
        window=_window(facts.budget_window),
        source=limits.source_of("budget.gpuHours"),
        exempt=facts.budget_exempt,
        exhausted=facts.exhausted,
        used_gpu_hours=round(spent_then, 6),
        remaining_gpu_hours=None
        if facts.budget_limit is None
        else round(max(0.0, facts.budget_limit - spent_then), 6),
        rate=ledger.rate,
        as_of=ledger.as_of,
        restores_at=_restores(facts),
        buckets=[
            ap.BudgetBucket(start=b.start, end=b.end, gpu_hours=b.hours) for b in ledger.buckets
        ],
    )
    rates = ap.Rates(
        workload_starts_per_hour=str(spec.rates.workload_starts_per_hour),
        window=_window(facts.starts_window),
        source=limits.source_of("rates.workloadStartsPerHour"),
        exempt=facts.rate_exempt,
        limited=facts.limited,
        next_start_at=facts.started.next_allowed if facts.limited else None,
        starts=[ap.WorkloadStart(at=s.at, pod=s.pod, uid=s.uid) for s in facts.starts],
        max_workloads=str(spec.rates.max_workloads),
        workloads=facts.workloads,
        grant_requests_per_day=str(spec.rates.grant_requests_per_day),
    )
    ordered = sorted(
        facts.grants,
        key=lambda gs: (gs[0].metadata.creation_timestamp or now, gs[0].metadata.name),
    )
    grants = [_grant_entry(g, s) for g, s in ordered if s.state in IN_FORCE_STATES]
    pending = [_grant_entry(g, s) for g, s in ordered if s.state in PENDING_STATES]
    return ap.AccountPolicy(
        user=facts.account.user,
        groups=list(facts.account.groups),
        namespace=facts.account.namespace,
        applied=list(limits.applied),
        limits={
            path: ap.LimitEntry(value=_limit_value(value), source=limits.source_of(path))
            for path, value in leaves(spec)
        },
        allowance=ap.Allowance(
            base=format_gpu_equivalents(facts.base),
            base_source=limits.source_of("gpu.maxGPUEquivalents"),
            grants=format_gpu_equivalents(facts.granted),
            total=format_gpu_equivalents(allowance),
            in_use=format_gpu_equivalents(facts.in_use),
            remaining=format_gpu_equivalents(remaining),
        ),
        quota=quota_lines,
        usage=ap.Usage(
            gpu_equivalents=format_gpu_equivalents(facts.in_use),
            workloads=facts.workloads,
            cpu_limits=format_quantity(facts.cpu_used),
            memory_limits=format_quantity(facts.memory_used, memory=True),
            reported_gpu_equivalents=format_gpu_equivalents(facts.reported),
        ),
        budget=budget,
        rates=rates,
        alerts=[ap.SentAlert(metric=a.metric, level=a.level, sent_at=a.at) for a in alerts_sent],
        grants=grants[:MAX_GRANTS],
        pending=pending[:MAX_GRANTS],
        exemptions=[
            ap.ExemptionEntry(
                name=e.metadata.name,
                exempt_from=list(e.spec.exempt_from),
                category=e.spec.category,
                expires_at=e.spec.expires_at,
            )
            for e in sorted(facts.exemptions, key=lambda e: e.metadata.name)
        ],
        conditions=list(conditions),
    )


def _short(resource: str) -> str:
    return resource.removeprefix(names.PREFIX)


def config_data(facts: Facts, doc: ap.AccountPolicy) -> dict[str, str]:
    """The ConfigMap's `data`: the document and the admission parameters."""
    spec = facts.limits.spec
    assert spec.gpu is not None
    allowed = sorted(facts.allowed)
    shape = facts.limits.source_of("gpu.allowedMIGProfiles")
    full = facts.limits.source_of("gpu.allowFullGPUs")
    offered = ", ".join(allowed) or "none"
    note = (
        f"you may ask for: {offered} (gpu.allowFullGPUs from {full}, gpu.allowedMIGProfiles "
        f"from {shape}, and the MIG profiles the nodes offer)"
    )
    allowance = facts.allowance
    remaining = None if allowance is None else max(Fraction(0), allowance - facts.in_use)
    blocked_gpu = budget_message(facts) if facts.exhausted else ""
    data = {
        ap.KEY_FORMAT: ap.POLICY_FORMAT,
        ap.KEY_DOCUMENT: json.dumps(doc.to_wire(), separators=(",", ":"), ensure_ascii=False),
        ap.KEY_MAX_DEVICES: str(spec.gpu.max_devices_per_workload),
        ap.KEY_MAX_DEVICES_SOURCE: facts.limits.source_of("gpu.maxDevicesPerWorkload"),
        ap.KEY_GPU_RESOURCES: ",".join(_short(r) for r in allowed),
        ap.KEY_GPU_RESOURCES_NOTE: note,
        ap.KEY_GPU_ALLOWANCE: format_gpu_equivalents(allowance),
        ap.KEY_GPU_ALLOWANCE_SOURCE: allowance_source(facts),
        ap.KEY_GPU_IN_USE: format_gpu_equivalents(facts.in_use),
        ap.KEY_GPU_REMAINING: "Unlimited" if remaining is None else repr(float(remaining)),
        ap.KEY_GPU_BLOCKED: blocked_gpu,
        ap.KEY_PODS_BLOCKED: starts_message(facts) if facts.limited else "",
    }
    for resource in allowed:
        equivalent = quota_policy.equivalent_of(resource, facts.equivalents)
        data[f"{ap.KEY_EQUIVALENT_PREFIX}{_short(resource)}"] = repr(float(equivalent))
    return data
