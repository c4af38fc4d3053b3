"""Device rules closed to GPUs at creation: never a GPU number the container may not open.

The oracle is the model of runc's rule emulator (`Emulator`), checked here against
the behaviour runc documents (resets on `a`, exact-key removal, refused holes). The
properties run arbitrary rule lists, wildcards and orderings through `rewrite`, then
through the emulator together with runc's own appended rules, exactly as runc would.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from controller.policy.devicerules import (
    OPEN,
    RUNC_APPENDED,
    DeviceRule,
    Emulator,
    GpuDevices,
    HoleError,
    Number,
    RuleError,
    driver_majors,
    emulate,
    left_open,
    opens_gpu,
    parse_rules,
    rewrite,
    to_oci,
)

GPU0, GPU1, CTL, UVM = (195, 0), (195, 1), (195, 255), (511, 0)
GPUS = GpuDevices(frozenset({GPU0, GPU1, CTL, UVM}))
DOCKER_DEFAULT = [
    DeviceRule(False, "a"),
    DeviceRule(True, "c", 1, 3),
    DeviceRule(True, "c", 1, 5),
    DeviceRule(True, "c", 136, None),
]


def opens(rules: list[DeviceRule], number: Number, kind: str = "c") -> bool:
    """Whether runc's cgroup for ``rules`` lets a process open the device read-write."""
    state = emulate([*rules, *RUNC_APPENDED])
    return all(state.allows(kind, number, letter) for letter in sorted(OPEN))


def mapped(*numbers: Number) -> list[DeviceRule]:
    return [*DOCKER_DEFAULT, *(DeviceRule(True, "c", n[0], n[1]) for n in numbers)]


# -- the emulator is runc's -------------------------------------------------------------


def test_the_emulator_resets_on_type_a_and_removes_only_exact_exceptions() -> None:
    state = emulate([DeviceRule(True, "c", 195, 0), DeviceRule(False, "a")])
    assert not state.allows("c", GPU0, "r")  # `deny a` after an allow wipes it
    state = emulate([DeviceRule(False, "a"), DeviceRule(True, "c", 195, None)])
    assert state.allows("c", GPU1, "w")
    blacklist = emulate([DeviceRule(True, "a"), DeviceRule(False, "c", 195, None)])
    assert not blacklist.allows("c", GPU0, "r") and blacklist.allows("c", (1, 3), "r")
    with pytest.raises(HoleError, match="punch a hole"):
        # An exact allow cannot reopen one minor of a denied wildcard (runc refuses it).
        emulate([*blacklist_rules(), DeviceRule(True, "c", 195, 0)])


def blacklist_rules() -> list[DeviceRule]:
    return [DeviceRule(True, "a"), DeviceRule(False, "c", 195, None)]


def test_a_removal_inside_a_wildcard_is_refused_as_runc_refuses_it() -> None:
    with pytest.raises(RuleError, match="punch a hole"):
        rewrite(
            [
                DeviceRule(False, "a"),
                DeviceRule(True, "c", None, None),
                DeviceRule(False, "c", 1, 3),
            ],
            GPUS,
            (),
        )


# -- plain cases: the shapes Docker, admins and NVIDIA's docs produce -------------------------


def test_a_mapped_gpu_the_container_is_not_entitled_to_is_closed_and_nothing_else() -> None:
    original = mapped(GPU0, CTL, UVM, (10, 229))
    out = rewrite(original, GPUS, ())
    assert not opens(out, GPU0) and not opens(out, CTL) and not opens(out, UVM)
    assert opens(out, (10, 229)) and opens(out, (1, 3)) and opens(out, (136, 4))


def test_an_entitled_gpu_keeps_its_access_and_only_what_was_mapped() -> None:
    original = mapped(GPU0, GPU1, CTL, UVM)
    out = rewrite(original, GPUS, {GPU0, CTL, UVM})
    assert opens(out, GPU0) and opens(out, CTL) and opens(out, UVM)
    assert not opens(out, GPU1)
    unmapped = rewrite(mapped(CTL), GPUS, {GPU0, CTL})
    assert not opens(unmapped, GPU0)  # entitled, but never mapped: still closed


def test_privileged_allow_all_keeps_everything_but_unentitled_gpus() -> None:
    owned = GpuDevices(GPUS.numbers, frozenset({195, 511}))
    out = rewrite([DeviceRule(True, "a")], owned, ())
    assert not any(opens(out, n) for n in (GPU0, GPU1, CTL, UVM, (195, 77), (511, 9)))
    assert opens(out, (8, 0), "b") and opens(out, (10, 229)) and opens(out, (4, 1))
    entitled = rewrite([DeviceRule(True, "a")], owned, {GPU1, CTL})
    assert opens(entitled, GPU1) and opens(entitled, CTL) and not opens(entitled, GPU0)


