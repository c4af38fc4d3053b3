"""Per-account decisions: quota, LimitRange, budget, rates, alerts and the published policy.

One pure function, `decide`, turns an account's effective policy, its pods,
its grants and exemptions, what the agents report and the object the operator
published last time into the objects to write (ResourceQuota `ds01`,
LimitRange `ds01`, ConfigMap `ds01-policy`) and what to say about the change.
What must persist between passes (budget buckets, workload starts, alerts
sent, conditions) is read back from the published object, so the decision is
level-triggered and a restart loses nothing.

Fail open for users: an exhausted budget or a reached start rate holds the
quota at current use — running work keeps running — and never removes pods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any, Literal

from controller.api.account import ANNOTATION_POD_SECURITY, Account
from controller.api.accountpolicy import (
    LIMIT_RANGE_NAME,
    POLICY_CONFIGMAP,
    QUOTA_NAME,
    AccountPolicy,
)
from controller.api.base import Condition
from controller.api.grant import GPUGrantStatus
from controller.api.kinds import GPUExemption, GPUGrant
from controller.api.ratelimit import GPURateLimitSpec
from controller.policy import alerts as alert_policy
from controller.policy import budget as budget_policy
from controller.policy import publication
from controller.policy import quota as quota_policy
from controller.policy import rates as rate_policy
from controller.policy.conditions import Want, find, merge
from controller.policy.effective import EffectiveLimits
from controller.policy.exemptions import exempt_from
from controller.policy.grants import equivalents as grant_equivalents
from controller.policy.pods import Pod
from controller.policy.quantity import format_quantity, gibibytes, parse_quantity
from controller.policy.records import AuditRecord, EventRecord, ObjectRef
from controller.policy.units import (
    format_gpu_equivalents,
    parse_count,
    parse_duration_limit,
    parse_gpu_equivalents,
)

StoredKind = Literal["ResourceQuota", "LimitRange", "ConfigMap"]
PodSecurityLevel = Literal["privileged", "baseline", "restricted"]
POD_SECURITY_LEVELS: tuple[PodSecurityLevel, ...] = ("privileged", "baseline", "restricted")
POD_SECURITY_PREFIX = "pod-security.kubernetes.io/"
"""Pod Security Admission's namespace labels: ``<mode>`` and ``<mode>-version``."""


@dataclass(frozen=True)
class AccountSettings:
    """Operator-wide settings of quotas, budgets, rates, alerts and pod security."""

    pod_security_enforce: PodSecurityLevel = "baseline"
    """Pod Security Admission level enforced in account namespaces. Not ``restricted``
    by default: it demands non-root users and dropping every capability, which most
    CUDA images do not do (docs/security.md)."""
    pod_security_warn: PodSecurityLevel = "restricted"
    """Level users are warned about and the apiserver's audit log annotated with."""
    budget_bucket: timedelta = timedelta(hours=1)
    """Length of one budget bucket; the budget window is counted in whole buckets."""
    starts_window: timedelta = timedelta(hours=1)
    """The window `rates.workloadStartsPerHour` is counted over."""
    alert_cooldown: timedelta = timedelta(hours=4)
    """Least time between two alerts of one measure and level."""


@dataclass(frozen=True)
class Stored:
    """An object the operator owns in an account namespace, as last seen."""

    kind: StoredKind
    namespace: str
    name: str
    uid: str | None
    resource_version: str | None
    content: Mapping[str, Any]
    """ResourceQuota: `spec.hard`; LimitRange: `spec`; ConfigMap: `data`."""


@dataclass(frozen=True)
class AccountInputs:
    """Everything one account's decision depends on besides the time."""

    account: Account
    limits: EffectiveLimits
    exemptions: Sequence[GPUExemption]
    """Exemptions in force for the user."""
    grants: Sequence[tuple[GPUGrant, GPUGrantStatus]]
    """The user's grants in the account namespace, with the status decided this pass."""
    pods: Sequence[Pod]
    """Every pod of the namespace, finished ones included (they count as starts)."""
    equivalents: Mapping[str, Fraction]
    """GPU-equivalents of one device of each GPU resource the nodes offer."""
    reported: Fraction = Fraction(0)
    """GPU-equivalents in use by the user's workloads, as the agents report."""
    published: Mapping[str, str] | None = None
    """`data` of the ConfigMap ds01-policy as stored, if any."""
    published_uid: str | None = None


