"""GPU use from the agents' reports, charged to grants and integrated into their status.

`controller.policy.usage` (device sizes, who uses what, grant charges, the
stored usage record) and `controller.policy.usagerates` (the per-user rates
the usage history integrates).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.api.grant import GPUGrantStatus, GrantUsage
from controller.api.kinds import GPUGrant, GPUNode
from controller.api.names import GPU_RESOURCE
from controller.policy import usage
from controller.policy.quota import mig_resource
from controller.policy.usagehistory import NO_NODE, Figures
from controller.policy.usagerates import current, reaped_hours
from tests.unit.fixtures import a100_node, grant, later
from tests.unit.test_observe import workload

ALICE, BOB = "alice@lab.example", "bob@lab.example"


def reporting(
    name: str, *workloads: dict[str, Any], mig: dict[int, list[str]] | None = None
) -> GPUNode:
    """A two-GPU node whose agent reports ``workloads``."""
    body = a100_node(name, gpus=2, mig=mig or {}).model_dump(by_alias=True, mode="json")
    body["status"]["workloads"] = list(workloads)
    return GPUNode.model_validate(body)


def uuids(node: GPUNode) -> list[str]:
    """Whole GPUs, then MIG slices, as reported."""
    assert node.status and node.status.devices
    devices = node.status.devices
    return [d.uuid for d in devices] + [m.uuid for d in devices for m in d.mig_instances or ()]


# -- device sizes and who uses them ------------------------------------------------------


def test_a_whole_gpu_counts_one_a_mig_slice_its_share_of_the_parent() -> None:
    node = reporting("n1", mig={1: ["3g.40gb", "2g.20gb", "1g.10gb"]})
    g0, g1, big, mid, small = uuids(node)
    sizes = usage.device_equivalents([node])
    assert sizes == {
        g0: 1,
        g1: 1,
        big: Fraction(3, 7),
        mid: Fraction(2, 7),
        small: Fraction(1, 7),
    }


def test_a_node_without_a_report_has_no_devices_and_no_use() -> None:
    silent = GPUNode.model_validate({"metadata": {"name": "new"}, "spec": {}})
    assert usage.device_equivalents([silent]) == {}
    assert usage.devices_in_use([silent]) == {}


def test_use_is_gathered_per_owner_across_nodes_and_ownerless_use_is_nobodys() -> None:
    one, two = reporting("n1"), reporting("n2")
    (a0, a1), (b0, _) = uuids(one), uuids(two)
    ownerless = {"kind": "HostProcess", "name": "x", "ownerSource": "Unknown", "devices": [a1]}
    nodes = [
        reporting("n1", workload(ALICE, a0), workload(ALICE, a0), ownerless),
        reporting("n2", workload(ALICE, b0), workload(BOB, b0)),
    ]
    assert usage.devices_in_use(nodes) == {ALICE: {a0, b0}, BOB: {b0}}


# -- charging grants -------------------------------------------------------------------------

EQ = {f"GPU-{i}": Fraction(1) for i in range(4)}


def key(g: GPUGrant) -> str:
    return f"{g.metadata.namespace}/{g.metadata.name}"


def test_a_reserving_grant_is_charged_for_its_devices_in_use_and_idle() -> None:
    held = grant("held", count=2)
    charged = usage.charge(
        [held], {key(held): ("GPU-0", "GPU-1")}, {"GPU-0", "GPU-2"}, EQ, Fraction(1)
    )
    # GPU-0 is used, GPU-1 idle; GPU-2 is outside the reservation, within the base allowance.
    assert charged == {key(held): (Fraction(1), Fraction(1))}


def test_allowance_grants_share_the_use_above_the_base_oldest_first() -> None:
    first, second = grant("first", created=later(0)), grant("second", created=later(1))
    in_use = {"GPU-0", "GPU-1", "GPU-2"}
    charged = usage.charge([first, second], {}, in_use, EQ, Fraction(1))
    assert charged == {key(first): (1, 0), key(second): (1, 0)}
    charged = usage.charge([first, second], {}, {"GPU-0", "GPU-1"}, EQ, Fraction(1))
    assert charged == {key(first): (1, 0), key(second): (0, 0)}


def test_with_an_unlimited_base_allowance_no_grant_is_charged_for_extra_use() -> None:
    extra = grant("extra", count=2)
    charged = usage.charge([extra], {}, set(EQ), EQ, None)
    assert charged == {key(extra): (0, 0)}


def test_use_of_reserved_devices_is_not_charged_again_to_allowance_grants() -> None:
    held, extra = grant("held", created=later(0)), grant("extra", created=later(1))
    charged = usage.charge([held, extra], {key(held): ("GPU-0",)}, {"GPU-0"}, EQ, Fraction(0))
    assert charged == {key(held): (1, 0), key(extra): (0, 0)}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 3), min_size=1, max_size=4),
    st.sets(st.sampled_from(sorted(EQ))),
    st.one_of(st.none(), st.integers(0, 4)),
)
def test_allowance_grants_are_charged_the_use_above_the_base_up_to_their_size(
    sizes: list[int], in_use: set[str], base: int | None
) -> None:
    grants = [grant(f"g{i}", count=n, created=later(i)) for i, n in enumerate(sizes)]
    charged = usage.charge(grants, {}, in_use, EQ, None if base is None else Fraction(base))
    above = 0 if base is None else max(0, len(in_use) - base)
    shares = [charged[key(g)] for g in grants]
    assert all(idle == 0 and 0 <= used <= n for (used, idle), n in zip(shares, sizes, strict=True))
    assert sum(used for used, _ in shares) == min(above, sum(sizes))
    # Oldest first: a grant is charged only once every older one is charged in full.
    for i, (used, _) in enumerate(shares):
        if used:
            assert all(shares[j][0] == sizes[j] for j in range(i))


# -- the usage record ----------------------------------------------------------------------------


def active(size: str = "2", hours: float = 10, allocations: bool = False) -> GPUGrantStatus:
    body: dict[str, Any] = {
        "state": "Active",
        "gpuEquivalents": size,
        "window": {"start": later(0).isoformat(), "end": later(hours * 60).isoformat()},
    }
    if allocations:
        body["allocations"] = [
            {"node": "n1", "devices": [{"uuid": "GPU-" + "0" * 8 + "-0000-4000-8000-" + "0" * 12}]}
        ]
    return GPUGrantStatus.model_validate(body)


def test_a_grant_without_a_window_keeps_its_usage_as_it_was() -> None:
    old = GPUGrantStatus(
        usage=GrantUsage(gpu_hours_granted=1, gpu_hours_used=0.5, last_updated=later(0))
    )
    assert usage.account(old, GPUGrantStatus(state="Pending"), None, later(5)) == old.usage


def test_the_first_record_grants_size_times_length_and_has_used_nothing() -> None:
    first = usage.account(GPUGrantStatus(), active("2", 10), (Fraction(1), Fraction(0)), later(5))
    assert first is not None
    assert (first.gpu_hours_granted, first.gpu_hours_used, first.in_use) == (20.0, 0.0, 1.0)
    assert first.unused_reserved_hours is None  # nothing reserved, nothing to be idle
    reserving = usage.account(GPUGrantStatus(), active(allocations=True), None, later(5))
    assert reserving is not None and reserving.unused_reserved_hours == 0.0


def test_an_unchanged_rate_writes_nothing_new() -> None:
    rate = (Fraction(1), Fraction(0))
    first = usage.account(GPUGrantStatus(), active(), rate, later(0))
    old = active().model_copy(update={"usage": first})
    assert usage.account(old, active(), rate, later(120)) is first


def test_hours_grow_at_the_stored_rate_until_the_rate_changes() -> None:
    new = active(allocations=True)
    first = usage.account(GPUGrantStatus(), new, (Fraction(1, 2), Fraction(1)), later(0))
    old = new.model_copy(update={"usage": first})
    second = usage.account(old, new, (Fraction(2), Fraction(0)), later(120))
    assert second is not None
    assert (second.gpu_hours_used, second.unused_reserved_hours) == (1.0, 2.0)
    assert (second.in_use, second.reserved_idle, second.last_updated) == (2.0, 0.0, later(120))


def test_hours_stop_growing_at_the_end_of_the_window() -> None:
    new = active(hours=1)
    first = usage.account(GPUGrantStatus(), new, (Fraction(1), Fraction(0)), later(0))
    old = new.model_copy(update={"usage": first})
    after = usage.account(old, new, (Fraction(0), Fraction(0)), later(600))
    assert after is not None and after.gpu_hours_used == 1.0


def test_a_grant_not_active_is_charged_nothing() -> None:
    scheduled = active().model_copy(update={"state": "Scheduled"})
    record = usage.account(GPUGrantStatus(), scheduled, (Fraction(2), Fraction(1)), later(0))
    assert record is not None and (record.in_use, record.reserved_idle) == (0.0, 0.0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 120), st.integers(0, 4)), min_size=1, max_size=6))
def test_the_hours_used_are_the_rates_integrated_over_time_however_often_it_is_written(
    steps: list[tuple[int, int]],
) -> None:
    new = active(size="4", hours=1000)
    record = usage.account(GPUGrantStatus(), new, (Fraction(0), Fraction(0)), later(0))
    minute, expected, rate = 0, 0.0, 0
    for length, next_rate in steps:
        minute += length
        old = new.model_copy(update={"usage": record})
        record = usage.account(old, new, (Fraction(next_rate), Fraction(0)), later(minute))
        expected += rate * length / 60
        rate = next_rate
    assert record is not None
    # The record holds the hours up to its last change; the stored rate covers the rest.
    since = (later(minute) - record.last_updated).total_seconds() / 3600
    assert abs(record.gpu_hours_used + record.in_use * since - expected) < 1e-5


# -- the rates the usage history integrates --------------------------------------------------------


def active_grant(name: str, user: str, size: str, node: str | None, idle: float) -> GPUGrant:
    made = grant(name, user=user)
    status: dict[str, Any] = {"state": "Active", "gpuEquivalents": size}
    if node is not None:
        status["allocations"] = [{"node": node, "devices": []}]
    status["usage"] = {
        "gpuHoursGranted": 1,
        "gpuHoursUsed": 0,
        "reservedIdle": idle,
        "lastUpdated": later(0).isoformat(),
    }
    return made.model_copy(update={"status": GPUGrantStatus.model_validate(status)})


def test_a_device_shared_by_two_workloads_of_one_user_is_used_once() -> None:
    node = reporting("n1", mig={1: ["3g.40gb"]})
    g0, _, slice_ = uuids(node)
    busy = reporting("n1", workload(ALICE, g0), workload(ALICE, g0, slice_), mig={1: ["3g.40gb"]})
    assert current([busy], []) == {ALICE: {"n1": Figures(used=1 + 3 / 7)}}


def test_grants_count_on_their_node_or_nowhere_in_particular() -> None:
    grants = [
        active_grant("held", ALICE, "2", "n1", idle=1.5),
        active_grant("extra", ALICE, "0.5", None, idle=0),
        grant("asked", user=BOB),  # no status: not in force
    ]
    assert current([], grants) == {
        ALICE: {"n1": Figures(granted=2.0, unused=1.5), NO_NODE: Figures(granted=0.5)}
    }


def test_a_reaped_pod_counts_its_idle_time_at_its_size() -> None:
    sizes = {GPU_RESOURCE: Fraction(1), mig_resource("2g.20gb"): Fraction(2, 7)}
    requests = {GPU_RESOURCE: 2, mig_resource("2g.20gb"): 7}
    assert reaped_hours(requests, sizes, later(0), later(30)) == 2.0
    assert reaped_hours(requests, sizes, None, later(30)) == 0.0
    assert reaped_hours(requests, sizes, later(30), later(10)) == 0.0
