"""Which GPUs a Docker container gets for `--gpus`: only what its creator may take, first fit.

The gateway's end-to-end behaviour is in `tests/agent/test_gateway_gpus.py`;
here the decision alone, on a hand-built node: two whole GPUs and a third
split into MIG slices.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.api.node import GPUNodeSpec
from controller.api.ratelimit import GPUPolicy
from controller.policy.gpuchoice import (
    Chosen,
    Device,
    Entitlement,
    GpuRequest,
    NoDevices,
    choose,
    parse_request,
)

NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)
HOUR = timedelta(hours=1)
AMY, BEN = "amy@lab.example", "ben@lab.example"
SOURCE = {"kind": "GPUGrant", "name": "g", "namespace": "u-amy"}


def uuid(prefix: str, n: int) -> str:
    return f"{prefix}-{n:08x}-0000-4000-8000-{n:012x}"


G0, G1, G2 = (uuid("GPU", i) for i in range(3))
BIG, SMALL_A, SMALL_B = uuid("MIG", 10), uuid("MIG", 11), uuid("MIG", 12)
DEVICES = [
    Device(G0, G0, 0, None, Fraction(1), nvlink_peers=frozenset({1})),
    Device(G1, G1, 1, None, Fraction(1), nvlink_peers=frozenset({0})),
    Device(BIG, G2, 2, "3g.40gb", Fraction(3, 7), placement=0),
    Device(SMALL_A, G2, 2, "1g.10gb", Fraction(1, 7), placement=4),
    Device(SMALL_B, G2, 2, "1g.10gb", Fraction(1, 7), placement=5),
]


def rights(
    allowance: Fraction | None = Fraction(2),
    cap: int | None = 2,
    full_gpus: bool = True,
    profiles: frozenset[str] | None = None,
) -> Entitlement:
    return Entitlement(allowance, cap, full_gpus, profiles, lambda path: f"{path} from test")


def node(**fields: Any) -> GPUNodeSpec:
    return GPUNodeSpec.model_validate({"enforcement": "Enforce", **fields})


def pick(
    request: GpuRequest,
    entitlement: Entitlement | None = None,
    held: dict[str, str] | None = None,
    spec: GPUNodeSpec | None = None,
    devices: list[Device] | None = None,
) -> Chosen | NoDevices:
    return choose(
        request,
        user=AMY,
        entitlement=entitlement or rights(),
        devices=DEVICES if devices is None else devices,
        held=held or {},
        spec=spec or node(),
        now=NOW,
        horizon=HOUR,
    )


def uuids(result: Chosen | NoDevices) -> list[str]:
    assert isinstance(result, Chosen), result
    return [d.uuid for d in result.devices]


def refusal(result: Chosen | NoDevices) -> NoDevices:
    assert isinstance(result, NoDevices), result
    return result


def reservation(user: str, device: str, start: float | None, end: float) -> dict[str, Any]:
    body = {"deviceUUID": device, "user": user, "until": (NOW + end * HOUR).isoformat()}
    if start is not None:
        body["from"] = (NOW + start * HOUR).isoformat()
    return body | {"source": SOURCE}


# -- reading `--gpus` ---------------------------------------------------------------------


def test_no_device_request_or_a_zero_count_asks_for_no_gpu() -> None:
    assert parse_request(None) is None
    assert parse_request([]) is None
    assert parse_request([{"Driver": "nvidia", "Count": 0}]) is None


def test_gpus_n_and_device_ids_are_read_from_either_spelling() -> None:
    assert parse_request([{"Driver": "", "Capabilities": [["gpu"]], "Count": 2}]) == GpuRequest(2)
    assert parse_request([{"Driver": "nvidia", "Count": -1}]) == GpuRequest(-1)
    assert parse_request([{"Driver": "nvidia", "DeviceIDs": ["0", G1]}]) == GpuRequest(0, ("0", G1))


def test_other_drivers_several_requests_or_count_with_ids_are_refused_as_invalid() -> None:
    for requests in (
        [{"Driver": "cdi", "Capabilities": [["gpu"]], "Count": 1}],
        [{"Driver": "", "Capabilities": [["compute"]], "Count": 1}],
        [{"Driver": "nvidia", "Count": 1}, {"Driver": "nvidia", "Count": 1}],
        [{"Driver": "nvidia", "Count": 1, "DeviceIDs": ["0"]}],
    ):
        found = parse_request(requests)
        assert isinstance(found, NoDevices) and found.kind == "invalid", requests


# -- first fit ----------------------------------------------------------------------------------


def test_whole_gpus_are_given_first_by_index() -> None:
    assert uuids(pick(GpuRequest(1))) == [G0]
    assert uuids(pick(GpuRequest(2))) == [G0, G1]


def test_gpus_all_is_refused_with_the_cap_to_ask_for() -> None:
    found = refusal(pick(GpuRequest(-1)))
    assert found.kind == "invalid" and "at most 2" in found.message


def test_more_devices_than_the_cap_is_a_quota_refusal_naming_the_source() -> None:
    found = refusal(pick(GpuRequest(3), rights(allowance=None)))
    assert found.kind == "quota" and "gpu.maxDevicesPerWorkload from test" in found.message


def test_more_than_the_allowance_is_a_quota_refusal_counting_what_is_held() -> None:
    assert uuids(pick(GpuRequest(1), held={G0: AMY})) == [G1]  # 1 + 1 <= 2
    found = refusal(pick(GpuRequest(1), rights(allowance=Fraction(1)), held={G0: AMY}))
    assert found.kind == "quota" and "you hold 1 of your 1 GPU-equivalents" in found.message


def test_without_whole_gpus_the_larger_slices_come_first() -> None:
    assert uuids(pick(GpuRequest(1), rights(full_gpus=False))) == [BIG]
    only_small = rights(full_gpus=False, profiles=frozenset({"1g.10gb"}))
    assert uuids(pick(GpuRequest(2), only_small)) == [SMALL_A, SMALL_B]


def test_a_slice_is_taken_when_whole_gpus_exceed_the_allowance() -> None:
    assert uuids(pick(GpuRequest(1), rights(allowance=Fraction(1, 2)))) == [BIG]


def test_unhealthy_held_and_revoked_devices_are_never_given() -> None:
    sick = [
        d if d.uuid != G0 else Device(G0, G0, 0, None, Fraction(1), healthy=False) for d in DEVICES
    ]
    assert uuids(pick(GpuRequest(1), devices=sick)) == [G1]
    assert uuids(pick(GpuRequest(1), held={G0: BEN})) == [G1]
    revoked = node(
        revocations=[
            {
                "user": AMY,
                "deviceUUIDs": [G0],
                "reason": "ended",
                "effectiveAt": NOW.isoformat(),
                "until": (NOW + HOUR).isoformat(),
                "source": SOURCE,
            }
        ]
    )
    assert uuids(pick(GpuRequest(1), spec=revoked)) == [G1]


def test_a_device_reserved_for_someone_else_within_the_horizon_is_not_given() -> None:
    soon = node(reservations=[reservation(BEN, G0, 0.5, 3)])
    assert uuids(pick(GpuRequest(1), spec=soon)) == [G1]
    later = node(reservations=[reservation(BEN, G0, 2, 3)])  # after the container's horizon
    assert uuids(pick(GpuRequest(1), spec=later)) == [G0]


def test_the_callers_own_reservation_is_given_first_and_outside_the_allowance() -> None:
    mine = node(reservations=[reservation(AMY, G1, None, 3)])
    found = pick(GpuRequest(1), rights(allowance=Fraction(0)), spec=mine)
    assert uuids(found) == [G1] and isinstance(found, Chosen) and found.from_reservation == (G1,)


def test_nothing_free_is_a_capacity_answer_not_a_quota_one() -> None:
    held = {d.uuid: BEN for d in DEVICES}
    found = refusal(pick(GpuRequest(1), held=held))
    assert found.kind == "capacity" and "not enough free devices" in found.message


def test_a_caller_allowed_no_kind_of_gpu_is_told_to_check_their_limit() -> None:
    found = refusal(pick(GpuRequest(1), rights(full_gpus=False, profiles=frozenset())))
    assert "no kind of GPU" in found.message


# -- named devices ---------------------------------------------------------------------------------


def test_named_devices_by_index_or_uuid_are_given_as_named() -> None:
    assert uuids(pick(GpuRequest(0, ("1",)))) == [G1]
    assert uuids(pick(GpuRequest(0, (SMALL_B, G0)))) == [SMALL_B, G0]


def test_a_named_gpu_in_mig_mode_asks_for_one_of_its_slices() -> None:
    for name in ("2", G2):  # its index, or its UUID
        found = refusal(pick(GpuRequest(0, (name,))))
        assert found.kind == "invalid" and "is in MIG mode" in found.message, name
        assert BIG in found.message


def test_a_named_device_that_is_missing_twice_named_or_not_allowed_is_refused() -> None:
    assert "no such GPU" in refusal(pick(GpuRequest(0, ("7",)))).message
    assert "named twice" in refusal(pick(GpuRequest(0, ("0", G0)))).message
    slices_only = rights(full_gpus=False)
    assert "whole GPUs are not allowed" in refusal(pick(GpuRequest(0, ("0",)), slices_only)).message
    no_big = rights(profiles=frozenset({"1g.10gb"}))
    assert "3g.40gb is not allowed" in refusal(pick(GpuRequest(0, (BIG,)), no_big)).message


def test_a_named_device_in_use_or_down_is_capacity_one_reserved_for_another_is_quota() -> None:
    assert refusal(pick(GpuRequest(0, (G0,)), held={G0: BEN})).kind == "capacity"
    sick = [
        d if d.uuid != G0 else Device(G0, G0, 0, None, Fraction(1), healthy=False) for d in DEVICES
    ]
    down = refusal(pick(GpuRequest(0, (G0,)), devices=sick))
    assert down.kind == "capacity" and "is unhealthy" in down.message
    theirs = node(reservations=[reservation(BEN, G0, None, 3)])
    assert refusal(pick(GpuRequest(0, (G0,)), spec=theirs)).kind == "quota"


# -- property --------------------------------------------------------------------------------------


@st.composite
def situations(draw: st.DrawFn) -> tuple[GpuRequest, Entitlement, dict[str, str], GPUNodeSpec]:
    uuids_ = [d.uuid for d in DEVICES]
    held = draw(st.dictionaries(st.sampled_from(uuids_), st.sampled_from([AMY, BEN]), max_size=3))
    holds = [
        reservation(draw(st.sampled_from([AMY, BEN])), draw(st.sampled_from(uuids_)), start, 3)
        for start in draw(st.lists(st.sampled_from([None, 0.5, 2.0]), max_size=2))
    ]
    entitlement = rights(
        allowance=draw(
            st.sampled_from([None, Fraction(0), Fraction(1, 7), Fraction(1), Fraction(2)])
        ),
        cap=draw(st.sampled_from([None, 1, 2])),
        full_gpus=draw(st.booleans()),
        profiles=draw(st.sampled_from([None, frozenset(), frozenset({"1g.10gb"})])),
    )
    request = draw(
        st.one_of(
            st.builds(GpuRequest, st.integers(1, 3)),
            st.lists(st.sampled_from(uuids_), min_size=1, max_size=2, unique=True).map(
                lambda ids: GpuRequest(0, tuple(ids))
            ),
        )
    )
    return request, entitlement, held, node(reservations=holds or None)


@settings(max_examples=300, deadline=None)
@given(situations())
def test_a_container_only_ever_gets_free_devices_its_creator_may_take(
    situation: tuple[GpuRequest, Entitlement, dict[str, str], GPUNodeSpec],
) -> None:
    request, entitlement, held, spec = situation
    found = pick(request, entitlement, held, spec)
    if isinstance(found, NoDevices):
        assert found.kind in ("quota", "capacity", "invalid") and found.message
        return
    chosen = found.devices
    assert len(chosen) == (len(request.ids) or request.count)
    assert len({d.uuid for d in chosen}) == len(chosen)
    others = {
        r.device_uuid
        for r in spec.reservations or ()
        if r.user != AMY and (r.from_ or NOW) < NOW + HOUR
    }
    own = set(found.from_reservation)
    for device in chosen:
        assert device.uuid not in held and device.uuid not in others
        assert device.uuid in own or entitlement.allows(device.mig_profile)
    if entitlement.allowance is not None:
        # Devices reserved for the caller now are theirs on top of the allowance.
        reserved_now = {
            r.device_uuid
            for r in spec.reservations or ()
            if r.user == AMY and (r.from_ or NOW) <= NOW < r.until
        }
        mine_held = sum(
            (
                d.equivalents
                for d in DEVICES
                if held.get(d.uuid) == AMY and d.uuid not in reserved_now
            ),
            Fraction(0),
        )
        cost = sum((d.equivalents for d in chosen if d.uuid not in own), Fraction(0))
        assert mine_held + cost <= entitlement.allowance


def test_the_entitlement_is_read_from_the_effective_gpu_policy() -> None:
    policy = GPUPolicy.model_validate(
        {
            "maxGPUEquivalents": "1.5",
            "maxDevicesPerWorkload": 3,
            "allowFullGPUs": False,
            "allowedMIGProfiles": ["1g.10gb"],
        }
    )
    read = Entitlement.of(policy, str)
    assert (read.allowance, read.cap, read.full_gpus, read.profiles) == (
        Fraction(3, 2),
        3,
        False,
        {"1g.10gb"},
    )
    unset = Entitlement.of(GPUPolicy(), str)
    assert (unset.allowance, unset.cap, unset.full_gpus, unset.profiles) == (None, None, True, None)