@dataclass(frozen=True)
class AccountDecision:
    """The objects to write for one account and what to announce."""

    namespace: str
    quota: dict[str, str]
    """`spec.hard` of ResourceQuota ds01."""
    limit_range: dict[str, Any]
    """`spec` of LimitRange ds01."""
    data: dict[str, str]
    """`data` of ConfigMap ds01-policy."""
    events: tuple[EventRecord, ...] = ()
    audit: tuple[AuditRecord, ...] = ()
    wake_at: datetime | None = None
    document: AccountPolicy | None = field(default=None, compare=False)


OBJECT_NAMES: dict[StoredKind, str] = {
    "ResourceQuota": QUOTA_NAME,
    "LimitRange": LIMIT_RANGE_NAME,
    "ConfigMap": POLICY_CONFIGMAP,
}
"""The name of the operator's object of each kind in an account namespace."""


def ours(stored: Sequence[Stored]) -> dict[tuple[StoredKind, str], Stored]:
    """The operator's objects by (kind, namespace); others carrying its label are ignored."""
    return {(m.kind, m.namespace): m for m in stored if m.name == OBJECT_NAMES[m.kind]}


def object_key(namespace: str) -> str:
    """The key writes, Events and audit records about an account's policy object share."""
    return f"configmap:{namespace}/{POLICY_CONFIGMAP}"


def _limits_sum(pods: Sequence[Pod], resource: str) -> Fraction:
    """The pods' effective limits of ``resource`` together (what `limits.*` quota lines count)."""
    return sum((p.limits.get(resource, Fraction(0)) for p in pods), Fraction(0))


def _limit(value: int | str | None) -> Fraction | None:
    if value is None or value == "Unlimited":
        return None
    return parse_quantity(value)


@dataclass(frozen=True)
class _Budget:
    ledger: budget_policy.Ledger
    limit: float | None
    window: timedelta | None
    spent: float
    """As of the ledger's `as_of`: what messages quote, so they change only with the record."""
    over: bool
    exempt: bool
    exhausted: bool


def _budget(
    inputs: AccountInputs, previous: AccountPolicy | None, now: datetime, settings: AccountSettings
) -> _Budget:
    policy = inputs.limits.spec.budget
    assert policy is not None
    hours = parse_gpu_equivalents(policy.gpu_hours if policy.gpu_hours is not None else "Unlimited")
    limit = None if hours is None else float(hours)
    window = parse_duration_limit(policy.window or "Unlimited")
    stored = publication.ledger(previous)
    rate = float(inputs.reported)
    ledger = budget_policy.advance(stored, rate, now, settings.budget_bucket, window)
    over = limit is not None and budget_policy.used(ledger, now, window) >= limit
    exempt = "Budget" in exempt_from(inputs.exemptions)
    exhausted = over and not exempt
    was = bool(previous and previous.budget.exhausted)
    if exhausted != was and ledger.as_of != now:
        # The verdict changes: record the figures it was made on.
        ledger = budget_policy.advance(
            ledger, rate, now, settings.budget_bucket, window, force=True
        )
    spent = budget_policy.used(ledger, ledger.as_of, window) if ledger.as_of else 0.0
    return _Budget(ledger, limit, window, spent, over, exempt, exhausted)


def _gpu_usage(
    live: Sequence[Pod], known: Mapping[str, Fraction]
) -> tuple[dict[str, int], dict[str, Fraction]]:
    """Devices the pods ask for by resource, and the equivalents of every resource involved."""
    used: dict[str, int] = {}
    for pod in live:
        for name, count in pod.gpu_requests().items():
            used[name] = used.get(name, 0) + count
    equivalents = dict(known)
    for name in used:
        equivalents.setdefault(name, quota_policy.equivalent_of(name, equivalents))
    return used, equivalents


def _hard(
    spec: GPURateLimitSpec,
    gpu_hard: Mapping[str, int],
    workloads: int,
    max_workloads: int | None,
    limited: bool,
) -> dict[str, str]:
    """`spec.hard` of the ResourceQuota: GPU lines, pods, aggregate CPU and memory limits."""
    hard = {quota_policy.quota_key(r): str(n) for r, n in sorted(gpu_hard.items())}
    pods_hard = max_workloads
    if limited:
        pods_hard = workloads if max_workloads is None else min(max_workloads, workloads)
    if pods_hard is not None:
        hard["pods"] = str(pods_hard)
    per_user = spec.resources.per_user if spec.resources else None
    if per_user is not None and _limit(per_user.cpu) is not None:
        hard["limits.cpu"] = str(per_user.cpu)
    if per_user is not None and _limit(per_user.memory) is not None:
        hard["limits.memory"] = str(per_user.memory)
    return hard


