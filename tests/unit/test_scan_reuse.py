"""What the agent's scan keeps between scans changes its cost, never its answer.

Attribution reuses last scan's status entries when nothing they were made from
changed, and /proc `stat` is read with raw system calls. Each is checked against
doing the work afresh.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.agent.procfs import start_ticks_of
from controller.policy.attribution import Attribution, Memory, ProcessUse, attribute
from tests.unit.fixtures import later
from tests.unit.test_attribution import CID, GPU0, GPU1, MIG1, use, view

_uses = st.lists(
    st.builds(
        ProcessUse,
        pid=st.integers(1, 6),
        start_ticks=st.integers(1, 3),
        device_uuid=st.sampled_from([GPU0, GPU1, MIG1, "not-a-uuid"]),
        used_memory_mib=st.one_of(st.none(), st.integers(-1, 3)),
        uid=st.sampled_from([0, 1000, 1001, 4242]),
        comm=st.sampled_from(["python", "nvidia-smi", "x" * 300]),
        container_id=st.sampled_from([None, CID]),
    ),
    max_size=8,
)


def _fresh(memory: Memory) -> Memory:
    """The same memory without the entries kept for reuse."""
    return Memory(memory.host_seen, memory.first_seen)


def _same(a: Attribution, b: Attribution) -> bool:
    return (
        a.workloads == b.workloads
        and a.violations == b.violations
        and a.memory.host_seen == b.memory.host_seen
        and a.memory.first_seen == b.memory.first_seen
    )


@settings(max_examples=150, deadline=None)
@given(scans=st.lists(_uses, min_size=1, max_size=5))
def test_reused_status_entries_equal_entries_made_afresh(scans: list[list[ProcessUse]]) -> None:
    reusing, fresh = Memory(), Memory()
    repeated = [uses for scan in scans for uses in (scan, scan)]  # unchanged scans reuse most
    for index, uses in enumerate(repeated):
        with_reuse = attribute(uses, view(), reusing, later(index))
        without = attribute(uses, view(), _fresh(fresh), later(index))
        assert _same(with_reuse, without)
        reusing, fresh = with_reuse.memory, without.memory


def test_an_unchanged_workload_keeps_its_entry_and_a_changed_one_gets_a_new_one() -> None:
    sighted = attribute([use(10, uid=4242)], view(), Memory(), later(0)).memory  # host: 2nd scan
    first = attribute([use(10, uid=4242)], view(), sighted, later(0))
    second = attribute([use(10, uid=4242)], view(), first.memory, later(1))
    assert second.workloads[0] is first.workloads[0]  # reused, not validated again
    assert second.violations[0] is first.violations[0]
    grown = attribute(
        [replace(use(10, uid=4242), used_memory_mib=900)], view(), second.memory, later(2)
    )
    assert grown.workloads[0] is not second.workloads[0]
    assert grown.workloads[0].processes is not None
    assert grown.workloads[0].processes[0].memory_used_mib == 900
    moved = attribute([use(10, GPU1, uid=4242)], view(), grown.memory, later(3))
    assert [v.device_uuid for v in moved.violations] == [GPU1]
    assert len(moved.memory.reports) == 1  # entries of gone workloads are not kept


def test_start_time_is_read_after_a_command_name_holding_parentheses_and_spaces() -> None:
    own = Path(f"/proc/{os.getpid()}/stat").read_bytes()
    assert start_ticks_of(own) == int(own.decode().rsplit(")", 1)[1].split()[19])
    fields = " ".join(str(n) for n in range(3, 53))
    assert start_ticks_of(f"42 (a) b (c)) {fields}".encode()) == 22
