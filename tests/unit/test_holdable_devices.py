"""Choosing the devices that stand in for GPUs, over simulated hosts with different drivers.

The choice must work on any kernel (it used to be a fixed list, and a fresh
machine without autofs broke the suite), never pick a device that is open in
every container or unsafe to hold, say clearly when a host has too few, and be
stable for a host.
"""

from __future__ import annotations

from pathlib import Path
from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.devcluster.fakegpu.holdable import (
    CONTAINER_DEFAULT_ALLOWED,
    HOLDABLE_MISC,
    MINIMUM_GPUS,
    MISC_MAJOR,
    NVIDIACTL_MINOR,
    WANTED_GPUS,
    CharDevice,
    UnsuitableHostError,
    choose_gpu_minors,
    holdable,
    host_char_devices,
)

UNSAFE_OR_SHARED = ("watchdog", "snapshot", "hwrng", "hpet", "psaux", "vhci", "net/tun", "tty1")

devices = st.builds(
    CharDevice,
    major=st.sampled_from([MISC_MAJOR, MISC_MAJOR, MISC_MAJOR, 1, 4, 5, 136, 195]),
    minor=st.integers(0, 300),
    name=st.sampled_from(HOLDABLE_MISC + UNSAFE_OR_SHARED),
)
hosts = st.lists(devices, max_size=40, unique_by=lambda d: (d.major, d.minor))


def eligible(host: list[CharDevice]) -> list[CharDevice]:
    return [d for d in host if holdable(d)]


def choice(host: list[CharDevice]) -> tuple[int, ...] | None:
    try:
        return choose_gpu_minors(host)
    except UnsuitableHostError:
        return None


# ---- what a host of today gives ----

FRESH_MACHINE = [  # the CI machine type's kernel: no autofs
    CharDevice(10, 183, "hwrng"),
    CharDevice(10, 200, "net/tun"),
    CharDevice(10, 229, "fuse"),
    CharDevice(10, 232, "kvm"),
    CharDevice(10, 234, "btrfs-control"),
    CharDevice(10, 237, "loop-control"),
    CharDevice(10, 256, "vga_arbiter"),
    CharDevice(10, 257, "userfaultfd"),
    CharDevice(10, 258, "vsock"),
    CharDevice(10, 259, "cpu_dma_latency"),
    CharDevice(1, 3, "null"),
    CharDevice(4, 1, "tty1"),
]


def test_a_host_without_autofs_still_gets_eight_gpus_none_of_them_shared_or_unsafe() -> None:
    assert choose_gpu_minors(FRESH_MACHINE) == (229, 232, 234, 237, 256, 257, 258, 259)


def test_a_host_with_autofs_prefers_it_to_later_drivers_on_the_list() -> None:
    with_autofs = [*FRESH_MACHINE, CharDevice(10, 235, "autofs")]
    chosen = choose_gpu_minors(with_autofs)
    assert 235 in chosen and len(chosen) == WANTED_GPUS
    assert 232 not in chosen  # kvm comes after autofs on the list, and 8 are enough


def test_a_host_with_few_drivers_gets_fewer_gpus_down_to_the_minimum() -> None:
    small = [
        CharDevice(10, 229, "fuse"),
        CharDevice(10, 237, "loop-control"),
        CharDevice(10, 259, "cpu_dma_latency"),
        CharDevice(10, 236, "mapper/control"),
        CharDevice(10, 200, "net/tun"),
    ]
    assert choose_gpu_minors(small) == (229, 236, 237, 259)


def test_a_host_below_the_minimum_is_told_what_it_needs_and_what_it_has() -> None:
    tiny = [CharDevice(10, 229, "fuse"), CharDevice(10, 237, "loop-control")]
    with pytest.raises(UnsuitableHostError) as raised:
        choose_gpu_minors([*tiny, CharDevice(10, 130, "watchdog"), CharDevice(10, 200, "net/tun")])
    message = str(raised.value)
    assert f"at least {MINIMUM_GPUS} holdable character devices" in message
    assert "has 2: fuse 10:229, loop-control 10:237" in message
    assert "watchdog" not in message.split("has 2")[1]


