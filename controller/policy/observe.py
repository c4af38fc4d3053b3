"""What the operator's metrics say about one planning pass, computed without I/O.

The dashboard and the alert rules (`controller/monitoring`) need figures the
plan already holds or the watched objects already carry: per node, the agent's
heartbeat, the enforcement mode in force, device health, violations and
revocations whose holders are still reported; per account, the allowance, the
budget and over-use; per group, GPU-equivalents granted and in use; the
pending requests and since when; and the grants that were denied or revoked in
this pass, by reason. `observe` gathers them; `controller.operator.metrics`
only copies them into gauges and counters, so what each series means is
decided and tested here.

Label values are bounded by the objects (node names, account users, groups,
pending grants) or by a fixed set of reasons, never by free text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction

from controller.api.accountpolicy import AccountPolicy
from controller.api.grant import GPUGrantStatus
from controller.api.kinds import GPUGrant, GPUNode
from controller.api.node import GPUNodeSpec, GPUNodeStatus, Revocation
from controller.policy import grants as grant_policy
from controller.policy.conditions import find
from controller.policy.plan import Plan
from controller.policy.units import UNLIMITED

ENFORCEMENT_MODES = ("Enforce", "Audit", "Off")
VIOLATION_KINDS = ("Unattributed", "Unentitled", "OutsideAllocation")
DENIAL_REASONS = ("Denied", "RateLimited", "NotAllowed", "Invalid", "Error")
"""Why a request was refused: an approver (`Denied`), `rates.grantRequestsPerDay`
(`RateLimited`), the policy (`NotAllowed`), or it could not be judged (`Invalid`,
`Error`: set aside, `controller.policy.isolation`)."""
REVOCATION_REASONS = ("Revoked", "Deleted")
"""How an approved grant was ended early: `spec.revocation` set, or the grant deleted."""


@dataclass(frozen=True)
class NodeFacts:
    """One GPUNode as its agent last reported it, against the spec it was given."""

    node: str
    heartbeat: float | None
    """Unix time of the agent's last status write; None before its first."""
    desired: str
    """The enforcement mode the operator's spec asks for."""
    in_force: str | None
    """The mode the agent reports in force (`Audit` until it has a policy); None unreported."""
    gpus: int
    healthy_devices: int
    unhealthy_gpus: int
    violations: Mapping[str, int]
    agent_ready: bool
    spec_generation: int
    applied_generation: int | None
    unfinished_revocations: int
    """Hard revocations past their `effectiveAt` whose user's workloads the agent still
    reports on the revoked devices, in Enforce mode (see `unfinished_revocations`)."""


@dataclass(frozen=True)
class AccountFacts:
    """One account's published policy, as figures."""

    namespace: str
    subject: str
    groups: tuple[str, ...]
    allowance: float | None
    """GPU-equivalents the user may hold at once; None when unlimited."""
    budget: float | None
    """GPU-equivalent-hours per window; None when unlimited."""
    budget_used: float
    """Used inside the window, brought forward from `asOf` to now at the stored rate."""
    budget_exhausted: bool
    over_use: bool


@dataclass(frozen=True)
class PendingRequest:
    namespace: str
    name: str
    subject: str
    since: float
    """Unix time the request was created."""


@dataclass
class Observations:
    nodes: list[NodeFacts] = field(default_factory=list)
    accounts: list[AccountFacts] = field(default_factory=list)
    pending: list[PendingRequest] = field(default_factory=list)
    group_granted: dict[str, float] = field(default_factory=dict)
    group_in_use: dict[str, float] = field(default_factory=dict)
    denials: Counter[str] = field(default_factory=Counter)
    revocations: Counter[str] = field(default_factory=Counter)
    counted: dict[str, str] = field(default_factory=dict)
    """Grants counted in `denials` or `revocations` by this pass, with their new state."""


def _covers(revocation: Revocation, device: str, parent: Mapping[str, str]) -> bool:
    listed = revocation.device_uuids
    return listed is None or device in listed or parent.get(device) in listed


def unfinished_revocations(spec: GPUNodeSpec | None, status: GPUNodeStatus | None) -> int:
    """Revocation x workload pairs the agent's last report shows still running.

    Judged at the report's own heartbeat, not now: a revocation that took
    effect after the agent last wrote is not yet the agent's failure. Soft
    revocations warn only and nodes outside Enforce end nothing, so neither
    counts. An alert on this (held for a few minutes, past the agent's kill
    grace) means a holder survived the end of its right.
    """
    if spec is None or status is None or status.agent is None or status.enforcement != "Enforce":
        return 0
    at = status.agent.heartbeat_time
    parent = {mig.uuid: gpu.uuid for gpu in status.devices or () for mig in gpu.mig_instances or ()}
    found = 0
    for revocation in spec.revocations or ():
        if revocation.soft or revocation.effective_at > at or revocation.until <= at:
            continue
        for workload in status.workloads or ():
            if workload.owner == revocation.user and any(
                _covers(revocation, d, parent) for d in workload.devices
            ):
                found += 1
    return found


