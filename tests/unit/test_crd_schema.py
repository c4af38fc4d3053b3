"""The CRDs are rendered from the models, follow the structural rules, and are committed current."""

from __future__ import annotations

import json
from typing import Annotated

import pytest
import yaml
from pydantic import Field

from controller.api.base import Model, camel
from controller.api.crd import KindInfo, openapi_schema, problems, render
from controller.api.kinds import ALL_KINDS
from controller.cli.crds import drift
from controller.devcluster.binaries import source_root

CRD_DIR = source_root() / "crds"


def test_committed_crds_match_a_fresh_render() -> None:
    diffs = drift(CRD_DIR)
    assert diffs == [], "run `ds01 crds render`:\n" + "".join(diffs)


@pytest.mark.parametrize("info", ALL_KINDS, ids=lambda i: i.kind)
def test_schema_is_structural_and_bounded(info: KindInfo) -> None:
    crd = render(info)
    text = json.dumps(crd)
    for forbidden in (
        '"$ref"',
        '"$defs"',
        '"additionalProperties": false',
        '{"type": "null"}',
        '"title"',
    ):
        assert forbidden not in text, f"{info.kind} CRD contains {forbidden}"
    version = crd["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    assert problems(root["properties"]["spec"], "spec") == []
    assert problems(root["properties"]["status"], "status") == []
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["categories"] == ["ds01"]
    assert crd["spec"]["names"]["shortNames"], "every kind has short names"
    column_names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert column_names[-2:] == ["Ready", "Age"]


def test_grant_columns_are_what_a_person_wants() -> None:
    columns = {
        c["name"]: c
        for c in render(ALL_KINDS[1])["spec"]["versions"][0]["additionalPrinterColumns"]
    }
    for wanted in ("Subject", "GPUs", "State", "Expires", "Age"):
        assert wanted in columns


def test_checker_reports_what_breaks_the_rules() -> None:
    class Loose(Model):
        documented: Annotated[str, Field(max_length=8)]
        """Has a bound and a description."""
        undocumented: Annotated[str, Field(max_length=8)]
        unbounded: str
        """No maxLength."""
        items: list[int]
        """No maxItems."""

    found = problems(openapi_schema(Loose), "loose")
    assert "loose.undocumented: no description" in found
    assert "loose.unbounded: string without maxLength or enum" in found
    assert "loose.items: list without maxItems" in found
    assert not any(p.startswith("loose.documented") for p in found)


def test_optional_fields_are_not_nullable_and_not_required() -> None:
    spec = openapi_schema(ALL_KINDS[1].spec)
    assert set(spec["required"]) == {"subject", "gpus", "reason"}
    assert spec["properties"]["expiresAt"]["type"] == "string"
    assert "nullable" not in json.dumps(spec)


def test_cross_field_rules_are_on_the_grant_spec() -> None:
    rules = {r["message"] for r in openapi_schema(ALL_KINDS[1].spec)["x-kubernetes-validations"]}
    assert "set spec.duration or spec.expiresAt, not both" in rules
    assert "spec.expiresAt must be after spec.start" in rules


@pytest.mark.parametrize(
    ("name", "wire"),
    [
        ("max_gpu_equivalents", "maxGPUEquivalents"),
        ("device_uuids", "deviceUUIDs"),
        ("allowed_mig_profiles", "allowedMIGProfiles"),
        ("gpus", "gpus"),
        ("linux_user", "linuxUser"),
        ("pci_bus_id", "pciBusID"),
    ],
)
def test_camel_keeps_acronyms_upper_case(name: str, wire: str) -> None:
    assert camel(name) == wire


def test_every_committed_crd_is_loadable_yaml() -> None:
    for path in CRD_DIR.glob("*.gpu.ds01.io.yaml"):
        crd = yaml.safe_load(path.read_text())
        assert crd["kind"] == "CustomResourceDefinition"
        assert crd["metadata"]["name"] == path.name.removesuffix(".yaml")
