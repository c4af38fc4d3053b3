"""Pods as quotas count them, and Kubernetes quantities as exact numbers."""

from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction

import pytest

from controller.policy.pods import parse_pod
from controller.policy.quantity import format_quantity, parse_quantity, same_quantities


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2", Fraction(2)),
        (3, Fraction(3)),
        ("500m", Fraction(1, 2)),
        ("0.5", Fraction(1, 2)),
        ("1.5Gi", Fraction(3 * 1024**3, 2)),
        ("32Gi", Fraction(32 * 1024**3)),
        ("1k", Fraction(1000)),
        ("1e3", Fraction(1000)),
        ("100n", Fraction(1, 10_000_000)),
    ],
)
def test_quantities_parse_exactly(text: str | int, value: Fraction) -> None:
    assert parse_quantity(text) == value


def test_bad_quantities_are_refused_and_formatting_is_canonical() -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity("lots")
    assert format_quantity(Fraction(5, 2)) == "2500m"
    assert format_quantity(Fraction(16)) == "16"
    assert format_quantity(Fraction(48 * 1024**3), memory=True) == "48Gi"
    assert format_quantity(Fraction(1536 * 1024**2), memory=True) == "1536Mi"
    assert format_quantity(Fraction(0), memory=True) == "0"
    assert same_quantities({"cpu": "500m"}, {"cpu": "0.5"})
    assert not same_quantities({"cpu": "500m"}, {"cpu": "0.5", "pods": "1"})
    assert not same_quantities({"cpu": "oops"}, {"cpu": "1"})


def pod_body(**spec: object) -> dict[str, object]:
    return {
        "metadata": {
            "name": "p",
            "namespace": "u-a",
            "uid": "u1",
            "creationTimestamp": "2026-11-25T12:00:00Z",
        },
        "spec": spec,
        "status": {"phase": "Pending"},
    }


def container(name: str, **limits: str) -> dict[str, object]:
    return {"name": name, "resources": {"requests": limits, "limits": limits}}


def test_effective_requests_follow_kubernetes_rules() -> None:
    pod = parse_pod(
        pod_body(
            containers=[container("a", cpu="1"), container("b", cpu="2")],
            initContainers=[
                {**container("sidecar", cpu="500m"), "restartPolicy": "Always"},
                container("setup", cpu="4"),
            ],
            overhead={"cpu": "100m"},
        )
    )
    # max(app 3 + sidecar 0.5, init 4 + sidecar 0.5) + overhead 0.1
    assert pod.requests["cpu"] == Fraction(46, 10)
    assert pod.created == datetime(2026, 11, 25, 12, tzinfo=UTC)
    assert not pod.terminal


def test_gpu_requests_and_terminal_pods() -> None:
    gpu = parse_pod(
        pod_body(
            containers=[
                container("a", **{"gpu.ds01.io/gpu": "1"}),
                container("b", **{"gpu.ds01.io/mig-2g.20gb": "2", "memory": "1Gi"}),
            ]
        )
    )
    assert gpu.gpu_requests() == {"gpu.ds01.io/gpu": 1, "gpu.ds01.io/mig-2g.20gb": 2}
    done = parse_pod({**pod_body(containers=[]), "status": {"phase": "Succeeded"}})
    assert done.terminal and done.gpu_requests() == {}
