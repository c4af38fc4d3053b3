"""Which free device a pod gets: its owner's reservation first, others' reservations last.

`policy.podsteering.tiers` is pure; the properties hold for any mix of devices,
reservations (past, present, future; on a GPU or on a slice) and owners.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from controller.api.node import ObjectReference, Reservation
from controller.policy.podsteering import holder, tiers

NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)
SOURCE = ObjectReference(kind="GPUGrant", name="g", namespace="u-x")
GPUS = [f"GPU-0000000{i}-0000-0000-0000-000000000000" for i in range(4)]
SLICES = {
    f"MIG-0000000{i}-000{j}-0000-0000-000000000000": GPUS[i] for i in range(2) for j in range(3)
}
G0, G1, G2, G3 = GPUS
SLICE_OF_G0 = next(s for s, g in SLICES.items() if g == G0)
DEVICES = GPUS + list(SLICES)
USERS = ["ada@lab", "kim@lab", "bo@lab"]


def hold(device: str, user: str, start: int = -60, end: int = 60) -> Reservation:
    return Reservation.model_validate(
        {
            "deviceUUID": device,
            "user": user,
            "from": (NOW + timedelta(minutes=start)).isoformat(),
            "until": (NOW + timedelta(minutes=end)).isoformat(),
            "source": SOURCE.model_dump(by_alias=True),
        }
    )


reservations = st.lists(
    st.builds(
        hold,
        st.sampled_from(DEVICES),
        st.sampled_from(USERS),
        st.integers(-120, 60),
        st.integers(-60, 120),
    ).filter(lambda r: r.until > (r.from_ or NOW)),
    max_size=6,
)


@given(
    st.lists(st.sampled_from(DEVICES), unique=True),
    reservations,
    st.sampled_from([None, *USERS]),
)
def test_every_free_device_is_offered_once_and_others_holds_come_last(
    available: list[str], holds: list[Reservation], owner: str | None
) -> None:
    mine, free, others = tiers(available, holds, owner, SLICES, NOW)
    assert sorted(mine + free + others) == sorted(available)
    for device in mine:
        assert holder(device, holds, SLICES, NOW) == owner
    for device in free:
        assert holder(device, holds, SLICES, NOW) is None
    for device in others:
        assert holder(device, holds, SLICES, NOW) not in (None, owner) or owner is None
    if owner is None:
        assert mine == []


def test_a_reservation_on_a_gpu_covers_its_slices_and_only_while_it_lasts() -> None:
    holds = [hold(G0, "kim@lab"), hold(G1, "ada@lab", start=10, end=60),
             hold(G2, "ada@lab", start=-60, end=-1)]  # fmt: skip
    mine, free, others = tiers([SLICE_OF_G0, G1, G2, G3], holds, "kim@lab", SLICES, NOW)
    assert mine == [SLICE_OF_G0]  # kim's reservation of the GPU covers its slice
    assert free == [G1, G2, G3]  # ada's holds: not begun, and over
    assert others == []


def test_the_owner_gets_their_reserved_gpu_before_any_free_one() -> None:
    holds = [hold(G2, "kim@lab"), hold(G0, "ada@lab")]
    assert tiers(GPUS, holds, "kim@lab", SLICES, NOW) == [[G2], [G1, G3], [G0]]
    # Someone else, or nobody known: both reservations go last.
    assert tiers(GPUS, holds, "bo@lab", SLICES, NOW) == [[], [G1, G3], [G0, G2]]
    assert tiers(GPUS, holds, None, SLICES, NOW) == [[], [G1, G3], [G0, G2]]
