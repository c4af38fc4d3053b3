"""Device allocation: first fit, MIG layout, NVLink closeness, never two live holds on a device."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.policy.allocation import (
    Allocation,
    Ledger,
    Refusal,
    Request,
    Window,
    allocate_all,
    inventory,
    place,
)
from tests.unit.fixtures import T0, a100_node, later

SPAN = Window(T0, later(60))


def test_whole_gpus_first_fit_prefers_an_nvlink_set() -> None:
    node = a100_node(gpus=4, nvlink=False)
    # Only GPUs 2 and 3 are NVLink peers.
    devices = [
        d.model_copy(update={"nvlink_peers": [3] if d.index == 2 else [2] if d.index == 3 else []})
        for d in node.status.devices or ()
    ]
    node = node.model_copy(update={"status": node.status.model_copy(update={"devices": devices})})
    placed = place(Request("g", 2, SPAN), inventory([node]), {}, Ledger())
    assert isinstance(placed, Allocation)
    assert [s.gpu_index for s in placed.slots] == [2, 3]
    assert placed.closeness == "NVLink"


def test_whole_gpus_fall_back_to_pcie_when_no_nvlink_set() -> None:
    placed = place(
        Request("g", 2, SPAN), inventory([a100_node(gpus=4, nvlink=False)]), {}, Ledger()
    )
    assert isinstance(placed, Allocation)
    assert [s.gpu_index for s in placed.slots] == [0, 1] and placed.closeness == "PCIe"


def test_mig_slices_come_from_gpus_in_mig_mode_only() -> None:
    node = a100_node(gpus=4, mig={0: ["2g.20gb", "2g.20gb", "3g.20gb"], 1: ["1g.10gb"] * 7})
    placed = place(Request("g", 2, SPAN, mig_profile="2g.20gb"), inventory([node]), {}, Ledger())
    assert isinstance(placed, Allocation)
    assert all(s.mig_profile == "2g.20gb" and s.gpu_index == 0 for s in placed.slots)
    whole = place(Request("w", 2, SPAN), inventory([node]), {}, Ledger())
    assert isinstance(whole, Allocation)
    assert {s.gpu_index for s in whole.slots} <= {2, 3}


def test_unhealthy_devices_are_never_chosen() -> None:
    node = a100_node(gpus=2, unhealthy=(0,))
    assert isinstance(place(Request("g", 2, SPAN), inventory([node]), {}, Ledger()), Refusal)
    one = place(Request("g", 1, SPAN), inventory([node]), {}, Ledger())
    assert isinstance(one, Allocation) and one.slots[0].gpu_index == 1


def test_node_name_and_selector_restrict_placement() -> None:
    nodes = [a100_node("node-a", 1), a100_node("node-b", 1)]
    placed = place(
        Request("g", 1, SPAN, node_selector={"zone": "b"}),
        inventory(nodes),
        {"node-a": {"zone": "a"}, "node-b": {"zone": "b"}},
        Ledger(),
    )
    assert isinstance(placed, Allocation) and placed.node == "node-b"
    refused = place(Request("g", 1, SPAN, node_name="node-c"), inventory(nodes), {}, Ledger())
    assert isinstance(refused, Refusal) and refused.reason == "NoMatchingNode"


def test_windows_that_do_not_overlap_may_share_a_device() -> None:
    slots = inventory([a100_node(gpus=1)])
    first = Request("a", 1, Window(T0, later(60)))
    second = Request("b", 1, Window(later(60), later(120)))
    overlapping = Request("c", 1, Window(later(30), later(90)))
    result = allocate_all([first, second, overlapping], {}, slots, {})
    assert isinstance(result["a"], Allocation) and isinstance(result["b"], Allocation)
    assert result["a"].uuids == result["b"].uuids
    assert isinstance(result["c"], Refusal) and result["c"].reason == "NoCapacity"


def test_existing_allocations_are_kept_before_new_requests() -> None:
    slots = inventory([a100_node(gpus=2)])
    late = Request("late", 1, SPAN)
    early = Request("early", 1, SPAN)
    held = Allocation("gpu-node-1", (slots["gpu-node-1"][1],))
    result = allocate_all([early, late], {"late": held}, slots, {})
    assert isinstance(result["late"], Allocation) and result["late"].uuids == held.uuids
    assert isinstance(result["early"], Allocation) and result["early"].uuids != held.uuids


def test_explicit_devices_are_honoured_or_refused() -> None:
    slots = inventory([a100_node(gpus=2)])
    wanted = slots["gpu-node-1"][1].uuid
    result = allocate_all(
        [
            Request("a", 1, SPAN, device_uuids=(wanted,)),
            Request("b", 1, SPAN, device_uuids=(wanted,)),
        ],
        {},
        slots,
        {},
    )
    assert isinstance(result["a"], Allocation) and result["a"].uuids == (wanted,)
    assert isinstance(result["b"], Refusal) and result["b"].reason == "DevicesUnavailable"


requests = st.lists(
    st.tuples(
        st.integers(1, 4),  # count
        st.sampled_from([None, "1g.10gb", "2g.20gb", "3g.20gb"]),
        st.integers(0, 180),  # start minute
        st.integers(1, 180),  # length in minutes
        st.booleans(),  # pretend an existing allocation
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(requests, st.integers(1, 3))
def test_no_device_is_ever_held_twice_at_once(
    specs: list[tuple[int, str | None, int, int, bool]], nodes: int
) -> None:
    slots = inventory(
        [
            a100_node(
                f"node-{n}", 4, mig={0: ["1g.10gb"] * 7, 1: ["2g.20gb", "2g.20gb", "3g.20gb"]}
            )
            for n in range(nodes)
        ]
    )
    reqs = [
        Request(f"r{i}", c, Window(later(s), later(s) + timedelta(minutes=n)), mig_profile=p)
        for i, (c, p, s, n, _) in enumerate(specs)
    ]
    # Existing allocations may be stale or conflicting: allocate_all must still never double-book.
    everything = [s for node in slots.values() for s in node]
    existing = {
        f"r{i}": Allocation(
            everything[i % len(everything)].node, (everything[i % len(everything)],)
        )
        for i, spec in enumerate(specs)
        if spec[4]
    }
    result = allocate_all(reqs, existing, slots, {})
    held = [
        (uuid, r.window)
        for r in reqs
        if isinstance(result[r.key], Allocation)
        for uuid in result[r.key].uuids
    ]  # type: ignore[union-attr]
    for i, (uuid_a, window_a) in enumerate(held):
        for uuid_b, window_b in held[i + 1 :]:
            assert not (uuid_a == uuid_b and window_a.overlaps(window_b))
    for r in reqs:
        placed = result[r.key]
        if isinstance(placed, Allocation):
            assert len(placed.slots) == r.count
            assert all(s.mig_profile == r.mig_profile for s in placed.slots)
            assert len({s.node for s in placed.slots}) == 1