def test_wildcard_allows_over_gpus_are_narrowed_to_the_entitled_numbers() -> None:
    nvidia_docs = [*DOCKER_DEFAULT, DeviceRule(True, "c", 195, None, "rwm")]
    out = rewrite(nvidia_docs, GPUS, {GPU1})
    assert opens(out, GPU1) and not opens(out, GPU0) and not opens(out, CTL)
    every_char = [*DOCKER_DEFAULT, DeviceRule(True, "c", None, None), DeviceRule(True, "b", 8, 0)]
    out = rewrite(every_char, GPUS, ())
    assert not any(opens(out, n) for n in GPUS.numbers)
    assert opens(out, (8, 0), "b") and opens(out, (1, 5))  # block rules and exact ones stay
    assert emulate(out).allows("c", GPU0, "m")  # a node may still be made, never opened


def test_owned_majors_close_minors_the_inventory_does_not_know() -> None:
    owned = GpuDevices(GPUS.numbers, frozenset({195}))
    out = rewrite(mapped((195, 254)), owned, ())
    assert not opens(out, (195, 254))
    assert opens(rewrite(mapped((195, 254)), GPUS, ()), (195, 254))  # not a GPU without it


def test_gpu_numbers_runc_always_allows_are_reported_left_open() -> None:
    tun_as_gpu = GpuDevices(frozenset({(10, 200), GPU0}))
    out = rewrite(mapped(GPU0), tun_as_gpu, ())
    assert left_open(out, tun_as_gpu, ()) == [(10, 200)]
    assert left_open(out, GPUS, ()) == []


def test_rules_are_read_as_runc_reads_them_and_bad_ones_name_their_field() -> None:
    rules = parse_rules(
        [
            {"allow": False, "access": "rwm"},
            {"allow": True, "type": "c", "major": 195, "minor": None, "access": "wr"},
            {"allow": True, "type": "c", "major": -1, "minor": 3, "access": "m"},
        ]
    )
    assert rules == [
        DeviceRule(False, "a"),
        DeviceRule(True, "c", 195, None, "rw"),
        DeviceRule(True, "c", None, 3, "m"),
    ]
    assert parse_rules([to_oci(r) for r in rules]) == rules
    for bad, field in (
        ([{"allow": "yes", "access": "r"}], r"\[0\]\.allow"),
        ([{"allow": True, "access": ""}], r"\[0\]\.access"),
        ([{"allow": True, "access": "rx"}], r"\[0\]\.access"),
        ([{"allow": True, "type": "p", "access": "r"}], r"\[0\]\.type"),
        ([{"allow": True, "type": ["c"], "access": "r"}], r"\[0\]\.type"),
        ([{"allow": True, "major": "195", "access": "r"}], r"\[0\]\.major"),
        ([{"allow": True, "minor": -2, "access": "r"}], r"\[0\]\.minor"),
        ({"allow": True}, r"devices: must be a list"),
    ):
        with pytest.raises(RuleError, match=field):
            parse_rules(bad)


def test_driver_majors_come_from_the_character_section_of_proc_devices() -> None:
    text = (
        "Character devices:\n  1 mem\n195 nvidia\n195 nvidia-modeset\n"
        "234 nvidia-caps\n511 nvidia-uvm\n 10 misc\n\nBlock devices:\n259 nvidia-fake\n"
    )
    assert driver_majors(text) == {195, 234, 511}
    assert driver_majors("Character devices:\n  1 mem\n") == frozenset()


# -- properties: arbitrary rule lists ------------------------------------------------------

MAJORS = st.sampled_from([None, 1, 10, 136, 195, 240, 511])
MINORS = st.sampled_from([None, 0, 1, 3, 200, 255])
RULES = st.lists(
    st.builds(
        DeviceRule,
        allow=st.booleans(),
        kind=st.sampled_from(["a", "b", "c"]),
        major=MAJORS,
        minor=MINORS,
        access=st.sets(st.sampled_from("rwm"), min_size=1).map(
            lambda s: "".join(ch for ch in "rwm" if ch in s)
        ),
    ),
    max_size=12,
)
# GPU numbers: anything but the devices runc itself always allows (no driver uses those).
GPU_NUMBERS = st.frozensets(
    st.tuples(st.sampled_from([10, 195, 240, 511]), st.sampled_from([0, 1, 3, 255])),
    max_size=6,
)
PROBES = [
    (major, minor)
    for major in (1, 5, 10, 136, 195, 240, 511, 7)
    for minor in (0, 1, 2, 3, 7, 200, 229, 255)
]


@st.composite
def setups(draw: st.DrawFn) -> tuple[list[DeviceRule], GpuDevices, frozenset[Number]]:
    numbers = draw(GPU_NUMBERS)
    owned = draw(st.frozensets(st.sampled_from([195, 240]), max_size=2))
    gpu = GpuDevices(numbers, owned)
    candidates = sorted(numbers | {(m, n) for m in owned for n in (0, 1, 7)})
    entitled = frozenset(draw(st.sets(st.sampled_from(candidates)))) if candidates else frozenset()
    return draw(RULES), gpu, entitled


def _state(rules: list[DeviceRule]) -> Emulator | None:
    try:
        return emulate([*rules, *RUNC_APPENDED])
    except RuleError:
        return None


