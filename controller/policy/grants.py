"""GPUGrant decisions: is it allowed, who must approve it, when it is active, what it holds.

`decide` recomputes a grant's whole status from its spec, the subject's
effective policy, the allocation already decided for it and the time, so an
operator that restarts (or was down while a grant expired) reaches the same
answer. Once a grant is decided (approved or denied) the decision stands:
policy changes later do not undo an approver's word; approvers revoke instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction

from controller.api.account import Account
from controller.api.grant import (
    DeviceAllocation,
    GPUGrantStatus,
    GrantApproval,
    GrantState,
    GrantWindow,
    NodeAllocation,
)
from controller.api.kinds import GPUGrant
from controller.policy.allocation import Allocation, Refusal, Window
from controller.policy.conditions import Want, merge
from controller.policy.effective import EffectiveLimits
from controller.policy.records import AuditRecord, EventRecord, ObjectRef
from controller.policy.units import (
    format_gpu_equivalents,
    gpu_equivalents,
    parse_count,
    parse_duration,
    parse_duration_limit,
    parse_gpu_equivalents,
)

DEFAULT_DURATION = timedelta(hours=24)
RATE_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class GrantSettings:
    """Operator-wide settings that shape grant decisions."""

    default_duration: timedelta = DEFAULT_DURATION
    expiry_warning: timedelta = timedelta(hours=1)
    operator_user: str = "system:serviceaccount:ds01-system:ds01-operator"
    """Who admission stamps as approver of auto-approved grants."""


@dataclass(frozen=True)
class GrantContext:
    """Everything besides the grant itself that its decision depends on."""

    account: Account | None
    account_problem: str | None
    limits: EffectiveLimits
    exempt_from: frozenset[str] = frozenset()
    request_rank: int = 1
    allocation: Allocation | Refusal | None = None


@dataclass(frozen=True)
class GrantDecision:
    """The grant's new status and what to do and say about it."""

    status: GPUGrantStatus
    approve: GrantApproval | None = None
    events: tuple[EventRecord, ...] = ()
    audit: tuple[AuditRecord, ...] = ()
    wake_at: datetime | None = None

    @property
    def state(self) -> GrantState:
        assert self.status.state is not None
        return self.status.state


def key(grant: GPUGrant) -> str:
    """``namespace/name``: how grants are named throughout the policy layer."""
    return f"{grant.metadata.namespace}/{grant.metadata.name}"


def reserves(grant: GPUGrant) -> bool:
    """Whether the grant holds concrete devices (Host grants always do)."""
    placement = grant.spec.placement
    return grant.spec.access == "Host" or (
        placement is not None and (placement.reserve or bool(placement.device_uuids))
    )


def window(grant: GPUGrant, settings: GrantSettings) -> Window:
    """[start, end): start defaults to creation, end to start + duration (24h by default)."""
    created = grant.metadata.creation_timestamp
    start = grant.spec.start or created
    if start is None:
        raise ValueError("a grant without spec.start needs metadata.creationTimestamp")
    if grant.spec.expires_at is not None:
        # An expiry before the start is an empty window (the grant is Invalid, see
        # `_outcome`), never a negative one: nothing is held or accounted for it.
        return Window(start, max(start, grant.spec.expires_at))
    length = (
        parse_duration(grant.spec.duration) if grant.spec.duration else settings.default_duration
    )
    return Window(start, start + length)


def equivalents(grant: GPUGrant, total_slices: int = 7) -> Fraction:
    """GPU-equivalents the grant adds: count x (1, or the slice's share of its GPU)."""
    return grant.spec.gpus.count * gpu_equivalents(grant.spec.gpus.mig_profile, total_slices)