def test_a_host_with_none_says_so() -> None:
    with pytest.raises(UnsuitableHostError, match=r"has 0$"):
        choose_gpu_minors([CharDevice(1, 3, "null")])


def test_a_minimum_outside_one_to_wanted_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="minimum"):
        choose_gpu_minors(FRESH_MACHINE, wanted=4, minimum=5)
    with pytest.raises(ValueError, match="minimum"):
        choose_gpu_minors(FRESH_MACHINE, minimum=0)


# ---- properties over simulated hosts ----


@given(hosts)
def test_only_holdable_misc_devices_outside_the_container_default_list_are_chosen(
    host: list[CharDevice],
) -> None:
    chosen = choice(host)
    if chosen is None:
        return
    by_minor = {d.minor: d for d in host if d.major == MISC_MAJOR}
    for minor in chosen:
        device = by_minor[minor]
        assert device.name in HOLDABLE_MISC
        assert (MISC_MAJOR, minor) not in CONTAINER_DEFAULT_ALLOWED
        assert minor != NVIDIACTL_MINOR


@given(hosts)
def test_as_many_gpus_as_the_host_can_hold_up_to_eight_or_a_clear_refusal(
    host: list[CharDevice],
) -> None:
    drivers = {d.name for d in eligible(host)}  # one minor each: (major, minor) is unique
    chosen = choice(host)
    if len(drivers) < MINIMUM_GPUS:
        assert chosen is None
        return
    assert chosen is not None
    assert list(chosen) == sorted(set(chosen))  # ascending, distinct
    assert len(chosen) == min(WANTED_GPUS, len(drivers))


@given(hosts, st.randoms(use_true_random=False))
def test_the_choice_does_not_depend_on_the_order_the_host_lists_its_devices(
    host: list[CharDevice], random: Random
) -> None:
    shuffled = list(host)
    random.shuffle(shuffled)
    assert choice(shuffled) == choice(host)


@given(hosts, st.data())
def test_devices_the_choice_did_not_use_can_come_and_go_without_changing_it(
    host: list[CharDevice], data: st.DataObject
) -> None:
    chosen = choice(host)
    if chosen is None:
        return
    unused = [d for d in host if not (d.major == MISC_MAJOR and d.minor in chosen)]
    kept = data.draw(st.lists(st.sampled_from(unused), unique=True) if unused else st.just([]))
    added = data.draw(
        st.lists(
            st.builds(
                CharDevice,
                major=st.just(MISC_MAJOR),
                minor=st.integers(301, 400),
                name=st.sampled_from(UNSAFE_OR_SHARED),
            ),
            max_size=5,
            unique_by=lambda d: d.minor,
        )
    )
    used = [d for d in host if d.major == MISC_MAJOR and d.minor in chosen]
    assert choice([*used, *kept, *added]) == chosen


# ---- reading the host ----


def test_the_host_is_read_from_sysfs_with_each_devices_node_name(tmp_path: Path) -> None:
    char = tmp_path / "dev" / "char"
    for number, uevent in {
        "10:229": "MAJOR=10\nMINOR=229\nDEVNAME=fuse\n",
        "10:200": "MAJOR=10\nMINOR=200\nDEVNAME=net/tun\n",
        "4:64": "MAJOR=4\nMINOR=64\n",  # no node: left out
    }.items():
        (char / number).mkdir(parents=True)
        (char / number / "uevent").write_text(uevent)
    assert host_char_devices(tmp_path) == [
        CharDevice(10, 200, "net/tun"),
        CharDevice(10, 229, "fuse"),
    ]
    assert host_char_devices(tmp_path / "missing") == []
