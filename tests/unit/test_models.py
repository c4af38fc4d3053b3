"""The models parse what the apiserver stores and refuse what the CRD refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from controller.api.kinds import GPUGrant, GPURateLimit, parse
from controller.api.values import CountLimit, DurationLimit, GPUEquivalentLimit, MIGProfile
from controller.devcluster.binaries import source_root

SAMPLES = source_root() / "manifests" / "samples"


def _sample_objects() -> list[dict]:
    docs = []
    for path in sorted(Path(SAMPLES).glob("*.yaml")):
        docs += [
            d
            for d in yaml.safe_load_all(path.read_text())
            if d and d.get("apiVersion", "").startswith("gpu.ds01.io/")
        ]
    return docs


def test_every_sample_parses_into_its_model() -> None:
    objects = _sample_objects()
    kinds = {o["kind"] for o in objects}
    assert kinds == {"GPURateLimit", "GPUGrant", "GPUExemption"}
    for body in objects:
        wire = parse(body).to_wire()
        assert _contains(wire["spec"], body["spec"]), body["metadata"]["name"]


def _contains(wire: object, written: object) -> bool:
    """Whether everything the sample wrote survives a parse and dump unchanged."""
    if isinstance(written, dict):
        return isinstance(wire, dict) and all(
            k in wire and _contains(wire[k], v) for k, v in written.items()
        )
    if isinstance(written, list):
        return (
            isinstance(wire, list)
            and len(wire) == len(written)
            and all(map(_contains, wire, written))
        )
    return wire == written


def test_sample_limits_carry_ds01_numbers() -> None:
    limits = {
        o["metadata"]["name"]: parse(o) for o in _sample_objects() if o["kind"] == "GPURateLimit"
    }
    student, researcher, admin = limits["student"], limits["researcher"], limits["admin"]
    assert isinstance(student, GPURateLimit)
    assert student.spec.gpu and student.spec.gpu.max_gpu_equivalents == 2
    assert researcher.spec.gpu and researcher.spec.gpu.max_devices_per_workload == 3
    assert admin.spec.gpu and admin.spec.gpu.max_gpu_equivalents == "Unlimited"
    assert student.spec.lifecycle and student.spec.lifecycle.idle_timeout == "30m"


def test_grant_round_trips_in_camel_case() -> None:
    body = {
        "apiVersion": "gpu.ds01.io/v1alpha1",
        "kind": "GPUGrant",
        "metadata": {"name": "g", "namespace": "u-a"},
        "spec": {
            "subject": {"kind": "User", "name": "a@lab.example"},
            "gpus": {"count": 1, "migProfile": "1g.10gb"},
            "placement": {"deviceUUIDs": ["MIG-12345678-1234-1234-1234-123456789abc"]},
            "reason": "r",
        },
    }
    grant = parse(body)
    assert isinstance(grant, GPUGrant)
    assert grant.spec.placement is not None
    assert grant.spec.placement.device_uuids == ["MIG-12345678-1234-1234-1234-123456789abc"]
    wire = grant.to_wire()
    assert wire["spec"]["placement"]["deviceUUIDs"] == ["MIG-12345678-1234-1234-1234-123456789abc"]
    assert wire["spec"]["access"] == "Container"


def test_unknown_kind_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="kind: 'Pod'"):
        parse({"kind": "Pod"})


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (3, True),
        ("3", True),
        ("Unlimited", True),
        (-1, False),
        ("lots", False),
        ("unlimited", False),
    ],
)
def test_count_limit(value: object, ok: bool) -> None:
    adapter = TypeAdapter(CountLimit)
    if ok:
        adapter.validate_python(value)
    else:
        with pytest.raises(ValidationError):
            adapter.validate_python(value)


@pytest.mark.parametrize(
    ("value", "ok"),
    [(2, True), ("0.5", True), ("Unlimited", True), ("1.2345", False), ("-1", False)],
)
def test_gpu_equivalent_limit(value: object, ok: bool) -> None:
    adapter = TypeAdapter(GPUEquivalentLimit)
    if ok:
        adapter.validate_python(value)
    else:
        with pytest.raises(ValidationError):
            adapter.validate_python(value)


@pytest.mark.parametrize(
    ("value", "ok"),
    [("30m", True), ("1h30m", True), ("Unlimited", True), ("3 days", False), ("2d", False)],
)
def test_duration_limit(value: str, ok: bool) -> None:
    adapter = TypeAdapter(DurationLimit)
    if ok:
        adapter.validate_python(value)
    else:
        with pytest.raises(ValidationError):
            adapter.validate_python(value)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("1g.10gb", True),
        ("2g.20gb", True),
        ("7g.80gb", True),
        ("1g.10gb+me", True),
        ("2g20gb", False),
        ("0g.10gb", False),
        ("1g.10GB", False),
    ],
)
def test_mig_profile(value: str, ok: bool) -> None:
    adapter = TypeAdapter(MIGProfile)
    if ok:
        adapter.validate_python(value)
    else:
        with pytest.raises(ValidationError):
            adapter.validate_python(value)
