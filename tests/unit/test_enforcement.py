"""Device rules per cgroup: a place opens exactly the GPUs it is entitled to, nothing else.

The grace rules (who is ended, when) are in `test_enforcement_grace.py`; here
are the rules themselves: which device numbers each place is denied, how
host entries, reservations and revocations open and close slots, what Audit
and Off modes write, and MIG slices that share their parent GPU's device node.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.api.node import EnforcementMode, GPUNodeSpec
from controller.policy.enforcement import (
    Holder,
    Number,
    Place,
    PlaceKind,
    SlotDevices,
    allowed_numbers,
    creation_numbers,
    decide,
    entitled,
    host_slots,
    reserved_for,
)

NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)
GRACE = timedelta(minutes=5)
G0 = "GPU-00000000-0000-4000-8000-000000000000"
G1 = "GPU-11111111-1111-4111-8111-111111111111"
G2 = "GPU-22222222-2222-4222-8222-222222222222"
MIG_A = "MIG-aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
MIG_B = "MIG-bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
CAP = 237
"""The nvidia-caps major: each MIG slice has its own capability node."""
SLOTS = [
    SlotDevices(G0, G0, frozenset({(195, 0)})),
    SlotDevices(G1, G1, frozenset({(195, 1)})),
    # G2 is split in two MIG slices: both need the parent's node, each its own cap.
    SlotDevices(MIG_A, G2, frozenset({(195, 2), (CAP, 1)})),
    SlotDevices(MIG_B, G2, frozenset({(195, 2), (CAP, 2)})),
]
ALL_NUMBERS = frozenset(n for s in SLOTS for n in s.numbers)
CONTROL = frozenset({(195, 255), (511, 0)})
SOURCE = {"kind": "GPUGrant", "name": "g", "namespace": "u-amy"}
AMY, BEN = "amy@lab.example", "ben@lab.example"


def spec(**fields: Any) -> GPUNodeSpec:
    return GPUNodeSpec.model_validate({"enforcement": "Enforce", **fields})


def at(minutes: float) -> str:
    return (NOW + timedelta(minutes=minutes)).isoformat()


def revocation(
    user: str = AMY,
    devices: list[str] | None = None,
    effective: float = 3,
    until: float = 60,
    soft: bool = False,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "user": user,
        "reason": "grant ended",
        "effectiveAt": at(effective),
        "until": at(until),
        "soft": soft,
        "source": SOURCE,
    }
    if devices is not None:
        body["deviceUUIDs"] = devices
    return body


def host(user: str = AMY, devices: list[str] | None = None, until: float | None = 60) -> Any:
    body: dict[str, Any] = {"user": user, "linuxUser": "amy", "source": SOURCE}
    if devices is not None:
        body["deviceUUIDs"] = devices
    if until is not None:
        body["until"] = at(until)
    return body


def container(allocated: set[str], owner: str | None = AMY, path: str = "/c") -> Place:
    return Place(path=path, kind="container", owner=owner, allocated=frozenset(allocated))


def session(owner: str | None = AMY, path: str = "/s") -> Place:
    return Place(path=path, kind="session", owner=owner, uid=1000)


def numbers_of(*uuids: str) -> frozenset[Number]:
    return allowed_numbers(SLOTS, frozenset(uuids))


def rules(node: GPUNodeSpec, *places: Place, mode: EnforcementMode = "Enforce") -> Any:
    return decide(
        spec=node,
        mode=mode,
        slots=SLOTS,
        places=places,
        holders=[],
        first_seen={},
        grace=GRACE,
        now=NOW,
    )


# -- rules per place -------------------------------------------------------------------


def test_each_container_is_denied_every_gpu_node_but_its_own() -> None:
    one, two = container({G0}, path="/one"), container({G1, MIG_A}, path="/two")
    deny = rules(spec(), one, two).deny
    assert deny["/one"] == ALL_NUMBERS - {(195, 0)}
    assert deny["/two"] == ALL_NUMBERS - {(195, 1), (195, 2), (CAP, 1)}
    assert (CAP, 2) in deny["/two"]  # the sibling slice's capability stays closed


def test_places_outside_any_gpu_cgroup_get_no_rule() -> None:
    other = Place(path="/system.slice/cron.service", kind="other", owner=AMY)
    decision = rules(spec(hostAccess=[host()]), other)
    assert decision.deny == {} and decision.would_deny == {}


def test_audit_mode_reports_what_it_would_deny_and_writes_nothing() -> None:
    place = container({G0})
    enforced, audited = rules(spec(), place), rules(spec(), place, mode="Audit")
    assert audited.deny == {} and audited.ends == []
    assert audited.would_deny == enforced.deny == {"/c": ALL_NUMBERS - {(195, 0)}}


def test_off_mode_neither_writes_nor_reports_rules() -> None:
    decision = rules(spec(), container(set()), mode="Off")
    assert decision.deny == {} and decision.would_deny == {} and decision.ends == []


def test_allocation_of_a_device_the_node_does_not_have_opens_nothing() -> None:
    ghost = "GPU-99999999-9999-4999-8999-999999999999"
    assert entitled(container({ghost}), spec(), SLOTS, NOW) == frozenset()


# -- host access and reservations ---------------------------------------------------------


def test_host_access_without_a_device_list_covers_every_gpu_until_it_expires() -> None:
    everything = {s.uuid for s in SLOTS}
    assert host_slots(spec(hostAccess=[host()]), AMY, SLOTS, NOW) == everything
    assert host_slots(spec(hostAccess=[host(until=None)]), AMY, SLOTS, NOW) == everything
    assert host_slots(spec(hostAccess=[host(until=0)]), AMY, SLOTS, NOW) == frozenset()
    assert host_slots(spec(hostAccess=[host()]), BEN, SLOTS, NOW) == frozenset()


def test_host_access_to_a_gpu_covers_its_mig_slices() -> None:
    node = spec(hostAccess=[host(devices=[G2])])
    assert host_slots(node, AMY, SLOTS, NOW) == {MIG_A, MIG_B}
    assert entitled(session(), node, SLOTS, NOW) == {MIG_A, MIG_B}


def test_a_session_gets_host_access_a_container_does_not() -> None:
    node = spec(hostAccess=[host(devices=[G0])])
    assert entitled(session(), node, SLOTS, NOW) == {G0}
    assert entitled(container(set()), node, SLOTS, NOW) == frozenset()


def test_a_reservation_opens_its_device_only_inside_its_window() -> None:
    def reservation(start: float | None, end: float) -> Any:
        body = {"deviceUUID": G1, "user": AMY, "until": at(end), "source": SOURCE}
        return body | ({"from": at(start)} if start is not None else {})

    for window, open_now in [
        ((None, 60), True),
        ((-10, 60), True),
        ((0, 60), True),  # from is inclusive
        ((10, 60), False),
        ((-60, 0), False),  # until is exclusive
    ]:
        node = spec(reservations=[reservation(*window)])
        assert (G1 in reserved_for(node, AMY, NOW)) == open_now, window
        assert (G1 in entitled(container(set()), node, SLOTS, NOW)) == open_now, window
    assert reserved_for(spec(reservations=[reservation(None, 60)]), BEN, NOW) == frozenset()


# -- revocations ----------------------------------------------------------------------------


def test_a_hard_revocation_closes_its_slot_at_once_even_during_its_grace() -> None:
    node = spec(revocations=[revocation(devices=[G0], effective=3)])
    assert entitled(container({G0, G1}), node, SLOTS, NOW) == {G1}


def test_a_soft_revocation_closes_its_slot_only_once_it_takes_effect() -> None:
    pending = spec(revocations=[revocation(devices=[G0], effective=3, soft=True)])
    assert entitled(container({G0}), pending, SLOTS, NOW) == {G0}
    effective = spec(revocations=[revocation(devices=[G0], effective=-1, soft=True)])
    assert entitled(container({G0}), effective, SLOTS, NOW) == frozenset()


def test_a_revocation_of_someone_else_or_past_its_until_changes_nothing() -> None:
    for other in (revocation(user=BEN), revocation(effective=-30, until=-1)):
        assert entitled(container({G0, G1}), spec(revocations=[other]), SLOTS, NOW) == {G0, G1}


def test_a_revocation_without_a_device_list_closes_every_slot_of_its_user() -> None:
    node = spec(revocations=[revocation()], hostAccess=[host()])
    assert entitled(container({G0, MIG_A}), node, SLOTS, NOW) == frozenset()
    assert entitled(session(), node, SLOTS, NOW) == frozenset()


def test_a_revocation_of_a_gpu_closes_its_mig_slices() -> None:
    node = spec(revocations=[revocation(devices=[G2])])
    assert entitled(container({MIG_A, MIG_B, G0}), node, SLOTS, NOW) == {G0}


def test_a_revoked_container_cannot_open_the_driver_either() -> None:
    node = spec(revocations=[revocation(devices=[G0])])
    found = creation_numbers(
        container({G0}), spec=node, mode="Enforce", slots=SLOTS, control=CONTROL, now=NOW
    )
    assert found == frozenset()


# -- holders and revocations ----------------------------------------------------------------------


def holding(place: Place, number: Number, pid: int = 42) -> Holder:
    return Holder(pid=pid, start_ticks=7, number=number, place=place, owner=place.owner)


def ends_of(node: GPUNodeSpec, *held: Holder) -> list[Any]:
    return decide(
        spec=node,
        mode="Enforce",
        slots=SLOTS,
        places=list({h.place for h in held}),
        holders=held,
        first_seen={},
        grace=GRACE,
        now=NOW,
    ).ends


def test_a_soft_revocation_warns_its_holders_and_never_ends_them() -> None:
    place = container({G0})
    for effective in (3, -1):  # in its grace, and after it took effect
        node = spec(revocations=[revocation(devices=[G0], effective=effective, soft=True)])
        (end,) = ends_of(node, holding(place, (195, 0)))
        assert end.soft and not end.never_granted


def test_a_hard_revocation_ends_its_holder_at_its_effective_time() -> None:
    node = spec(revocations=[revocation(devices=[G0], effective=3)])
    (end,) = ends_of(node, holding(container({G0}), (195, 0)))
    assert end.at == NOW + timedelta(minutes=3) and not end.soft


def test_revoking_one_mig_slice_leaves_the_holder_of_its_sibling_alone() -> None:
    """Both slices' holders open the parent GPU's node; only the revoked slice's holder goes.

    The revoked slice's process is ended through its own capability node, which
    no other slice shares; the sibling's hold on the shared parent node is
    still justified by its own slice and must not be warned or ended.
    """
    for soft in (False, True):
        node = spec(revocations=[revocation(devices=[MIG_A], effective=3, soft=soft)])
        revoked, sibling = container({MIG_A}, path="/a"), container({MIG_B}, path="/b")
        ends = ends_of(
            node,
            holding(revoked, (195, 2), pid=1),
            holding(revoked, (CAP, 1), pid=1),
            holding(sibling, (195, 2), pid=2),
            holding(sibling, (CAP, 2), pid=2),
        )
        assert {e.holder.pid for e in ends} == {1}, soft
        assert all(e.at == NOW + timedelta(minutes=3) and e.soft == soft for e in ends)


def test_a_holder_of_no_gpu_device_is_not_judged() -> None:
    """A process holding a device outside the slots (another vendor's) is not ours to end."""
    decision = decide(
        spec=spec(),
        mode="Enforce",
        slots=SLOTS,
        places=[container(set())],
        holders=[holding(container(set()), (226, 0))],
        first_seen={},
        grace=GRACE,
        now=NOW,
    )
    assert decision.ends == [] and decision.entitled_holders == set()


# -- properties ----------------------------------------------------------------------------------

UUIDS = [s.uuid for s in SLOTS]
KINDS: list[PlaceKind] = ["container", "pod", "session", "other"]


@st.composite
def nodes(draw: st.DrawFn, *, with_revocations: bool = True) -> GPUNodeSpec:
    minutes = st.integers(-90, 90)
    devices = st.one_of(st.none(), st.lists(st.sampled_from([*UUIDS, G2]), min_size=1, unique=True))
    users = st.sampled_from([AMY, BEN])
    hosts = [
        host(draw(users), draw(devices), draw(st.one_of(st.none(), minutes)))
        for _ in range(draw(st.integers(0, 2)))
    ]
    reservations = []
    for _ in range(draw(st.integers(0, 2))):
        start = draw(minutes)
        reservations.append(
            {
                "deviceUUID": draw(st.sampled_from(UUIDS)),
                "user": draw(users),
                "from": at(start),
                "until": at(start + draw(st.integers(1, 90))),
                "source": SOURCE,
            }
        )
    revocations = []
    for _ in range(draw(st.integers(0, 2)) if with_revocations else 0):
        effective = draw(minutes)
        revocations.append(
            revocation(
                draw(users),
                draw(devices),
                effective,
                effective + draw(st.integers(1, 90)),
                draw(st.booleans()),
            )
        )
    return spec(
        hostAccess=hosts or None, reservations=reservations or None, revocations=revocations or None
    )


@st.composite
def places(draw: st.DrawFn) -> Place:
    return Place(
        path=f"/p{draw(st.integers(0, 3))}",
        kind=draw(st.sampled_from(KINDS)),
        owner=draw(st.sampled_from([AMY, BEN, None])),
        allocated=frozenset(draw(st.sets(st.sampled_from(UUIDS)))),
        uid=1000,
    )


@settings(max_examples=200, deadline=None)
@given(nodes(), places())
def test_a_place_is_denied_exactly_the_gpu_nodes_its_entitlement_does_not_open(
    node: GPUNodeSpec, place: Place
) -> None:
    entitled_now = entitled(place, node, SLOTS, NOW)
    opened = allowed_numbers(SLOTS, entitled_now)
    enforced, audited = rules(node, place), rules(node, place, mode="Audit")
    if place.kind == "other":
        assert enforced.deny == {} and entitled_now == frozenset()
        return
    assert enforced.deny == {place.path: ALL_NUMBERS - opened}
    assert audited.would_deny == enforced.deny
    created = creation_numbers(
        place, spec=node, mode="Enforce", slots=SLOTS, control=CONTROL, now=NOW
    )
    assert created == (opened | CONTROL if opened else frozenset())
    if place.kind in ("container", "pod"):
        assert entitled_now <= place.allocated | reserved_for(node, place.owner, NOW)
    else:
        assert entitled_now <= host_slots(node, place.owner, SLOTS, NOW)


@settings(max_examples=200, deadline=None)
@given(nodes(with_revocations=False), st.lists(places(), min_size=1, max_size=3), st.data())
def test_without_revocations_exactly_the_unentitled_holders_are_ended(
    node: GPUNodeSpec, where: list[Place], data: st.DataObject
) -> None:
    held = [
        holding(place, data.draw(st.sampled_from(sorted(ALL_NUMBERS))), pid=i + 1)
        for i, place in enumerate(where)
    ]
    decision = decide(
        spec=node,
        mode="Enforce",
        slots=SLOTS,
        places=[p for p in where if p.kind != "other"],
        holders=held,
        first_seen={},
        grace=GRACE,
        now=NOW,
    )
    keys = {(h.pid, h.start_ticks, h.number) for h in held}
    ended = {(e.holder.pid, e.holder.start_ticks, e.holder.number) for e in decision.ends}
    assert ended | decision.entitled_holders == keys
    assert not ended & decision.entitled_holders
    assert not any(e.soft for e in decision.ends)