def _facts(
    inputs: AccountInputs,
    previous: AccountPolicy | None,
    live: Sequence[Pod],
    now: datetime,
    settings: AccountSettings,
) -> publication.Facts:
    spec = inputs.limits.spec
    assert spec.gpu and spec.rates
    base = parse_gpu_equivalents(
        spec.gpu.max_gpu_equivalents if spec.gpu.max_gpu_equivalents is not None else "Unlimited"
    )
    active = [g for g, s in inputs.grants if s.state == "Active"]
    granted = sum((grant_equivalents(g) for g in active), Fraction(0))
    allowance = None if base is None else base + granted
    used, equivalents = _gpu_usage(live, inputs.equivalents)
    allowed = quota_policy.allowed_resources(sorted(equivalents), spec.gpu)
    spent = _budget(inputs, previous, now, settings)

    window = settings.starts_window
    starts_limit = parse_count(spec.rates.workload_starts_per_hour or "Unlimited")
    starts = rate_policy.record(publication.starts(previous), inputs.pods, now, window)
    started = rate_policy.verdict(starts, starts_limit, now, window)
    rate_exempt = "RateLimits" in exempt_from(inputs.exemptions)
    limited = started.limited and not rate_exempt
    max_workloads = parse_count(spec.rates.max_workloads or "Unlimited")
    gpu_hard = quota_policy.split(allowance, used, equivalents, allowed, frozen=spent.exhausted)
    return publication.Facts(
        account=inputs.account,
        limits=inputs.limits,
        base=base,
        granted=granted,
        allowance=allowance,
        in_use=quota_policy.used_equivalents(used, equivalents),
        used=used,
        equivalents=equivalents,
        allowed=allowed,
        workloads=len(live),
        cpu_used=_limits_sum(live, "cpu"),
        memory_used=_limits_sum(live, "memory"),
        reported=inputs.reported,
        hard=_hard(spec, gpu_hard, len(live), max_workloads, limited),
        budget_limit=spent.limit,
        budget_window=spent.window,
        budget_spent=spent.spent,
        over_budget=spent.over,
        ledger=spent.ledger,
        budget_exempt=spent.exempt,
        exhausted=spent.exhausted,
        starts=starts,
        starts_limit=starts_limit,
        starts_window=window,
        started=started,
        rate_exempt=rate_exempt,
        limited=limited,
        max_workloads=max_workloads,
        grants=inputs.grants,
        exemptions=inputs.exemptions,
    )


def _measures(facts: publication.Facts) -> list[alert_policy.Measure]:
    """What quota alerts watch: the GPU allowance, workloads at once and memory."""
    limits = facts.limits
    per_user = limits.spec.resources.per_user if limits.spec.resources else None
    memory_cap = _limit(per_user.memory if per_user else None)
    workloads_cap = None if facts.max_workloads is None else Fraction(facts.max_workloads)
    return [
        alert_policy.Measure(
            "gpu",
            facts.in_use,
            facts.allowance,
            f"{format_gpu_equivalents(facts.in_use)} of "
            f"{format_gpu_equivalents(facts.allowance)} GPU-equivalents",
            publication.allowance_source(facts),
        ),
        alert_policy.Measure(
            "workloads",
            Fraction(facts.workloads),
            workloads_cap,
            f"{facts.workloads} of {facts.max_workloads} pods",
            limits.source_of("rates.maxWorkloads"),
        ),
        alert_policy.Measure(
            "memory",
            facts.memory_used,
            memory_cap,
            f"{gibibytes(facts.memory_used)} of "
            f"{format_quantity(memory_cap or Fraction(0), memory=True)} in memory limits",
            limits.source_of("resources.perUser.memory"),
        ),
    ]


def _alert_records(
    alerts: Sequence[alert_policy.Alert], about: ObjectRef, account: Account, key: str
) -> tuple[list[EventRecord], list[AuditRecord]]:
    events = [
        EventRecord(about, "QuotaAlert", a.message, _kind(a.level >= alert_policy.LEVELS[-1]))
        for a in alerts
    ]
    audit = [
        AuditRecord(
            f"alert.quota_{a.level}",
            account.user,
            {
                "namespace": account.namespace,
                "metric": a.metric,
                "level": a.level,
                "message": a.message,
            },
            key,
        )
        for a in alerts
    ]
    return events, audit