def problems(grant: GPUGrant, ctx: GrantContext, span: Window | None = None) -> list[str]:
    """What makes the request impossible under the subject's policy, naming the field."""
    found: list[str] = []
    if span is not None and span.end <= span.start:
        # The schema compares expiresAt with start only when start is set; a start
        # left out is the creation time, which only the operator knows.
        found.append(
            f"spec.expiresAt: {span.end.isoformat()} is not after the grant's start "
            f"{span.start.isoformat()} (its creation time when spec.start is left out)"
        )
    if ctx.account_problem:
        found.append(ctx.account_problem)
    elif ctx.account is None:
        found.append(
            f"metadata.namespace: {grant.metadata.namespace} is not a user account; "
            "request grants in your own account namespace"
        )
    elif grant.spec.subject.name != ctx.account.user:
        found.append(
            f"spec.subject.name: grants in {ctx.account.namespace} are for {ctx.account.user}, "
            f"not {grant.spec.subject.name}"
        )
    gpu = ctx.limits.spec.gpu
    assert gpu is not None
    profile = grant.spec.gpus.mig_profile
    if profile is None and gpu.allow_full_gpus is False:
        found.append(
            "spec.gpus.migProfile: whole GPUs are not allowed by "
            f"{ctx.limits.source_of('gpu.allowFullGPUs')}; ask for MIG slices"
        )
    allowed = gpu.allowed_mig_profiles
    if profile is not None and allowed is not None and profile not in allowed:
        found.append(
            f"spec.gpus.migProfile: {profile} is not allowed by "
            f"{ctx.limits.source_of('gpu.allowedMIGProfiles')} "
            f"(allowed: {', '.join(allowed) or 'none'})"
        )
    if grant.spec.access == "Host" and ctx.account is not None and ctx.account.linux_user is None:
        found.append(
            "spec.access: Host access needs the account's gpu.ds01.io/linux-user annotation; "
            "ask an admin to set it"
        )
    return found


def rate_limited(grant: GPUGrant, ctx: GrantContext) -> str | None:
    """Why the request is beyond the subject's grant requests per day, if it is."""
    rates = ctx.limits.spec.rates
    assert rates is not None and rates.grant_requests_per_day is not None
    limit = parse_count(rates.grant_requests_per_day)
    if limit is None or "RateLimits" in ctx.exempt_from or ctx.request_rank <= limit:
        return None
    return (
        f"this is request {ctx.request_rank} within 24 hours; "
        f"{ctx.limits.source_of('rates.grantRequestsPerDay')} allows {limit} per day"
    )


def request_rank(grant: GPUGrant, subject_grants: Sequence[GPUGrant]) -> int:
    """1-based position of ``grant`` among its subject's requests in the 24h up to its creation."""
    created = grant.metadata.creation_timestamp
    if created is None:
        return 1
    earlier = [
        g
        for g in subject_grants
        if g.metadata.creation_timestamp is not None
        and created - RATE_WINDOW < g.metadata.creation_timestamp <= created
        and (g.metadata.creation_timestamp, key(g)) <= (created, key(grant))
    ]
    return max(1, len(earlier))


def approval_blockers(grant: GPUGrant, span: Window, limits: EffectiveLimits) -> list[str]:
    """Why the operator may not approve on its own (empty: it may)."""
    grants = limits.spec.grants
    assert grants is not None
    blockers: list[str] = []
    if grants.approval != "Auto":
        blockers.append(
            f"{limits.source_of('grants.approval')} requires an approver for every grant"
        )
    longest = parse_duration_limit(grants.max_duration or "Unlimited")
    if longest is not None and span.end - span.start > longest:
        blockers.append(
            f"the window ({span.end - span.start}) is longer than grants.maxDuration "
            f"{grants.max_duration} of {limits.source_of('grants.maxDuration')}"
        )
    most = parse_gpu_equivalents(grants.max_gpu_equivalents or "Unlimited")
    if most is not None and equivalents(grant) > most:
        blockers.append(
            f"{format_gpu_equivalents(equivalents(grant))} GPU-equivalents is more than "
            f"grants.maxGPUEquivalents {grants.max_gpu_equivalents} of "
            f"{limits.source_of('grants.maxGPUEquivalents')}"
        )
    return blockers


@dataclass
class _Outcome:
    state: GrantState
    approved: Want
    scheduled: Want
    active: Want
    approve: GrantApproval | None = None

    def message(self, revocation: str) -> str:
        """The one sentence that explains this state to a person."""
        if self.state in ("Pending", "Denied", "Invalid"):
            return self.approved.message
        if self.state == "Approved":
            return self.scheduled.message
        if self.state == "Revoked":
            return revocation
        return self.active.message


