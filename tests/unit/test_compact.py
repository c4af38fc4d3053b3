"""Compacting parsed objects shares memory and never changes a value (`controller.api.compact`)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from controller.api.compact import compact
from controller.api.kinds import GPUGrant, GPUNode
from controller.devcluster.simnode import gpunode, status


def grant_body(name: str, reason: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "gpu.ds01.io/v1alpha1",
        "kind": "GPUGrant",
        "metadata": {"name": name, "namespace": "u-alice", "labels": labels, "finalizers": []},
        "spec": {
            "subject": {"kind": "User", "name": "alice@lab.example"},
            "gpus": {"count": 1},
            "duration": "2h",
            "reason": reason,
        },
        "status": {
            "state": "Active",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                    "reason": "Active",
                    "message": "active until 2026-01-01T02:00:00Z",
                }
            ],
        },
    }


@given(
    reason=st.text(min_size=1, max_size=400),
    labels=st.dictionaries(st.from_regex(r"[a-z]{1,10}", fullmatch=True), st.text(max_size=20)),
)
def test_compacting_a_grant_changes_no_value_and_no_wire_form(
    reason: str, labels: dict[str, str]
) -> None:
    body = grant_body("g1", reason, labels)
    plain = GPUGrant.model_validate(json.loads(json.dumps(body)))
    compacted = compact(GPUGrant.model_validate(json.loads(json.dumps(body))))
    assert compacted == plain
    assert compacted.to_wire() == plain.to_wire()
    assert compacted.model_dump(exclude_unset=True) == plain.model_dump(exclude_unset=True)


def test_compacted_grants_share_fields_sets_and_strings() -> None:
    first = compact(GPUGrant.model_validate(grant_body("g1", "training", {})))
    second = compact(GPUGrant.model_validate(grant_body("g2", "training", {})))
    assert first.__pydantic_fields_set__ is second.__pydantic_fields_set__
    assert first.spec.subject.name is second.spec.subject.name
    assert first.status is not None and second.status is not None
    assert first.status.conditions is not None and second.status.conditions is not None
    assert first.status.conditions[0].message is second.status.conditions[0].message


def test_a_copy_with_changes_leaves_the_shared_fields_set_alone() -> None:
    """`model_copy(update=...)` adds to the copy's fields set: never to the shared one."""
    first = compact(GPUGrant.model_validate(grant_body("g1", "training", {})))
    second = compact(GPUGrant.model_validate(grant_body("g2", "training", {})))
    before = set(second.spec.__pydantic_fields_set__)
    changed = first.spec.model_copy(update={"start": first.metadata.creation_timestamp})
    assert "start" in changed.model_fields_set
    assert second.spec.__pydantic_fields_set__ == before
    assert first.spec.__pydantic_fields_set__ == before


def test_compacting_a_node_report_changes_no_value() -> None:
    body = {**gpunode("n1"), **status("n1")}
    assert compact(GPUNode.model_validate(body)) == GPUNode.model_validate(body)
