"""Grace is for rights that ended; use that was never granted ends at once.

And what a container may open at creation (the runtime wrapper's question) is the
same entitlement the agent's passes enforce afterwards.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.api.node import GPUNodeSpec
from controller.policy.enforcement import (
    Holder,
    Place,
    PlaceKind,
    SlotDevices,
    creation_numbers,
    decide,
    ever_granted,
)

NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)
GRACE = timedelta(minutes=5)
G0, G1 = "GPU-00000000-0000-4000-8000-000000000000", "GPU-11111111-1111-4111-8111-111111111111"
SLOTS = [SlotDevices(G0, G0, frozenset({(195, 0)})), SlotDevices(G1, G1, frozenset({(195, 1)}))]
CONTROL = frozenset({(195, 255), (511, 0)})
SOURCE = {"kind": "GPUGrant", "name": "g", "namespace": "u-amy"}
AMY = "amy@lab.example"


def spec(**fields: Any) -> GPUNodeSpec:
    return GPUNodeSpec.model_validate({"enforcement": "Enforce", **fields})


def at(minutes: float) -> str:
    return (NOW + timedelta(minutes=minutes)).isoformat()


def holder(kind: PlaceKind, owner: str | None, allocated: frozenset[str] = frozenset()) -> Holder:
    place = Place(path=f"/{kind}", kind=kind, owner=owner, allocated=allocated, uid=1000)
    return Holder(pid=42, start_ticks=7, number=(195, 0), place=place, owner=owner)


def ends(
    node: GPUNodeSpec, held: Holder, was_entitled: frozenset[tuple[int, int, Any]] = frozenset()
) -> list[Any]:
    first_seen = {(held.pid, held.start_ticks, held.number): NOW - timedelta(minutes=1)}
    return decide(
        spec=node,
        mode=node.enforcement,
        slots=SLOTS,
        places=[held.place] if held.place.kind != "other" else [],
        holders=[held],
        first_seen=first_seen,
        grace=GRACE,
        now=NOW,
        was_entitled=was_entitled,
    ).ends


def test_a_container_never_allocated_the_gpu_is_ended_now() -> None:
    (end,) = ends(spec(), holder("container", None))
    assert end.never_granted and end.at == NOW and "never granted" in end.reason


def test_an_escaped_process_of_a_user_without_host_access_is_ended_now() -> None:
    (end,) = ends(spec(), holder("other", AMY))
    assert end.never_granted and end.at == NOW


def test_an_expired_host_entry_gets_the_grace_from_when_it_was_first_seen() -> None:
    expired = spec(
        hostAccess=[{"user": AMY, "linuxUser": "amy", "until": at(-2), "source": SOURCE}]
    )
    (end,) = ends(expired, holder("session", AMY))
    assert not end.never_granted and end.at == NOW - timedelta(minutes=1) + GRACE


def test_an_escaped_process_of_a_user_with_host_access_keeps_the_grace() -> None:
    active = spec(hostAccess=[{"user": AMY, "linuxUser": "amy", "until": at(60), "source": SOURCE}])
    (end,) = ends(active, holder("other", AMY))
    assert not end.never_granted and end.at > NOW


def test_a_revocation_sets_its_own_deadline() -> None:
    revoked = spec(
        revocations=[
            {
                "user": AMY,
                "deviceUUIDs": [G0],
                "reason": "grant expired",
                "effectiveAt": at(3),
                "until": at(60),
                "source": SOURCE,
            }
        ]
    )
    (end,) = ends(revoked, holder("container", AMY, frozenset({G0})))
    assert not end.never_granted and end.at == NOW + timedelta(minutes=3)
    assert end.reason == "grant expired"


def test_a_reservation_that_ended_gets_the_grace_one_not_yet_begun_does_not() -> None:
    ended = spec(
        reservations=[
            {"deviceUUID": G0, "user": AMY, "from": at(-60), "until": at(-1), "source": SOURCE}
        ]
    )
    (end,) = ends(ended, holder("container", AMY))
    assert not end.never_granted
    future = spec(
        reservations=[
            {"deviceUUID": G0, "user": AMY, "from": at(30), "until": at(90), "source": SOURCE}
        ]
    )
    (end,) = ends(future, holder("container", AMY))
    assert end.never_granted and end.at == NOW


def test_a_holder_seen_entitled_before_keeps_the_grace_without_spec_evidence() -> None:
    """An exemption the operator already dropped from the spec: the agent remembers."""
    held = holder("session", AMY)
    (end,) = ends(spec(), held, frozenset({(held.pid, held.start_ticks, held.number)}))
    assert not end.never_granted and end.at > NOW


def test_entitled_holders_are_reported_in_every_mode() -> None:
    held = holder("container", AMY, frozenset({G0}))
    for mode in ("Enforce", "Audit"):
        decision = decide(
            spec=spec(enforcement=mode),
            mode=mode,
            slots=SLOTS,
            places=[held.place],
            holders=[held],
            first_seen={},
            grace=GRACE,
            now=NOW,
        )
        assert decision.entitled_holders == {(42, 7, (195, 0))} and not decision.ends


def test_creation_opens_the_entitled_gpus_and_the_driver_only_with_them() -> None:
    def numbers(node: GPUNodeSpec, allocated: frozenset[str]) -> frozenset[Any] | None:
        place = Place(path="", kind="container", owner=AMY, allocated=allocated)
        return creation_numbers(
            place, spec=node, mode=node.enforcement, slots=SLOTS, control=CONTROL, now=NOW
        )

    assert numbers(spec(), frozenset({G1})) == {(195, 1)} | CONTROL
    assert numbers(spec(), frozenset()) == frozenset()  # no GPU: not even nvidiactl
    assert numbers(spec(enforcement="Audit"), frozenset()) is None  # Audit closes nothing
    reserved = spec(
        reservations=[{"deviceUUID": G0, "user": AMY, "until": at(60), "source": SOURCE}]
    )
    assert numbers(reserved, frozenset()) == {(195, 0)} | CONTROL
    revoked = spec(
        revocations=[
            {
                "user": AMY,
                "reason": "revoked",
                "effectiveAt": at(-1),
                "until": at(60),
                "source": SOURCE,
            }
        ]
    )
    assert numbers(revoked, frozenset({G1})) == frozenset()


KINDS: list[PlaceKind] = ["container", "pod", "session", "other"]


@st.composite
def situations(draw: st.DrawFn) -> tuple[GPUNodeSpec, Holder, bool]:
    owner = draw(st.sampled_from([AMY, "ben@lab.example", None]))
    kind = draw(st.sampled_from(KINDS))
    allocated = frozenset(draw(st.sets(st.sampled_from([G0, G1]))))
    minutes = st.integers(-120, 120)
    host = [
        {
            "user": draw(st.sampled_from([AMY, "ben@lab.example"])),
            "linuxUser": "someone",
            "deviceUUIDs": draw(
                st.one_of(st.none(), st.lists(st.sampled_from([G0, G1]), min_size=1, unique=True))
            ),
            "until": at(draw(minutes)),
            "source": SOURCE,
        }
        for _ in range(draw(st.integers(0, 2)))
    ]
    reservations = [
        {
            "deviceUUID": draw(st.sampled_from([G0, G1])),
            "user": draw(st.sampled_from([AMY, "ben@lab.example"])),
            "from": at(start := draw(minutes)),
            "until": at(start + draw(st.integers(1, 120))),
            "source": SOURCE,
        }
        for _ in range(draw(st.integers(0, 2)))
    ]
    node = spec(hostAccess=host or None, reservations=reservations or None)
    place = Place(path="/p", kind=kind, owner=owner, allocated=allocated, uid=1000)
    return node, Holder(42, 7, (195, 0), place, owner), draw(st.booleans())


@settings(max_examples=300, deadline=None)
@given(situations())
def test_only_use_with_no_right_ever_is_ended_without_grace(
    situation: tuple[GPUNodeSpec, Holder, bool],
) -> None:
    node, held, remembered = situation
    key = (held.pid, held.start_ticks, held.number)
    found = ends(node, held, frozenset({key}) if remembered else frozenset())
    place = held.place
    if place.kind in ("container", "pod"):
        spec_says = G0 in place.allocated or any(
            r.user == held.owner and r.device_uuid == G0 and r.from_ is not None and r.from_ <= NOW
            for r in node.reservations or ()
        )
    else:
        spec_says = any(
            h.user == held.owner and (h.device_uuids is None or G0 in h.device_uuids)
            for h in node.host_access or ()
        )
    assert ever_granted(held, node, SLOTS, NOW) == spec_says
    granted = remembered or spec_says
    for end in found:
        assert end.never_granted == (not granted)
        if end.never_granted:
            assert end.at == NOW
        else:
            assert end.at == NOW - timedelta(minutes=1) + GRACE
    if held.owner is None and held.place.kind in ("session", "other") and not remembered:
        assert all(end.never_granted for end in found)  # nobody's use was never anybody's grant
