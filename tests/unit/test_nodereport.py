"""Which GPUNode changes call for a pass at once (`controller.policy.nodereport`)."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from controller.devcluster.simnode import gpunode, status
from controller.policy.nodereport import decisive_part


def node(**status_update: Any) -> dict[str, Any]:
    body = {**gpunode("n1"), **status("n1")}
    body["status"].update(status_update)
    body["status"]["workloads"] = [
        {
            "kind": "Pod",
            "name": "train",
            "namespace": "u-alice",
            "owner": "alice@lab.example",
            "ownerSource": "Namespace",
            "devices": [body["status"]["devices"][3]["uuid"]],
            "processes": [{"pid": 10, "deviceUUID": "GPU-x", "memoryUsedMiB": 100}],
        }
    ]
    return body


@given(
    utilization=st.lists(st.integers(0, 100), min_size=8, max_size=8),
    memory=st.lists(st.integers(0, 81920), min_size=8, max_size=8),
    process_memory=st.integers(0, 81920),
    heartbeat=st.datetimes(),
)
def test_readings_and_heartbeats_alone_never_call_for_a_pass(
    utilization: list[int], memory: list[int], process_memory: int, heartbeat: Any
) -> None:
    before = node()
    after = copy.deepcopy(before)
    for device, used, busy in zip(after["status"]["devices"], memory, utilization, strict=True):
        device["memoryUsedMiB"] = used
        if "utilizationPercent" in device:
            device["utilizationPercent"] = busy
    after["status"]["workloads"][0]["processes"][0]["memoryUsedMiB"] = process_memory
    after["status"]["agent"]["heartbeatTime"] = heartbeat.isoformat()
    assert decisive_part(after) == decisive_part(before)


def test_inventory_workload_spec_and_label_changes_call_for_a_pass() -> None:
    before = node()
    changes = []
    unhealthy = copy.deepcopy(before)
    unhealthy["status"]["devices"][4]["health"] = "Unhealthy"
    changes.append(unhealthy)
    other_owner = copy.deepcopy(before)
    other_owner["status"]["workloads"][0]["owner"] = "bob@lab.example"
    changes.append(other_owner)
    ended = copy.deepcopy(before)
    del ended["status"]["workloads"]
    changes.append(ended)
    enforced = copy.deepcopy(before)
    enforced["spec"] = {"enforcement": "Enforce"}
    changes.append(enforced)
    relabelled = copy.deepcopy(before)
    relabelled["metadata"]["labels"]["gpu.ds01.io/enforcement"] = "Off"
    changes.append(relabelled)
    deleted = copy.deepcopy(before)
    deleted["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    changes.append(deleted)
    seen = {decisive_part(before), *(decisive_part(c) for c in changes)}
    assert len(seen) == len(changes) + 1
