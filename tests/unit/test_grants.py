"""Grant decisions, computed from objects and time only."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from controller.api.account import Account
from controller.api.kinds import GPUGrant
from controller.policy.allocation import Allocation, Refusal, inventory
from controller.policy.effective import NamedLimit, effective_limits
from controller.policy.grants import GrantContext, GrantSettings, decide, request_rank, window
from tests.unit.fixtures import T0, a100_node, grant, later
from tests.unit.test_effective import limit

ALICE = Account(
    namespace="u-alice", user="alice@lab.example", groups=("student",), linux_user="alice"
)
AUTO = limit(
    "auto",
    [("Group", "student")],
    10,
    grants={"approval": "Auto", "maxDuration": "24h", "maxGPUEquivalents": 2},
    gpu={"allowedMIGProfiles": ["1g.10gb", "2g.20gb"]},
    rates={"grantRequestsPerDay": 2},
)
REQUIRED = limit("required", [("Group", "student")], 10, grants={"approval": "Required"})


def context(*limits: NamedLimit, account: Account | None = ALICE, **extra: Any) -> GrantContext:
    return GrantContext(
        account=account,
        account_problem=None,
        limits=effective_limits(ALICE.user, ALICE.groups, list(limits)),
        **extra,
    )


def settle(g: GPUGrant, ctx: GrantContext, now: Any) -> GPUGrant:
    """Apply a decision the way the operator would (status and any auto-approval)."""
    decision = decide(g, ctx, now)
    spec = g.spec.model_copy(update={"approval": decision.approve}) if decision.approve else g.spec
    return g.model_copy(update={"status": decision.status, "spec": spec})


def test_request_inside_an_auto_policy_is_approved_and_active() -> None:
    decision = decide(grant("g"), context(AUTO), later(1))
    assert decision.approve is not None and decision.approve.decision == "Approved"
    assert "GPURateLimit/auto" in (decision.approve.note or "")
    assert decision.state == "Active"
    assert [e.reason for e in decision.events] == ["Activated"]
    assert {a.event_type for a in decision.audit} == {
        "grant.requested",
        "grant.approved",
        "grant.active",
    }
    assert decision.wake_at == later(60)  # the warning an hour before the end of a 2h grant


def test_required_policy_waits_for_an_approver_and_says_why() -> None:
    decision = decide(grant("g"), context(REQUIRED), later(1))
    assert decision.approve is None and decision.state == "Pending"
    approved = next(c for c in decision.status.conditions or () if c.type == "Approved")
    assert approved.status == "False" and approved.reason == "PendingApproval"
    assert "GPURateLimit/required requires an approver" in approved.message


def test_auto_policy_still_needs_an_approver_beyond_its_bounds() -> None:
    long = decide(grant("g", duration="72h"), context(AUTO), later(1))
    assert long.state == "Pending" and "grants.maxDuration 24h" in long.status.conditions[0].message
    big = decide(grant("g", count=3), context(AUTO), later(1))
    assert (
        big.state == "Pending" and "grants.maxGPUEquivalents 2" in big.status.conditions[0].message
    )


def test_mig_profile_outside_the_policy_is_not_allowed() -> None:
    decision = decide(grant("g", profile="3g.20gb"), context(AUTO), later(1))
    assert decision.state == "Invalid"
    message = decision.status.conditions[0].message
    assert "spec.gpus.migProfile: 3g.20gb is not allowed by GPURateLimit/auto" in message
    assert [e.type for e in decision.events] == ["Warning"]


def test_whole_gpus_refused_where_policy_allows_only_mig() -> None:
    mig_only = limit("mig", [("Group", "student")], 10, gpu={"allowFullGPUs": False})
    decision = decide(grant("g"), context(mig_only), later(1))
    assert (
        decision.state == "Invalid"
        and "whole GPUs are not allowed" in decision.status.conditions[0].message
    )


def test_subject_must_be_the_account_owner() -> None:
    decision = decide(grant("g", user="mallory@lab.example"), context(AUTO), later(1))
    assert decision.state == "Invalid"
    assert (
        "spec.subject.name: grants in u-alice are for alice@lab.example"
        in decision.status.conditions[0].message
    )


def test_requests_beyond_the_daily_rate_are_denied_unless_exempt() -> None:
    grants = [grant(f"g{i}", created=later(i)) for i in range(3)]
    ranks = [request_rank(g, grants) for g in grants]
    assert ranks == [1, 2, 3]
    third = decide(grants[2], context(AUTO, request_rank=3), later(5))
    assert third.state == "Denied" and third.status.conditions[0].reason == "RateLimited"
    assert "request 3 within 24 hours" in third.status.conditions[0].message
    exempt = decide(
        grants[2], context(AUTO, request_rank=3, exempt_from=frozenset({"RateLimits"})), later(5)
    )
    assert exempt.state == "Active"


def test_rank_counts_only_the_previous_24_hours() -> None:
    old = grant("old", created=T0 - timedelta(hours=25))
    new = grant("new", created=T0)
    assert request_rank(new, [old, new]) == 1


def test_lifecycle_scheduled_active_warned_expired() -> None:
    g = grant("g", start=later(10).isoformat(), duration="2h")
    ctx = context(AUTO)
    g = settle(g, ctx, later(1))
    assert g.status is not None and g.status.state == "Scheduled"
    assert decide(g, ctx, later(1)).wake_at == later(10)
    g = settle(g, ctx, later(10))
    assert g.status is not None and g.status.state == "Active"
    warning = decide(g, ctx, later(71))
    assert [e.reason for e in warning.events] == ["ExpiringSoon"]
    g = settle(g, ctx, later(71))
    assert decide(g, ctx, later(72)).events == ()  # warned once
    expired = decide(g, ctx, later(130))
    assert expired.state == "Expired" and [e.reason for e in expired.events] == ["Expired"]
    assert decide(g, ctx, later(130)).wake_at is None


def test_a_grant_that_expired_while_the_operator_was_down_expires_on_return() -> None:
    ctx = context(AUTO)
    g = settle(grant("g", duration="1h"), ctx, later(1))
    back = decide(g, ctx, later(600))
    assert back.state == "Expired"
    assert [a.event_type for a in back.audit] == ["grant.expired"]


def test_decisions_are_idempotent() -> None:
    ctx = context(AUTO)
    g = settle(grant("g"), ctx, later(1))
    again = decide(g, ctx, later(2))
    assert (
        again.status == g.status
        and again.events == ()
        and again.audit == ()
        and again.approve is None
    )


def test_revocation_and_deletion() -> None:
    ctx = context(AUTO)
    g = settle(grant("g"), ctx, later(1))
    body = g.model_dump(by_alias=True, mode="json")
    body["spec"]["revocation"] = {"reason": "misuse"}
    revoked = GPUGrant.model_validate(body)
    decision = decide(revoked, ctx, later(5))
    assert decision.state == "Revoked" and decision.status.revoked_at == later(5)
    assert [e.reason for e in decision.events] == ["Revoked"] and decision.events[
        0
    ].type == "Warning"
    deleting = GPUGrant.model_validate(
        g.model_dump(by_alias=True)
        | {
            "metadata": {
                **g.metadata.model_dump(by_alias=True, mode="json"),
                "deletionTimestamp": later(6).isoformat(),
            }
        }
    )
    assert decide(deleting, ctx, later(6)).state == "Revoked"


def test_denied_by_approver_stays_denied() -> None:
    body = grant("g").model_dump(by_alias=True, mode="json")
    body["spec"]["approval"] = {
        "decision": "Denied",
        "approvedBy": "prof@lab.example",
        "note": "no capacity this week",
    }
    decision = decide(GPUGrant.model_validate(body), context(REQUIRED), later(1))
    assert (
        decision.state == "Denied"
        and "denied by prof@lab.example: no capacity this week"
        in decision.status.conditions[0].message
    )


def test_reserving_grant_waits_for_devices_then_holds_them() -> None:
    g = grant("g", placement={"reserve": True})
    refused = decide(
        g,
        context(AUTO, allocation=Refusal("NoCapacity", "no node has 1 x whole GPU free")),
        later(1),
    )
    assert refused.state == "Approved"
    assert (
        next(c for c in refused.status.conditions or () if c.type == "Active").reason
        == "NoCapacity"
    )
    slot = inventory([a100_node(gpus=1)])["gpu-node-1"][0]
    held = decide(g, context(AUTO, allocation=Allocation("gpu-node-1", (slot,))), later(1))
    assert held.state == "Active"
    assert held.status.allocations and held.status.allocations[0].devices[0].uuid == slot.uuid


@pytest.mark.parametrize(
    ("spec", "end"),
    [
        ({"duration": "90m"}, later(90)),
        ({"duration": None, "expiresAt": later(30).isoformat()}, later(30)),
        ({"duration": None}, later(24 * 60)),
    ],
)
def test_window(spec: dict[str, Any], end: Any) -> None:
    duration = spec.pop("duration", None)
    assert window(grant("g", duration=duration, **spec), GrantSettings()).end == end
