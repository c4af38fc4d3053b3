"""Splitting a GPU-equivalent allowance into per-resource ResourceQuota lines."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from controller.api.names import GPU_RESOURCE
from controller.api.ratelimit import Bounds, GPUPolicy, PerWorkloadResources
from controller.policy.quota import (
    allowed_resources,
    equivalent_of,
    limit_range,
    mig_resource,
    overuse,
    resource_equivalents,
    same_limit_range,
    split,
    used_equivalents,
)
from tests.unit.fixtures import a100_node

MIG1, MIG2, MIG3 = mig_resource("1g.10gb"), mig_resource("2g.20gb"), mig_resource("3g.40gb")
EQ = {GPU_RESOURCE: Fraction(1), MIG1: Fraction(1, 7), MIG2: Fraction(2, 7), MIG3: Fraction(3, 7)}
ALL = frozenset(EQ)


def test_remaining_allowance_is_offered_on_every_line() -> None:
    hard = split(Fraction(2), {GPU_RESOURCE: 1}, EQ, ALL)
    # 1 GPU used of 2: one more whole GPU, or 7 1g slices, or 3 2g slices, or 2 3g slices.
    assert hard == {GPU_RESOURCE: 2, MIG1: 7, MIG2: 3, MIG3: 2}


def test_mig_slices_add_up_exactly() -> None:
    # Seven 2g.20gb slices are exactly two GPUs: nothing left, nothing lost to rounding.
    hard = split(Fraction(2), {MIG2: 7}, EQ, ALL)
    assert hard == {GPU_RESOURCE: 0, MIG1: 0, MIG2: 7, MIG3: 0}


def test_forbidden_resources_are_held_at_zero_even_when_in_use() -> None:
    hard = split(Fraction(4), {GPU_RESOURCE: 1}, EQ, frozenset({MIG1, MIG2}))
    assert hard[GPU_RESOURCE] == 0 and hard[MIG3] == 0
    assert hard[MIG1] == 21 and hard[MIG2] == 10


def test_unlimited_allowance_limits_only_forbidden_resources() -> None:
    assert split(None, {GPU_RESOURCE: 5}, EQ, frozenset({GPU_RESOURCE})) == {
        MIG1: 0,
        MIG2: 0,
        MIG3: 0,
    }


def test_frozen_lines_hold_current_use() -> None:
    hard = split(None, {GPU_RESOURCE: 2, MIG1: 1}, EQ, ALL, frozen=True)
    assert hard == {GPU_RESOURCE: 2, MIG1: 1, MIG2: 0, MIG3: 0}


def test_overuse_leaves_no_room_and_is_measured() -> None:
    used = {GPU_RESOURCE: 1, MIG2: 1}
    hard = split(Fraction(1), used, EQ, ALL)
    assert hard == {GPU_RESOURCE: 1, MIG1: 0, MIG2: 1, MIG3: 0}
    assert overuse(Fraction(1), used_equivalents(used, EQ)) == Fraction(2, 7)
    assert overuse(None, Fraction(100)) == 0


counts = st.dictionaries(st.sampled_from(sorted(EQ)), st.integers(0, 20), max_size=4)
allowances = st.fractions(min_value=0, max_value=16, max_denominator=1000)
subsets = st.frozensets(st.sampled_from(sorted(EQ)))


@given(allowances, counts, subsets)
def test_filling_any_one_line_never_exceeds_the_allowance(
    allowance: Fraction, used: dict[str, int], allowed: frozenset[str]
) -> None:
    in_use = used_equivalents(used, EQ)
    hard = split(allowance, used, EQ, allowed)
    for name, limit in hard.items():
        extra = max(0, limit - used.get(name, 0))
        total = in_use + extra * EQ[name]
        # Within the allowance, or (already over it) nothing added at all.
        assert total <= max(allowance, in_use)
        assert extra == 0 or total <= allowance


@given(allowances, counts, subsets)
def test_the_split_offers_everything_the_allowance_leaves(
    allowance: Fraction, used: dict[str, int], allowed: frozenset[str]
) -> None:
    in_use = used_equivalents(used, EQ)
    remaining = max(Fraction(0), allowance - in_use)
    hard = split(allowance, used, EQ, allowed)
    for name, each in EQ.items():
        if name in allowed:
            assert hard[name] >= used.get(name, 0)
            # One more device of this kind would not fit.
            assert (hard[name] - used.get(name, 0) + 1) * each > remaining
        else:
            assert hard[name] == 0


def test_inventory_lists_whole_gpus_and_offered_profiles() -> None:
    node = a100_node(gpus=2, mig={0: ["2g.20gb", "2g.20gb", "1g.10gb", "1g.10gb+me"]})
    assert resource_equivalents([node]) == {
        GPU_RESOURCE: 1,
        MIG2: Fraction(2, 7),
        MIG1: Fraction(1, 7),
    }
    assert resource_equivalents([]) == {GPU_RESOURCE: 1}
    assert equivalent_of(mig_resource("4g.40gb"), {}) == Fraction(4, 7)
    assert equivalent_of("gpu.ds01.io/something", {}) == 1


def test_policy_shape_selects_resources() -> None:
    names = sorted(EQ)
    assert allowed_resources(names, GPUPolicy(allow_full_gpus=False)) == {MIG1, MIG2, MIG3}
    only = GPUPolicy(allow_full_gpus=True, allowed_mig_profiles=["1g.10gb"])
    assert allowed_resources(names, only) == {GPU_RESOURCE, MIG1}
    assert allowed_resources(names, GPUPolicy(allowed_mig_profiles=[])) == {GPU_RESOURCE}


def test_limit_range_clamps_defaults_and_compares_as_numbers() -> None:
    spec = limit_range(
        PerWorkloadResources(
            cpu=Bounds(default="500m", max=2),
            memory=Bounds(default="64Gi", max="32Gi"),
        )
    )
    item = spec["limits"][0]
    assert item["default"] == {"cpu": "500m", "memory": "32Gi"}
    assert item["defaultRequest"] == item["default"]
    assert item["max"] == {"cpu": "2", "memory": "32Gi"}
    stored = {
        "limits": [
            {
                "type": "Container",
                "default": {"cpu": "0.5", "memory": "34359738368"},
                "defaultRequest": {"cpu": "500m", "memory": "32Gi"},
                "max": {"cpu": "2000m", "memory": "32Gi"},
            }
        ]
    }
    assert same_limit_range(stored, spec)
    stored["limits"][0]["max"]["cpu"] = "3"
    assert not same_limit_range(stored, spec)
    assert not same_limit_range(None, spec)
    unlimited = limit_range(PerWorkloadResources(cpu=Bounds(default=4, max="Unlimited")))
    assert unlimited == {
        "limits": [{"type": "Container", "default": {"cpu": "4"}, "defaultRequest": {"cpu": "4"}}]
    }