def _outcome(
    grant: GPUGrant,
    ctx: GrantContext,
    span: Window,
    now: datetime,
    *,
    revoked_at: datetime | None,
    settings: GrantSettings,
) -> _Outcome:
    spec = grant.spec
    decision = spec.approval.decision if spec.approval else None
    approve: GrantApproval | None = None
    # An empty window is judged too (and found Invalid) rather than left to expire.
    if decision is None and revoked_at is None and (now < span.end or span.end <= span.start):
        found = problems(grant, ctx, span)
        if found:
            why = "; ".join(found)
            return _Outcome(
                "Invalid",
                Want("Approved", False, "NotAllowed", why),
                Want("Scheduled", False, "NotApproved", "not approved"),
                Want("Active", False, "NotApproved", "not approved"),
            )
        limited = rate_limited(grant, ctx)
        if limited:
            return _Outcome(
                "Denied",
                Want("Approved", False, "RateLimited", limited),
                Want("Scheduled", False, "NotApproved", "not approved"),
                Want("Active", False, "NotApproved", "not approved"),
            )
        blockers = approval_blockers(grant, span, ctx.limits)
        if blockers:
            why = "waiting for an approver: " + "; ".join(blockers)
            return _Outcome(
                "Pending",
                Want("Approved", False, "PendingApproval", why),
                Want("Scheduled", False, "NotApproved", "not approved yet"),
                Want("Active", False, "NotApproved", "not approved yet"),
            )
        source = ctx.limits.source_of("grants.approval")
        approve = GrantApproval(decision="Approved", note=f"auto-approved: inside {source}")
        decision = "Approved"
    if decision == "Denied":
        note = spec.approval.note if spec.approval and spec.approval.note else "no reason given"
        by = spec.approval.approved_by if spec.approval else None
        return _Outcome(
            "Denied",
            Want("Approved", False, "Denied", f"denied by {by}: {note}"),
            Want("Scheduled", False, "NotApproved", "denied"),
            Want("Active", False, "NotApproved", "denied"),
        )
    if decision is None:
        state: GrantState = "Revoked" if revoked_at is not None else "Expired"
        reason = "Withdrawn" if revoked_at is not None else "NeverApproved"
        return _Outcome(
            state,
            Want("Approved", False, reason, "ended before anyone approved it"),
            Want("Scheduled", False, "NotApproved", "not approved"),
            Want("Active", False, reason, "not approved"),
        )
    record = approve or spec.approval
    assert record is not None
    by = record.approved_by or settings.operator_user
    approved = Want(
        "Approved",
        True,
        "Approved",
        f"approved by {by}" + (f": {record.note}" if record.note else ""),
    )
    if revoked_at is not None and revoked_at < span.end:
        return _Outcome(
            "Revoked",
            approved,
            Want("Scheduled", False, "Revoked", "revoked"),
            Want("Active", False, "Revoked", "revoked"),
            approve,
        )
    if now >= span.end:
        return _Outcome(
            "Expired",
            approved,
            Want("Scheduled", False, "Expired", "expired"),
            Want("Active", False, "Expired", f"expired at {span.end.isoformat()}"),
            approve,
        )
    if reserves(grant):
        allocation = ctx.allocation
        if not isinstance(allocation, Allocation):
            why = allocation.message if isinstance(allocation, Refusal) else "not placed yet"
            reason = allocation.reason if isinstance(allocation, Refusal) else "Waiting"
            return _Outcome(
                "Approved",
                approved,
                Want("Scheduled", False, reason, why),
                Want("Active", False, reason, why),
                approve,
            )
        devices = ", ".join(allocation.uuids)
        scheduled = Want(
            "Scheduled",
            True,
            "Reserved",
            f"holds {devices} on {allocation.node} ({allocation.closeness})",
        )
    else:
        scheduled = Want(
            "Scheduled", True, "Allowance", "adds to the subject's allowance; no devices held"
        )
    if now < span.start:
        return _Outcome(
            "Scheduled",
            approved,
            scheduled,
            Want("Active", False, "NotStarted", f"starts at {span.start.isoformat()}"),
            approve,
        )
    return _Outcome(
        "Active",
        approved,
        scheduled,
        Want("Active", True, "InWindow", f"active until {span.end.isoformat()}"),
        approve,
    )


_READY = {"Active", "Scheduled", "Expired", "Revoked"}
_EVENT = {
    "Pending": ("Normal", "PendingApproval"),
    "Approved": ("Warning", "WaitingForDevices"),
    "Scheduled": ("Normal", "Scheduled"),
    "Active": ("Normal", "Activated"),
    "Expired": ("Normal", "Expired"),
    "Revoked": ("Warning", "Revoked"),
    "Denied": ("Warning", "Denied"),
    "Invalid": ("Warning", "NotAllowed"),
}


