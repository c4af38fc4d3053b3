"""Precedence: defaults, then Group limits by priority, then User limits, field by field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from controller.api.kinds import GPURateLimit, parse
from controller.api.ratelimit import GPURateLimitSpec
from controller.devcluster.binaries import source_root
from controller.policy.defaults import BUILT_IN, DEFAULT_SOURCE
from controller.policy.effective import NamedLimit, effective_limits, leaves


def limit(name: str, subjects: list[tuple[str, str]], priority: int = 0, **spec: Any) -> NamedLimit:
    body = {"subjects": [{"kind": k, "name": n} for k, n in subjects], "priority": priority, **spec}
    return NamedLimit(name, GPURateLimitSpec.model_validate(body))


def samples() -> list[NamedLimit]:
    path = Path(source_root(), "manifests", "samples", "ratelimits.yaml")
    out = []
    for doc in yaml.safe_load_all(path.read_text()):
        model = parse(doc)
        assert isinstance(model, GPURateLimit)
        out.append(NamedLimit(model.metadata.name, model.spec))
    return out


def test_user_nobody_names_gets_the_built_in_defaults() -> None:
    effective = effective_limits("stranger@lab.example", (), samples())
    assert effective.applied == ()
    assert effective.spec.gpu == BUILT_IN.gpu
    assert effective.source_of("gpu.maxGPUEquivalents") == DEFAULT_SOURCE


def test_group_limit_overlays_defaults_field_by_field() -> None:
    effective = effective_limits("248835@lab.example", ("student",), samples())
    assert effective.applied == ("workload-types", "student")
    assert effective.spec.gpu is not None and effective.spec.gpu.max_gpu_equivalents == 2
    assert effective.source_of("gpu.maxGPUEquivalents") == "GPURateLimit/student"
    # The student limit sets no stopGracePeriod: it stays the default.
    assert (
        effective.spec.lifecycle is not None and effective.spec.lifecycle.stop_grace_period == "60s"
    )
    # byWorkloadType merges per type: workload-types set devcontainer, defaults set the rest.
    types = {o.type: o for o in effective.spec.lifecycle.by_workload_type or ()}
    assert types["devcontainer"].max_runtime == "168h"
    assert (
        effective.source_of("lifecycle.byWorkloadType[devcontainer].maxRuntime")
        == "GPURateLimit/workload-types"
    )


def test_higher_priority_group_wins_and_user_limits_come_last() -> None:
    limits = [
        limit("researchers", [("Group", "researcher")], 20, gpu={"maxGPUEquivalents": 4}),
        limit(
            "students",
            [("Group", "student")],
            10,
            gpu={"maxGPUEquivalents": 2, "maxDevicesPerWorkload": 2},
        ),
        limit("alice", [("User", "alice")], 0, gpu={"maxGPUEquivalents": 1}),
    ]
    both = effective_limits("bob", ("student", "researcher"), limits)
    assert both.spec.gpu is not None
    assert both.spec.gpu.max_gpu_equivalents == 4
    assert both.spec.gpu.max_devices_per_workload == 2  # from the lower layer, untouched above
    alice = effective_limits("alice", ("student", "researcher"), limits)
    assert alice.spec.gpu is not None and alice.spec.gpu.max_gpu_equivalents == 1
    assert alice.applied == ("students", "researchers", "alice")


def test_same_priority_conflict_resolved_by_name_and_reported() -> None:
    limits = [
        limit("b-lab", [("Group", "lab")], 10, gpu={"maxGPUEquivalents": 3}),
        limit("a-course", [("Group", "course")], 10, gpu={"maxGPUEquivalents": 1}),
    ]
    effective = effective_limits("carol", ("lab", "course"), limits)
    assert effective.spec.gpu is not None and effective.spec.gpu.max_gpu_equivalents == 3
    assert [(c.field, c.winner, c.loser) for c in effective.conflicts] == [
        ("gpu.maxGPUEquivalents", "b-lab", "a-course")
    ]


def test_same_priority_agreement_is_no_conflict() -> None:
    limits = [
        limit("a", [("Group", "x")], 5, gpu={"maxGPUEquivalents": 2}),
        limit("b", [("Group", "y")], 5, gpu={"maxGPUEquivalents": 2}),
    ]
    assert effective_limits("d", ("x", "y"), limits).conflicts == ()


values = st.one_of(st.integers(0, 16), st.just("Unlimited"))


@given(st.lists(st.tuples(st.integers(0, 3), values), min_size=1, max_size=6), values)
def test_user_limit_always_wins_and_highest_group_otherwise(
    groups: list[tuple[int, int | str]], user_value: int | str
) -> None:
    layers = [
        limit(f"g{i}", [("Group", "grp")], p, gpu={"maxGPUEquivalents": v})
        for i, (p, v) in enumerate(groups)
    ]
    grouped = effective_limits("u", ("grp",), layers)
    top = max(range(len(groups)), key=lambda i: (groups[i][0], f"g{i}"))
    assert grouped.spec.gpu is not None and grouped.spec.gpu.max_gpu_equivalents == groups[top][1]
    with_user = effective_limits(
        "u",
        ("grp",),
        [*layers, limit("u", [("User", "u")], 0, gpu={"maxGPUEquivalents": user_value})],
    )
    assert with_user.spec.gpu is not None and with_user.spec.gpu.max_gpu_equivalents == user_value


def test_effective_policy_is_complete() -> None:
    """Every leaf the defaults set is still set after merging the samples, for every group."""
    default_paths = {path for path, _ in leaves(BUILT_IN)}
    for groups in [("student",), ("researcher",), ("faculty",), ("admin",), ()]:
        merged = {path for path, _ in leaves(effective_limits("x", groups, samples()).spec)}
        assert default_paths <= merged
