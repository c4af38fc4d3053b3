"""GPUExemption decisions: when an exemption is in force, and for whom.

Expired exemptions stay as records with an `Expired` condition; unknown or
unreadable exemption data means "not exempt" (DS01's rule).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from controller.api.exemption import ExemptionState, GPUExemptionStatus
from controller.api.kinds import GPUExemption
from controller.policy.conditions import Want, merge
from controller.policy.records import AuditRecord, EventRecord, ObjectRef


@dataclass(frozen=True)
class ExemptionDecision:
    status: GPUExemptionStatus
    events: tuple[EventRecord, ...] = ()
    audit: tuple[AuditRecord, ...] = ()
    wake_at: datetime | None = None

    @property
    def state(self) -> ExemptionState:
        assert self.status.state is not None
        return self.status.state


def state_at(exemption: GPUExemption, now: datetime) -> ExemptionState:
    """Pending before `startsAt`, Expired from `expiresAt`, Active in between."""
    spec = exemption.spec
    if spec.starts_at is not None and now < spec.starts_at:
        return "Pending"
    if spec.expires_at is not None and now >= spec.expires_at:
        return "Expired"
    return "Active"


def decide(exemption: GPUExemption, now: datetime) -> ExemptionDecision:
    """The exemption's status, with an Event and audit record on each change of state."""
    old = exemption.status or GPUExemptionStatus()
    spec = exemption.spec
    state = state_at(exemption, now)
    rules = ", ".join(spec.exempt_from)
    who = f"{spec.subject.kind} {spec.subject.name}"
    until = spec.expires_at.isoformat() if spec.expires_at else "permanently"
    messages = {
        "Pending": f"{who} will be exempt from {rules} from {spec.starts_at}",
        "Active": f"{who} is exempt from {rules} until {until} ({spec.category}: {spec.reason})",
        "Expired": f"expired at {until}; kept as a record",
    }
    conditions = merge(
        old.conditions,
        [
            Want("Active", state == "Active", state, messages[state]),
            Want(
                "Expired",
                state == "Expired",
                "Expired" if state == "Expired" else "InForce",
                messages[state],
            ),
            Want("Ready", True, state, messages[state]),
        ],
        now,
        exemption.metadata.generation,
    )
    activated = old.activated_at or (now if state != "Pending" else None)
    status = GPUExemptionStatus(
        observed_generation=exemption.metadata.generation,
        conditions=conditions,
        state=state,
        activated_at=activated,
        expired_at=(old.expired_at or now) if state == "Expired" else None,
    )
    events: list[EventRecord] = []
    audit: list[AuditRecord] = []
    if state != old.state:
        about = ObjectRef("GPUExemption", exemption.metadata.name, None, exemption.metadata.uid)
        events.append(EventRecord(about, f"Exemption{state}", messages[state]))
        details = {
            "exemption": exemption.metadata.name,
            "subject": spec.subject.model_dump(),
            "exemptFrom": list(spec.exempt_from),
            "category": spec.category,
            "reason": spec.reason,
            "expiresAt": spec.expires_at.isoformat() if spec.expires_at else None,
            "approvedBy": spec.approved_by,
        }
        # Recorded once its status write (at the version decided on) succeeded.
        key = f"gpuexemptions/{exemption.metadata.name}"
        audit.append(
            AuditRecord(f"exemption.{state.lower()}", spec.subject.name, details, object_key=key)
        )
    upcoming = [t for t in (spec.starts_at, spec.expires_at) if t is not None and t > now]
    return ExemptionDecision(status, tuple(events), tuple(audit), min(upcoming, default=None))


def in_force(
    exemptions: Iterable[GPUExemption],
    user: str,
    groups: Sequence[str],
    now: datetime,
    node: str | None = None,
) -> list[GPUExemption]:
    """Exemptions that apply to ``user`` right now (on ``node``, when one is given)."""
    found = []
    for exemption in exemptions:
        subject = exemption.spec.subject
        matches = (subject.kind == "User" and subject.name == user) or (
            subject.kind == "Group" and subject.name in groups
        )
        on_node = node is None or not exemption.spec.nodes or node in exemption.spec.nodes
        if matches and on_node and state_at(exemption, now) == "Active":
            found.append(exemption)
    return found


def exempt_from(exemptions: Iterable[GPUExemption]) -> frozenset[str]:
    """The rules a set of exemptions lifts."""
    return frozenset(rule for e in exemptions for rule in e.spec.exempt_from)
