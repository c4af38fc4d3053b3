"""A node's spec from grants and exemptions (`policy/nodes.py`), and exemptions' own lifecycle
(`policy/exemptions.py`). Pure."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from controller.api.kinds import GPUExemption
from controller.api.node import ObjectReference
from controller.policy.allocation import Window
from controller.policy.exemptions import decide, exempt_from, in_force, state_at
from controller.policy.nodes import (
    ENFORCEMENT_LABEL,
    REVOCATION_RETENTION,
    HostExemption,
    NodeEffect,
    enforcement,
    next_change,
    node_spec,
)
from tests.unit.fixtures import T0

GPU = "GPU-00000000-0000-0000-0000-000000000000"


def at(minutes: float):  # type: ignore[no-untyped-def]
    return T0 + timedelta(minutes=minutes)


def effect(name: str, *, start: float = 0, end: float = 60, **extra: object) -> NodeEffect:
    base: dict[str, object] = {
        "source": ObjectReference(kind="GPUGrant", name=name, namespace="u-alice"),
        "user": "alice@lab.example",
        "linux_user": "alice",
        "node": "gpu-node-1",
        "devices": (GPU,),
        "window": Window(at(start), at(end)),
        "host": False,
        "live": True,
        "ended_at": None,
    }
    base.update(extra)
    return NodeEffect(**base)  # type: ignore[arg-type]


def spec(effects: list[NodeEffect], now: float, **extra: object):  # type: ignore[no-untyped-def]
    return node_spec(
        "gpu-node-1",
        labels={},
        effects=effects,
        exemptions=[],
        current=extra.pop("current", None),  # type: ignore[arg-type]
        now=at(now),
        default_mode="Enforce",
        **extra,  # type: ignore[arg-type]
    )


def test_the_mode_label_wins_only_when_it_names_a_mode() -> None:
    assert enforcement({ENFORCEMENT_LABEL: "Audit"}, "Enforce") == "Audit"
    assert (
        enforcement({ENFORCEMENT_LABEL: "audit"}, "Enforce") == "Enforce"
    )  # a typo weakens nothing
    assert enforcement({}, "Off") == "Off"


def test_a_live_grant_reserves_its_devices_for_its_window_and_host_access_only_while_active() -> (
    None
):
    host = effect("h", host=True, start=10, end=60)
    early = spec([host], now=5)
    assert [(r.device_uuid, r.from_, r.until) for r in early.reservations or []] == [
        (GPU, at(10), at(60))
    ]
    assert early.host_access is None  # not yet begun
    during = spec([host], now=20)
    assert [(h.linux_user, h.until) for h in during.host_access or []] == [("alice", at(60))]


def test_an_ended_grant_leaves_a_revocation_that_takes_effect_after_its_grace_and_is_dropped_later() -> (
    None
):
    ended = effect(
        "g", live=False, ended_at=at(30), end_reason="revoked", grace=timedelta(minutes=5)
    )
    first = spec([ended], now=31)
    (revocation,) = first.revocations or []
    assert revocation.effective_at == at(35) and revocation.until == at(35) + REVOCATION_RETENTION
    assert first.reservations is None
    kept = spec([], now=40, current=first)  # the grant object is gone: the entry stays
    assert kept.revocations == first.revocations
    gone = spec([], now=35 + REVOCATION_RETENTION.total_seconds() / 60 + 1, current=first)
    assert gone.revocations is None


def test_a_grant_that_failed_this_pass_keeps_what_it_had() -> None:
    before = spec([effect("g", host=True)], now=10)
    after = spec([], now=11, current=before, frozen={("u-alice", "g")})
    assert after.reservations == before.reservations and after.host_access == before.host_access


def test_a_host_exemption_opens_the_node_until_it_ends() -> None:
    exemption = HostExemption(
        ObjectReference(kind="GPUExemption", name="x"), "bob@lab.example", "bob", at(90)
    )
    made = node_spec(
        "gpu-node-1",
        labels={},
        effects=[],
        exemptions=[exemption],
        current=None,
        now=at(0),
        default_mode="Enforce",
    )
    (entry,) = made.host_access or []
    assert entry.device_uuids is None and entry.until == at(90)


@given(st.lists(st.tuples(st.floats(1, 500), st.floats(1, 500)), min_size=1, max_size=5))
def test_next_change_is_the_earliest_future_expiry(windows: list[tuple[float, float]]) -> None:
    effects = [effect(f"g{i}", start=0, end=s + e) for i, (s, e) in enumerate(windows)]
    made = spec(effects, now=0.5)
    ends = [at(s + e) for s, e in windows]
    assert next_change(made, at(0.5)) == min(ends)
    assert next_change(made, max(ends)) is None


def exemption(**spec: object) -> GPUExemption:
    return GPUExemption.model_validate(
        {
            "metadata": {"name": "x"},
            "spec": {
                "subject": {"kind": "Group", "name": "student"},
                "exemptFrom": ["IdleTimeout", "MaxRuntime"],
                "category": "Waiver",
                "reason": "paper deadline",
                **spec,
            },
        }
    )


def test_an_exemption_is_pending_active_then_expired_with_one_record_per_change() -> None:
    timed = exemption(startsAt=at(10).isoformat(), expiresAt=at(20).isoformat())
    assert [state_at(timed, at(m)) for m in (0, 10, 19, 20)] == [
        "Pending",
        "Active",
        "Active",
        "Expired",
    ]
    first = decide(timed, at(0))
    assert first.state == "Pending" and first.wake_at == at(10)
    assert [a.event_type for a in first.audit] == ["exemption.pending"]
    stored = timed.model_copy(update={"status": first.status})
    again = decide(stored, at(5))
    assert again.audit == () and again.events == ()  # no change, no record
    active = decide(stored, at(10))
    assert active.state == "Active" and active.wake_at == at(20)


def test_exemptions_apply_to_their_subject_on_their_nodes_while_active() -> None:
    group = exemption(expiresAt=at(60).isoformat(), nodes=["gpu-node-1"])
    assert in_force([group], "alice", ["student"], at(1), node="gpu-node-1") == [group]
    assert in_force([group], "alice", ["student"], at(1), node="gpu-node-2") == []
    assert in_force([group], "alice", ["researcher"], at(1)) == []
    assert in_force([group], "alice", ["student"], at(61)) == []
    assert exempt_from([group]) == frozenset({"IdleTimeout", "MaxRuntime"})
