"""Per-container limits on Docker hosts (`policy/resources.py`): defaults, maxima, updates. Pure."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from controller.api.ratelimit import PerWorkloadResources
from controller.policy.resources import NANO, ContainerLimits, apply_create, check_update

GI = 1 << 30
PER = PerWorkloadResources.model_validate(
    {
        "cpu": {"default": "4", "max": "16"},
        "memory": {"default": "16Gi", "max": "64Gi"},
        "shm": {"default": "8Gi", "max": "32Gi"},
        "pids": {"default": "4096", "max": "8192"},
    }
)
LIMITS = ContainerLimits.of(PER, lambda field: f"GPURateLimit/student ({field})")


def test_a_container_that_asks_for_nothing_gets_the_defaults() -> None:
    host: dict[str, Any] = {}
    assert apply_create(host, LIMITS, host_cpus=64) is None
    assert host == {
        "NanoCpus": 4 * NANO,
        "Memory": 16 * GI,
        "MemorySwap": 16 * GI,  # no swap: the memory limit is the memory-plus-swap limit
        "ShmSize": 8 * GI,
        "PidsLimit": 4096,
    }


def test_the_cpu_default_is_cut_to_what_the_host_has() -> None:
    host: dict[str, Any] = {}
    assert apply_create(host, LIMITS, host_cpus=2) is None
    assert host["NanoCpus"] == 2 * NANO


def test_asks_above_a_maximum_are_refused_naming_the_flag_and_its_source() -> None:
    for ask, flag in (
        ({"NanoCpus": 17 * NANO}, "--cpus"),
        ({"CpuQuota": 1_700_000, "CpuPeriod": 100_000}, "--cpus"),
        ({"Memory": 65 * GI}, "--memory"),
        ({"ShmSize": 33 * GI}, "--shm-size"),
        ({"PidsLimit": 8193}, "--pids-limit"),
    ):
        message = apply_create(dict(ask), LIMITS)
        assert message is not None and message.startswith(flag), (ask, message)
        assert "GPURateLimit/student" in message


def test_swap_is_not_available() -> None:
    message = apply_create({"Memory": GI, "MemorySwap": 2 * GI}, LIMITS)
    assert message is not None and "swap is not available" in message


@given(
    cpus=st.integers(0, 32),
    memory=st.integers(0, 128).map(lambda g: g * GI),
    pids=st.integers(-1, 20_000),
)
def test_a_create_is_refused_or_ends_within_every_maximum(
    cpus: int, memory: int, pids: int
) -> None:
    host: dict[str, Any] = {"NanoCpus": cpus * NANO, "Memory": memory, "PidsLimit": pids}
    if apply_create(host, LIMITS, host_cpus=64) is not None:
        return
    assert 0 < Fraction(host["NanoCpus"], NANO) <= 16
    assert 0 < host["Memory"] <= 64 * GI and host["MemorySwap"] == host["Memory"]
    assert 0 < host["PidsLimit"] <= 8192


def test_an_update_may_not_lift_or_exceed_a_limit() -> None:
    for update in (
        {"CpuQuota": -1},
        {"NanoCpus": 17 * NANO},
        {"Memory": -1},
        {"Memory": 65 * GI},
        {"PidsLimit": -1},
        {"PidsLimit": 0},
        {"PidsLimit": 9000},
        {"Memory": GI, "MemorySwap": 3 * GI},
    ):
        assert check_update(dict(update), LIMITS) is not None, update
    ok: dict[str, Any] = {"Memory": 2 * GI}
    assert check_update(ok, LIMITS) is None and ok["MemorySwap"] == 2 * GI
    assert check_update({"PidsLimit": None}, LIMITS) is None  # null: leave it as it is


def test_without_a_policy_nothing_is_filled_or_refused() -> None:
    none = ContainerLimits.of(None, lambda field: field)
    host: dict[str, Any] = {"Memory": 512 * GI}
    assert apply_create(host, none) is None
    assert host == {"Memory": 512 * GI, "MemorySwap": 512 * GI}