def decide(
    grant: GPUGrant, ctx: GrantContext, now: datetime, settings: GrantSettings = GrantSettings()
) -> GrantDecision:
    """The grant's status from its spec, context and the time; with Events and audit records."""
    old = grant.status or GPUGrantStatus()
    span = window(grant, settings)
    revoking = grant.spec.revocation is not None or grant.metadata.deletion_timestamp is not None
    revoked_at = (old.revoked_at or now) if revoking else None
    outcome = _outcome(grant, ctx, span, now, revoked_at=revoked_at, settings=settings)
    ended = outcome.state in ("Expired", "Revoked")
    revoked = Want(
        "Revoked",
        outcome.state == "Revoked",
        "Deleted" if grant.metadata.deletion_timestamp else "Revoked",
        (grant.spec.revocation.reason if grant.spec.revocation else "grant deleted")
        if outcome.state == "Revoked"
        else "not revoked",
    )
    expired = Want(
        "Expired",
        outcome.state == "Expired",
        "Expired" if outcome.state == "Expired" else "InWindow",
        f"ends at {span.end.isoformat()}",
    )
    message = outcome.message(revoked.message)
    ready = Want("Ready", outcome.state in _READY, outcome.state, message)
    warned = bool(old.expiry_warned)
    events: list[EventRecord] = []
    about = ObjectRef("GPUGrant", grant.metadata.name, grant.metadata.namespace, grant.metadata.uid)
    user = grant.spec.subject.name
    details = {
        "grant": key(grant),
        "gpus": grant.spec.gpus.count,
        "migProfile": grant.spec.gpus.mig_profile,
        "access": grant.spec.access,
        "start": span.start.isoformat(),
        "end": span.end.isoformat(),
    }
    audit: list[AuditRecord] = []
    if old.state is None:
        audit.append(
            AuditRecord(
                "grant.requested",
                user,
                {**details, "requestedBy": grant.spec.requested_by, "reason": grant.spec.reason},
            )
        )
    if outcome.state != old.state:
        kind, reason = _EVENT[outcome.state]
        events.append(EventRecord(about, reason, message, kind))  # type: ignore[arg-type]
        if outcome.approved.status and (old.state in (None, "Pending") or outcome.approve):
            audit.append(
                AuditRecord(
                    "grant.approved",
                    user,
                    {
                        **details,
                        "approvedBy": "operator"
                        if outcome.approve
                        else (grant.spec.approval.approved_by if grant.spec.approval else None),
                        "auto": outcome.approve is not None,
                    },
                )
            )
        audit.append(
            AuditRecord(
                f"grant.{outcome.state.lower()}",
                user,
                {
                    **details,
                    "reason": outcome.approved.reason
                    if not outcome.approved.status
                    else outcome.active.reason,
                    "message": message,
                },
            )
        )
    warn_at = span.end - settings.expiry_warning
    if outcome.state == "Active" and not warned and now >= warn_at:
        warned = True
        left = span.end - now
        events.append(
            EventRecord(
                about,
                "ExpiringSoon",
                f"grant ends at {span.end.isoformat()} (in {int(left.total_seconds() // 60)} min); "
                "GPU use that depends on it will be ended after the grace period",
                "Warning",
            )
        )
        audit.append(AuditRecord("grant.expiry_warning", user, details))
    allocations = None
    if isinstance(ctx.allocation, Allocation) and not ended and outcome.approved.status:
        allocations = [
            NodeAllocation(
                node=ctx.allocation.node,
                devices=[
                    DeviceAllocation(uuid=s.uuid, index=s.gpu_index, mig_profile=s.mig_profile)
                    for s in ctx.allocation.slots
                ],
            )
        ]
    elif old.allocations and ended:
        allocations = old.allocations  # the record of what was held
    status = GPUGrantStatus(
        observed_generation=grant.metadata.generation,
        conditions=merge(
            old.conditions,
            [outcome.approved, outcome.scheduled, outcome.active, expired, revoked, ready],
            now,
            grant.metadata.generation,
        ),
        state=outcome.state,
        gpu_equivalents=format_gpu_equivalents(equivalents(grant)),
        window=GrantWindow(start=span.start, end=span.end),
        allocations=allocations,
        usage=old.usage,
        expiry_warned=warned or None,
        revoked_at=revoked_at,
    )
    wake = [t for t in (span.start, warn_at if not warned else None, span.end) if t and t > now]
    return GrantDecision(
        status, outcome.approve, tuple(events), tuple(audit), min(wake) if wake else None
    )