@settings(max_examples=400, deadline=None)
@given(setups())
def test_no_gpu_number_outside_the_entitlement_is_ever_left_open(
    setup: tuple[list[DeviceRule], GpuDevices, frozenset[Number]],
) -> None:
    rules, gpu, entitled = setup
    try:
        emulate(rules)
    except RuleError:
        with pytest.raises(RuleError):
            rewrite(rules, gpu, entitled)  # runc would refuse them too: so does the rewrite
        return
    out = rewrite(rules, gpu, entitled)
    after = _state(out)
    if _state(rules) is None:
        assert after is None  # runc refuses the container either way
        return
    assert after is not None, "runc must accept the rewritten rules when it accepts the original"
    blacklist = after.default_allow
    for number in PROBES:
        if not gpu.is_gpu(number) or number in entitled:
            continue
        entitled_on_major = any(n[0] == number[0] for n in entitled)
        if number not in gpu.numbers and blacklist and entitled_on_major:
            continue  # documented: an allow-all container keeps unknown minors of that major
        for letter in sorted(OPEN):
            assert not after.allows("c", number, letter), (number, letter, out)


@settings(max_examples=400, deadline=None)
@given(setups())
def test_the_rewrite_opens_nothing_new_and_entitled_gpus_keep_their_access(
    setup: tuple[list[DeviceRule], GpuDevices, frozenset[Number]],
) -> None:
    rules, gpu, entitled = setup
    before = _state(rules)
    assume(before is not None)
    assert before is not None
    after = _state(rewrite(rules, gpu, entitled))
    assert after is not None
    for kind in ("b", "c"):
        for number in PROBES:
            for letter in "rwm":
                if after.allows(kind, number, letter):
                    assert before.allows(kind, number, letter), (kind, number, letter)
    for number in entitled:
        for letter in sorted(OPEN):
            assert after.allows("c", number, letter) == before.allows("c", number, letter)


@settings(max_examples=300, deadline=None)
@given(setups())
def test_devices_that_are_no_gpus_keep_their_access(
    setup: tuple[list[DeviceRule], GpuDevices, frozenset[Number]],
) -> None:
    """Except under a wildcard-major allow, which is narrowed (docs/agent.md says so)."""
    rules, gpu, entitled = setup
    before = _state(rules)
    assume(before is not None)
    assert before is not None
    state = emulate(rules)
    any_major = not state.default_allow and any(
        kind == "c" and major is None and letters & OPEN
        for (kind, major, _), letters in state.exceptions.items()
    )
    after = _state(rewrite(rules, gpu, entitled))
    assert after is not None
    gpu_majors = {n[0] for n in gpu.numbers} | gpu.majors
    for number in PROBES:
        for letter in "rwm":
            assert after.allows("b", number, letter) == before.allows("b", number, letter)
            if number[0] in gpu_majors or any_major:
                continue
            assert after.allows("c", number, letter) == before.allows("c", number, letter)


@settings(max_examples=200, deadline=None)
@given(setups(), st.randoms(use_true_random=False))
def test_the_rewritten_rules_mean_the_same_in_any_order(
    setup: tuple[list[DeviceRule], GpuDevices, frozenset[Number]], shuffle: random.Random
) -> None:
    """One reset first, then rules of one direction only: no ordering left to get wrong."""
    rules, gpu, entitled = setup
    assume(_state(rules) is not None)
    out = rewrite(rules, gpu, entitled)
    assert out[0].kind == "a" and all(r.kind != "a" and r.allow != out[0].allow for r in out[1:])
    tail = out[1:]
    shuffle.shuffle(tail)
    reordered, original = _state([out[0], *tail]), _state(out)
    assert reordered is not None and original is not None
    for number in PROBES:
        for letter in "rwm":
            assert reordered.allows("c", number, letter) == original.allows("c", number, letter)


@settings(max_examples=300, deadline=None)
@given(setups())
def test_rules_that_open_no_gpu_need_no_question_and_no_rewrite(
    setup: tuple[list[DeviceRule], GpuDevices, frozenset[Number]],
) -> None:
    """The wrapper skips the agent for such bundles: whatever it would answer, the
    rewrite would mean exactly the original."""
    rules, gpu, entitled = setup
    before = _state(rules)
    assume(before is not None and not opens_gpu(rules, gpu))
    assert before is not None
    after = _state(rewrite(rules, gpu, entitled))
    assert after is not None
    for kind in ("b", "c"):
        for number in PROBES:
            for letter in "rwm":
                assert after.allows(kind, number, letter) == before.allows(kind, number, letter)


def test_docker_shaped_rules_open_a_gpu_only_when_one_is_mapped_or_allowed_by_wildcard() -> None:
    assert not opens_gpu(DOCKER_DEFAULT, GPUS)
    assert opens_gpu(mapped(GPU1), GPUS) and opens_gpu([DeviceRule(True, "a")], GPUS)
    assert opens_gpu([*DOCKER_DEFAULT, DeviceRule(True, "c", 195, None, "r")], GPUS)
    assert not opens_gpu([*DOCKER_DEFAULT, DeviceRule(True, "c", 195, None, "m")], GPUS)
