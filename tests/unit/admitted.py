"""Whole objects and snapshots the apiserver would admit, for property tests of `plan`.

Objects come from the CRDs' own schemas (`tests.unit.schema_strategies`);
names are steered so that objects meet each other (grants in the accounts'
namespaces, limits and exemptions naming the accounts' users and groups,
placements naming real nodes and devices), or the interesting paths would
rarely run.
"""

from __future__ import annotations

import functools
from datetime import timedelta
from typing import Any

from hypothesis import strategies as st

from controller.api.kinds import GPUExemption, GPUGrant, GPUNode, GPURateLimit
from controller.policy.plan import Namespace, Snapshot
from tests.unit.fixtures import T0, a100_node
from tests.unit.schema_strategies import Overrides, crd_schema, date_times, values
from tests.unit.test_plan import LIMITS

USERS = ["alice@lab.example", "bob@lab.example", "carol@lab.example"]
GROUPS = ["researcher", "student"]
ACCOUNTS = [
    Namespace(
        "u-alice",
        {"gpu.ds01.io/user": "alice-lab.example"},
        {
            "gpu.ds01.io/user-name": "alice@lab.example",
            "gpu.ds01.io/groups": "researcher",
            "gpu.ds01.io/linux-user": "alice",
        },
    ),
    Namespace(
        "u-bob",
        {"gpu.ds01.io/user": "bob-lab.example"},
        {"gpu.ds01.io/user-name": "bob@lab.example", "gpu.ds01.io/groups": "student"},
    ),
    Namespace("default", {}, {}),
]
NODE = a100_node("gpu-node-1", mig={7: ["3g.40gb", "2g.20gb", "1g.10gb"]})
"""A node as a real agent reports it, so placements meet real devices."""
NODE_UUIDS = [d.uuid for d in NODE.status.devices or ()] + [  # type: ignore[union-attr]
    m.uuid
    for d in NODE.status.devices or ()  # type: ignore[union-attr]
    for m in d.mig_instances or ()
]

_NAME = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)
_PRINCIPALS = st.sampled_from([*USERS, *GROUPS])


def metadata(namespaced: bool) -> st.SearchStrategy[dict[str, Any]]:
    """What the apiserver sets (name, uid, versions, creation) and sometimes a deletion."""
    fields: dict[str, st.SearchStrategy[Any]] = {
        "name": _NAME,
        "uid": st.uuids().map(str),
        "resourceVersion": st.integers(1, 10**6).map(str),
        "generation": st.integers(1, 5),
        "creationTimestamp": date_times(T0, timedelta(days=3), edges=False),
    }
    if namespaced:
        fields["namespace"] = st.sampled_from([ns.name for ns in ACCOUNTS])
    optional = {
        "deletionTimestamp": date_times(T0, timedelta(days=3), edges=False),
        "finalizers": st.lists(st.sampled_from(["gpu.ds01.io/revocation", "other/x"]), unique=True),
        "labels": st.dictionaries(
            st.sampled_from(["gpu.ds01.io/enforcement", "zone"]),
            st.sampled_from(["Enforce", "Audit", "Off", "a"]),
        ),
    }
    return st.fixed_dictionaries(fields, optional=optional)


def kind_objects(
    plural: str, kind: str, namespaced: bool, overrides: Overrides
) -> st.SearchStrategy[dict[str, Any]]:
    """Whole objects of one kind (status sometimes present, as the operator or agent wrote it)."""
    schema = crd_schema(plural)
    props = schema["properties"]
    return st.fixed_dictionaries(
        {
            "apiVersion": st.just("gpu.ds01.io/v1alpha1"),
            "kind": st.just(kind),
            "metadata": metadata(namespaced),
            "spec": values(props["spec"], overrides, ".spec"),
        },
        optional={"status": values(props["status"], overrides, ".status")},
    )


_SOON = st.one_of(
    date_times(T0, timedelta(days=2)), date_times(T0, timedelta(days=2)), date_times()
)
_DURATION = st.one_of(
    st.sampled_from(["90s", "30m", "2h", "24h", "8760h"]),
    st.from_regex(r"([0-9]{1,6}([.][0-9]{1,3})?(h|m|s|ms))+", fullmatch=True).filter(
        lambda text: len(text) <= 32  # the schema's maxLength (an override is not bounded)
    ),
)
GRANT_OVERRIDES: Overrides = {
    ".spec.subject.name": st.sampled_from(USERS),
    ".spec.start": _SOON,
    ".spec.expiresAt": _SOON,
    ".spec.duration": _DURATION,
    ".spec.placement.nodeName": st.sampled_from([NODE.metadata.name, "gpu-node-2", "elsewhere"]),
    ".spec.placement.deviceUUIDs[]": st.sampled_from(NODE_UUIDS),
    ".status.allocations[].node": st.sampled_from([NODE.metadata.name, "gpu-node-2"]),
    ".status.allocations[].devices[].uuid": st.sampled_from(NODE_UUIDS),
}
SUBJECT_OVERRIDES: Overrides = {
    ".spec.subject.name": _PRINCIPALS,
    ".spec.subjects[].name": _PRINCIPALS,
    ".spec.nodes[]": st.sampled_from([NODE.metadata.name, "gpu-node-2"]),
}
NODE_OVERRIDES: Overrides = {
    ".spec.reservations[].deviceUUID": st.sampled_from(NODE_UUIDS),
    ".status.workloads[].owner": st.sampled_from(USERS),
}


def _unique(objects: list[Any]) -> list[Any]:
    seen: dict[tuple[str | None, str], Any] = {}
    for obj in objects:
        seen.setdefault((obj.metadata.namespace, obj.metadata.name), obj)
    return list(seen.values())


@functools.cache
def grants() -> st.SearchStrategy[GPUGrant]:
    return kind_objects("gpugrants", "GPUGrant", True, GRANT_OVERRIDES).map(GPUGrant.model_validate)


@functools.cache
def limits() -> st.SearchStrategy[GPURateLimit]:
    return kind_objects("gpuratelimits", "GPURateLimit", False, SUBJECT_OVERRIDES).map(
        GPURateLimit.model_validate
    )


@functools.cache
def exemptions() -> st.SearchStrategy[GPUExemption]:
    return kind_objects("gpuexemptions", "GPUExemption", False, SUBJECT_OVERRIDES).map(
        GPUExemption.model_validate
    )


@functools.cache
def nodes() -> st.SearchStrategy[GPUNode]:
    named = kind_objects("gpunodes", "GPUNode", False, NODE_OVERRIDES)
    return named.map(GPUNode.model_validate)


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    """A cluster of admitted objects of every kind, next to a real agent's node report."""
    drawn_nodes = draw(st.lists(nodes(), max_size=1))
    return Snapshot(
        namespaces=ACCOUNTS,
        limits=_unique([*LIMITS, *draw(st.lists(limits(), max_size=2))]),
        grants=_unique(draw(st.lists(grants(), min_size=1, max_size=3))),
        exemptions=_unique(draw(st.lists(exemptions(), max_size=2))),
        nodes=_unique([NODE, *drawn_nodes]),
    )