def node_facts(node: GPUNode, desired: GPUNodeSpec | None) -> NodeFacts:
    status = node.status
    spec = desired or node.spec or GPUNodeSpec()
    devices = (status.devices if status else None) or ()
    violations: Counter[str] = Counter(
        v.kind for v in (status.violations if status else None) or ()
    )
    ready = find(status.conditions if status else None, "AgentReady")
    return NodeFacts(
        node=node.metadata.name,
        heartbeat=status.agent.heartbeat_time.timestamp() if status and status.agent else None,
        desired=spec.enforcement,
        in_force=status.enforcement if status else None,
        gpus=(status.gpus or 0) if status else 0,
        healthy_devices=(status.healthy_devices or 0) if status else 0,
        unhealthy_gpus=sum(1 for d in devices if d.health != "Healthy"),
        violations={kind: violations.get(kind, 0) for kind in VIOLATION_KINDS},
        agent_ready=ready is not None and ready.status == "True",
        spec_generation=node.metadata.generation or 0,
        applied_generation=status.applied_generation if status else None,
        # The stored spec is what the agent was judged against.
        unfinished_revocations=unfinished_revocations(node.spec, status),
    )


def _amount(text: str) -> float | None:
    return None if text == UNLIMITED else float(Fraction(text))


def account_facts(namespace: str, document: AccountPolicy, now: datetime) -> AccountFacts:
    budget = document.budget
    used = budget.used_gpu_hours
    if budget.as_of is not None and now > budget.as_of:
        used += budget.rate * (now - budget.as_of).total_seconds() / 3600
    over = find(document.conditions, "OverUse")
    return AccountFacts(
        namespace=namespace,
        subject=document.user,
        groups=tuple(document.groups),
        allowance=_amount(document.allowance.total),
        budget=_amount(budget.gpu_hours),
        budget_used=used,
        budget_exhausted=budget.exhausted,
        over_use=over is not None and over.status == "True",
    )


def _refusal_reason(status: GPUGrantStatus) -> str:
    approved = find(status.conditions, "Approved")
    if approved is not None and approved.status == "False" and approved.reason in DENIAL_REASONS:
        return approved.reason
    ready = find(status.conditions, "Ready")
    return ready.reason if ready is not None and ready.reason in DENIAL_REASONS else "Invalid"


def ended(
    grants: Sequence[GPUGrant],
    decided: Mapping[str, GPUGrantStatus],
    failed: Set[str],
    counted: Mapping[str, str],
) -> tuple[Counter[str], Counter[str], dict[str, str]]:
    """(denials, revocations) by reason, and the grants counted now (key -> state).

    A grant counts once, in the pass that changes its stored state to `Denied`,
    `Invalid` or `Revoked`. ``counted`` (what earlier passes counted) keeps a pass
    that runs before the watch has echoed the last write from counting it again; a
    grant whose write failed (``failed``) counts on the pass that stores it. A
    restart forgets ``counted`` but sees the stored state, so it counts nothing
    twice either. A request withdrawn before anyone approved it is not a revocation.
    """
    denials: Counter[str] = Counter()
    revocations: Counter[str] = Counter()
    now_counted: dict[str, str] = {}
    for grant in grants:
        k = grant_policy.key(grant)
        new = decided.get(k)
        old = grant.status.state if grant.status else None
        if new is None or new.state in (old, counted.get(k)) or k in failed:
            continue
        if new.state in ("Denied", "Invalid"):
            denials[_refusal_reason(new)] += 1
        elif new.state == "Revoked":
            approved = find(new.conditions, "Approved")
            revoked = find(new.conditions, "Revoked")
            if approved is None or approved.status != "True" or revoked is None:
                continue
            revocations[revoked.reason if revoked.reason in REVOCATION_REASONS else "Revoked"] += 1
        else:
            continue
        now_counted[k] = new.state or ""
    return denials, revocations, now_counted


def observe(
    grants: Sequence[GPUGrant],
    nodes: Sequence[GPUNode],
    decided: Plan,
    now: datetime,
    *,
    failed: Set[str] = frozenset(),
    counted: Mapping[str, str] | None = None,
) -> Observations:
    """Everything the operator's metrics report after the pass that made ``decided``."""
    out = Observations()
    out.nodes = [node_facts(n, decided.node_specs.get(n.metadata.name)) for n in nodes]
    for namespace, account in sorted(decided.accounts.items()):
        if account.document is not None:
            out.accounts.append(account_facts(namespace, account.document, now))
    groups = {a.subject: a.groups for a in out.accounts}
    for subjects, into in (
        (decided.granted, out.group_granted),
        (decided.in_use, out.group_in_use),
    ):
        for subject, amount in subjects.items():
            for group in groups.get(subject, ()):
                into[group] = into.get(group, 0.0) + float(amount)
    for grant in grants:
        status = decided.grant_status.get(grant_policy.key(grant))
        created = grant.metadata.creation_timestamp
        if status is not None and status.state == "Pending" and created is not None:
            out.pending.append(
                PendingRequest(
                    grant.metadata.namespace or "",
                    grant.metadata.name,
                    grant.spec.subject.name,
                    created.timestamp(),
                )
            )
    out.denials, out.revocations, out.counted = ended(
        grants, decided.grant_status, failed, counted or {}
    )
    return out