def decide(inputs: AccountInputs, now: datetime, settings: AccountSettings) -> AccountDecision:
    """The account's objects and announcements; see the module docstring."""
    account = inputs.account
    previous = publication.parse(inputs.published)
    live = [p for p in inputs.pods if not p.terminal]
    facts = _facts(inputs, previous, live, now, settings)

    alerts, sent, alert_wake = alert_policy.due(
        _measures(facts), publication.sent(previous), now, settings.alert_cooldown
    )
    excess = quota_policy.overuse(facts.allowance, facts.in_use)
    wanted = publication.conditions(facts, excess, live)
    old_conditions = previous.conditions if previous else []
    document = publication.document(facts, sent, merge(old_conditions, wanted, now, None), now)

    about = ObjectRef("ConfigMap", POLICY_CONFIGMAP, account.namespace, inputs.published_uid)
    key = object_key(account.namespace)
    events, audit = _transitions(old_conditions, wanted, about, facts, key)
    more_events, more_audit = _alert_records(alerts, about, account, key)

    wakes = [
        budget_policy.next_change(
            facts.ledger, now, settings.budget_bucket, facts.budget_window, facts.budget_limit
        ),
        rate_policy.next_change(facts.starts, now, facts.starts_window),
        facts.started.next_allowed,
        alert_wake,
    ]
    per_workload = (
        inputs.limits.spec.resources.per_workload if inputs.limits.spec.resources else None
    )
    return AccountDecision(
        namespace=account.namespace,
        quota=dict(facts.hard),
        limit_range=quota_policy.limit_range(per_workload),
        data=publication.config_data(facts, document),
        events=tuple(events + more_events),
        audit=tuple(audit + more_audit),
        wake_at=min((t for t in wakes if t is not None and t > now), default=None),
        document=document,
    )


_TRANSITIONS = {
    # condition type: (event on True, event on False, audit action on True, on False)
    "BudgetExhausted": ("BudgetExhausted", "BudgetRestored", "budget_exhausted", "budget_restored"),
    "WorkloadStartsLimited": (
        "WorkloadStartsLimited",
        "WorkloadStartsRestored",
        "starts_limited",
        "starts_restored",
    ),
    "OverUse": ("QuotaOverUse", "QuotaOverUseResolved", "overuse", "overuse_resolved"),
}


def _transitions(
    old: Sequence[Condition],
    wanted: Sequence[Want],
    about: ObjectRef,
    facts: publication.Facts,
    key: str,
) -> tuple[list[EventRecord], list[AuditRecord]]:
    """An Event and an audit record for each condition that changed its status."""
    account = facts.account
    events: list[EventRecord] = []
    audit: list[AuditRecord] = []
    for want in wanted:
        if want.type not in _TRANSITIONS:
            continue
        before = find(old, want.type)
        was = before is not None and before.status == "True"
        if was == want.status:
            continue
        on, off, audit_on, audit_off = _TRANSITIONS[want.type]
        events.append(
            EventRecord(about, on if want.status else off, want.message, _kind(want.status))
        )
        audit.append(
            AuditRecord(
                f"quota.{audit_on if want.status else audit_off}",
                account.user,
                {
                    "namespace": account.namespace,
                    "reason": want.reason,
                    "message": want.message,
                    **publication.audit_details(facts, want.type),
                },
                key,
            )
        )
    return events, audit


def _kind(status: bool) -> Literal["Normal", "Warning"]:
    return "Warning" if status else "Normal"


def pod_security_labels(
    annotations: Mapping[str, str], settings: AccountSettings
) -> dict[str, str]:
    """The Pod Security Admission labels an account namespace must carry.

    Enforce the operator's level, or the one an admin chose for this account
    (annotation gpu.ds01.io/pod-security; a value that is not a level is
    ignored, so a typo never weakens an account). Warn and audit at the warning
    level. Versions are pinned to ``latest``: an older version checks less.
    """
    chosen = annotations.get(ANNOTATION_POD_SECURITY, "").strip()
    enforce: str = chosen if chosen in POD_SECURITY_LEVELS else settings.pod_security_enforce
    labels: dict[str, str] = {}
    for mode, level in (
        ("enforce", enforce),
        ("warn", settings.pod_security_warn),
        ("audit", settings.pod_security_warn),
    ):
        labels[f"{POD_SECURITY_PREFIX}{mode}"] = level
        labels[f"{POD_SECURITY_PREFIX}{mode}-version"] = "latest"
    return labels


def pod_security_patch(
    labels: Mapping[str, str], annotations: Mapping[str, str], settings: AccountSettings
) -> dict[str, str]:
    """The labels to write so the namespace carries `pod_security_labels` (empty: none)."""
    wanted = pod_security_labels(annotations, settings)
    return {k: v for k, v in wanted.items() if labels.get(k) != v}
