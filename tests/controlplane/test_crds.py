"""The CRDs as the real apiserver serves them: established, samples apply, bad input refused."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.controlplane.kube import Kube

GRANT: dict[str, Any] = {
    "apiVersion": "gpu.ds01.io/v1alpha1",
    "kind": "GPUGrant",
    "metadata": {"name": "bad", "namespace": "invalid-cases"},
    "spec": {
        "subject": {"kind": "User", "name": "a@lab.example"},
        "gpus": {"count": 1},
        "duration": "24h",
        "reason": "test",
    },
}
LIMIT: dict[str, Any] = {
    "apiVersion": "gpu.ds01.io/v1alpha1",
    "kind": "GPURateLimit",
    "metadata": {"name": "bad"},
    "spec": {"subjects": [{"kind": "Group", "name": "student"}]},
}
EXEMPTION: dict[str, Any] = {
    "apiVersion": "gpu.ds01.io/v1alpha1",
    "kind": "GPUExemption",
    "metadata": {"name": "bad"},
    "spec": {
        "subject": {"kind": "User", "name": "a@lab.example"},
        "exemptFrom": ["IdleTimeout"],
        "category": "Waiver",
        "reason": "test",
    },
}
NODE: dict[str, Any] = {
    "apiVersion": "gpu.ds01.io/v1alpha1",
    "kind": "GPUNode",
    "metadata": {"name": "bad"},
    "spec": {"enforcement": "Enforce"},
}
UUID = "12345678-1234-1234-1234-123456789abc"


def _with(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``base`` with the dotted ``path`` set to ``value`` (``...`` deletes it)."""
    body = copy.deepcopy(base)
    *parents, leaf = path.split(".")
    node = body
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:
        del node[leaf]
    else:
        node[leaf] = value
    return body


# (case id, object, words the message must contain: the field, then the reason)
INVALID: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    (
        "grant-count-zero",
        _with(GRANT, "spec.gpus.count", 0),
        ("spec.gpus.count", "greater than or equal to 1"),
    ),
    (
        "grant-count-huge",
        _with(GRANT, "spec.gpus.count", 65),
        ("spec.gpus.count", "less than or equal to 64"),
    ),
    (
        "grant-duration-and-expiry",
        _with(GRANT, "spec.expiresAt", "2030-01-01T00:00:00Z"),
        ("spec.expiresAt", "not both"),
    ),
    (
        "grant-expiry-before-start",
        _with(_with(GRANT, "spec.duration", ...), "spec.start", "2030-01-02T00:00:00Z") | {},
        (),
    ),
    (
        "grant-mig-profile-syntax",
        _with(GRANT, "spec.gpus.migProfile", "2g20gb"),
        ("spec.gpus.migProfile", "must be a MIG profile such as 1g.10gb"),
    ),
    (
        "grant-duration-syntax",
        _with(GRANT, "spec.duration", "3 days"),
        ("spec.duration", "must be a duration such as 30m"),
    ),
    (
        "grant-duration-zero",
        _with(GRANT, "spec.duration", "0s"),
        ("spec.duration", "longer than zero"),
    ),
    (
        "grant-duration-over-a-year",
        _with(GRANT, "spec.duration", "9000h"),
        ("spec.duration", "at most 8760h"),
    ),
    (
        "grant-host-without-node",
        _with(GRANT, "spec.access", "Host"),
        ("spec.placement", "must name its node"),
    ),
    (
        "grant-access-unknown",
        _with(GRANT, "spec.access", "Shell"),
        ("spec.access", "Unsupported value"),
    ),
    (
        "grant-for-a-group",
        _with(GRANT, "spec.subject.kind", "Group"),
        ("spec.subject.kind", "must be User"),
    ),
    ("grant-without-reason", _with(GRANT, "spec.reason", ...), ("spec.reason", "Required value")),
    ("grant-empty-reason", _with(GRANT, "spec.reason", ""), ("spec.reason", "at least 1 chars")),
    (
        "grant-device-count-mismatch",
        _with(GRANT, "spec.placement", {"deviceUUIDs": [f"GPU-{UUID}", f"GPU-{UUID[:-1]}d"]}),
        ("spec.placement.deviceUUIDs", "exactly spec.gpus.count"),
    ),
    (
        "grant-device-uuid-syntax",
        _with(GRANT, "spec.placement", {"deviceUUIDs": ["GPU-0"]}),
        ("spec.placement.deviceUUIDs[0]", "must be a device UUID"),
    ),
    (
        "grant-mig-uuid-for-full-gpu",
        _with(GRANT, "spec.placement", {"deviceUUIDs": [f"MIG-{UUID}"]}),
        ("spec.placement.deviceUUIDs", "must be GPU- UUIDs"),
    ),
    (
        "grant-subject-name-syntax",
        _with(GRANT, "spec.subject.name", "bad name"),
        ("spec.subject.name", "no spaces"),
    ),
    ("limit-no-subjects", _with(LIMIT, "spec.subjects", []), ("spec.subjects", "at least 1 items")),
    (
        "limit-duplicate-subjects",
        _with(
            LIMIT, "spec.subjects", [{"kind": "Group", "name": "a"}, {"kind": "Group", "name": "a"}]
        ),
        ("spec.subjects", "must not repeat"),
    ),
    (
        "limit-gpueq-word",
        _with(LIMIT, "spec.gpu", {"maxGPUEquivalents": "lots"}),
        ("spec.gpu.maxGPUEquivalents", "must be GPU-equivalents"),
    ),
    (
        "limit-gpueq-negative",
        _with(LIMIT, "spec.gpu", {"maxGPUEquivalents": -1}),
        ("spec.gpu.maxGPUEquivalents", "must be GPU-equivalents"),
    ),
    (
        "limit-unlimited-lowercase",
        _with(LIMIT, "spec.rates", {"maxWorkloads": "unlimited"}),
        ("spec.rates.maxWorkloads", "or Unlimited"),
    ),
    (
        "limit-idle-timeout-word",
        _with(LIMIT, "spec.lifecycle", {"idleTimeout": "forever"}),
        ("spec.lifecycle.idleTimeout", "must be a duration"),
    ),
    (
        "limit-utilisation-over-100",
        _with(LIMIT, "spec.lifecycle", {"idle": {"gpuUtilizationBelowPercent": 150}}),
        ("spec.lifecycle.idle.gpuUtilizationBelowPercent", "less than or equal to 100"),
    ),
    (
        "limit-workload-type-twice",
        _with(
            LIMIT, "spec.lifecycle", {"byWorkloadType": [{"type": "docker"}, {"type": "docker"}]}
        ),
        ("spec.lifecycle.byWorkloadType[1]", "Duplicate value"),
    ),
    (
        "limit-workload-type-unknown",
        _with(LIMIT, "spec.lifecycle", {"byWorkloadType": [{"type": "vm"}]}),
        ("spec.lifecycle.byWorkloadType[0].type", "Unsupported value"),
    ),
    (
        "limit-mig-profile-syntax",
        _with(LIMIT, "spec.gpu", {"allowedMIGProfiles": ["big"]}),
        ("spec.gpu.allowedMIGProfiles[0]", "must be a MIG profile"),
    ),
    (
        "limit-memory-quantity",
        _with(LIMIT, "spec.resources", {"perWorkload": {"memory": {"max": "lots"}}}),
        ("spec.resources.perWorkload.memory.max", "must be a quantity"),
    ),
    (
        "limit-approval-mode",
        _with(LIMIT, "spec.grants", {"approval": "Sometimes"}),
        ("spec.grants.approval", "Unsupported value"),
    ),
    (
        "limit-priority-negative",
        _with(LIMIT, "spec.priority", -5),
        ("spec.priority", "greater than or equal to 0"),
    ),
    (
        "exemption-nothing-exempt",
        _with(EXEMPTION, "spec.exemptFrom", []),
        ("spec.exemptFrom", "at least 1 items"),
    ),
    (
        "exemption-unknown-rule",
        _with(EXEMPTION, "spec.exemptFrom", ["Everything"]),
        ("spec.exemptFrom[0]", "Unsupported value"),
    ),
    (
        "exemption-without-category",
        _with(EXEMPTION, "spec.category", ...),
        ("spec.category", "Required value"),
    ),
    (
        "exemption-host-access-for-group",
        _with(_with(EXEMPTION, "spec.exemptFrom", ["HostAccess"]), "spec.subject.kind", "Group"),
        ("spec.subject.kind", "one person"),
    ),
    (
        "exemption-expiry-before-start",
        _with(
            _with(EXEMPTION, "spec.startsAt", "2030-01-02T00:00:00Z"),
            "spec.expiresAt",
            "2030-01-01T00:00:00Z",
        ),
        ("spec.expiresAt", "after spec.startsAt"),
    ),
    (
        "node-enforcement-mode",
        _with(NODE, "spec.enforcement", "Strict"),
        ("spec.enforcement", "Unsupported value"),
    ),
]
# The expiry-before-start grant is built separately: it needs start and expiresAt, no duration.
INVALID[3] = (
    "grant-expiry-before-start",
    _with(
        _with(_with(GRANT, "spec.duration", ...), "spec.start", "2030-01-02T00:00:00Z"),
        "spec.expiresAt",
        "2030-01-01T00:00:00Z",
    ),
    ("spec.expiresAt", "must be after spec.start"),
)


@pytest.fixture(scope="module")
def invalid_cases_namespace(admin: Kube) -> str:
    return admin.namespace("invalid-cases")


def test_crds_are_established(admin: Kube) -> None:
    crds = admin.get("crd")["items"]
    ours = {c["metadata"]["name"]: c for c in crds if c["spec"]["group"] == "gpu.ds01.io"}
    assert set(ours) == {
        "gpuratelimits.gpu.ds01.io",
        "gpugrants.gpu.ds01.io",
        "gpuexemptions.gpu.ds01.io",
        "gpunodes.gpu.ds01.io",
    }
    for name, crd in ours.items():
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True", name
        assert conditions.get("NamesAccepted") == "True", name


def test_every_sample_applies(admin: Kube, samples: Path) -> None:
    for kind, expected in (("gpuratelimits", 5), ("gpuexemptions", 1)):
        assert len(admin.get(kind)["items"]) == expected
    grants = admin.get("gpugrants", "-A")["items"]
    assert {(g["metadata"]["namespace"], g["metadata"]["name"]) for g in grants} >= {
        ("u-248835", "neurips-deadline"),
        ("u-mchen", "nsight-profiling"),
    }
    account = admin.get("namespace", "u-248835")["metadata"]
    assert account["labels"]["gpu.ds01.io/user"] == "248835-lab.example"
    assert account["annotations"]["gpu.ds01.io/groups"] == "student"


def test_unlimited_is_stored_as_written(admin: Kube, samples: Path) -> None:
    admin_limits = admin.get("gpuratelimit", "admin")["spec"]
    assert admin_limits["gpu"]["maxGPUEquivalents"] == "Unlimited"
    assert admin_limits["resources"]["perUser"]["memory"] == "Unlimited"


@pytest.mark.parametrize(("case", "body", "words"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_resource_is_refused_naming_the_field(
    admin: Kube,
    invalid_cases_namespace: str,
    case: str,
    body: dict[str, Any],
    words: tuple[str, ...],
) -> None:
    result = admin.create(_with(body, "metadata.name", case), check=False)
    assert result.returncode != 0, f"{case} was accepted"
    message = result.stderr
    assert "is invalid" in message, message
    for word in words:
        assert word in message, f"{case}: {word!r} not in {message!r}"
    # A person reads this: no CEL internals, no raw regular expressions.
    assert "conversion error" not in message and "should match '^" not in message, message


def test_a_valid_base_object_of_each_kind_is_accepted(
    admin: Kube, invalid_cases_namespace: str
) -> None:
    """The invalid cases differ from these in one field, so each refusal is about that field."""
    for body in (GRANT, LIMIT, EXEMPTION, NODE):
        valid = _with(body, "metadata.name", "valid-base")
        admin.create(valid)
        admin.kubectl("delete", body["kind"].lower(), "valid-base", "-n", invalid_cases_namespace)


def test_subject_of_a_grant_cannot_change(admin: Kube, invalid_cases_namespace: str) -> None:
    admin.create(_with(GRANT, "metadata.name", "immutable-subject"))
    patch = json.dumps({"spec": {"subject": {"kind": "User", "name": "someone-else"}}})
    result = admin.kubectl(
        "patch",
        "gpugrant",
        "immutable-subject",
        "-n",
        invalid_cases_namespace,
        "--type=merge",
        "-p",
        patch,
        check=False,
    )
    assert result.returncode != 0
    assert "spec.subject" in result.stderr and "cannot be changed" in result.stderr


def test_requested_by_comes_from_the_identity_not_the_client(
    admin: Kube, invalid_cases_namespace: str
) -> None:
    """The MutatingAdmissionPolicy stamps requestedBy on create and keeps it on every update."""
    admin.create(
        _with(_with(GRANT, "metadata.name", "requested-once"), "spec.requestedBy", "a@lab.example")
    )
    stored = admin.get("gpugrant", "requested-once", "-n", invalid_cases_namespace)
    assert stored["spec"]["requestedBy"] == "ds01-dev-admin"
    patch = json.dumps({"spec": {"requestedBy": "mallory@lab.example"}})
    admin.kubectl(
        "patch",
        "gpugrant",
        "requested-once",
        "-n",
        invalid_cases_namespace,
        "--type=merge",
        "-p",
        patch,
    )
    stored = admin.get("gpugrant", "requested-once", "-n", invalid_cases_namespace)
    assert stored["spec"]["requestedBy"] == "ds01-dev-admin"


def test_explain_teaches_the_api(admin: Kube) -> None:
    out = admin.kubectl("explain", "gpugrant.spec.gpus.migProfile").stdout
    assert "MIG profile of each slice" in out
    out = admin.kubectl("explain", "gpuratelimit.spec.gpu.maxGPUEquivalents").stdout
    assert "GPU-equivalents held at once" in out
    out = admin.kubectl("explain", "gpunode.status.devices.migInstances.capabilityDevice").stdout
    assert "nvidia-caps" in out
    out = admin.kubectl("explain", "gpuexemption.spec.exemptFrom").stdout
    assert "HostAccess" in out


def test_served_openapi_describes_every_field(admin: Kube) -> None:
    """What `kubectl explain` reads: the apiserver's OpenAPI v3 for the group."""
    document = json.loads(
        admin.kubectl("get", "--raw", "/openapi/v3/apis/gpu.ds01.io/v1alpha1").stdout
    )
    schemas = document["components"]["schemas"]
    missing: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        for name, child in node.get("properties", {}).items():
            if (
                path.count(".") >= 1
                and not child.get("description")
                and name not in ("apiVersion", "kind", "metadata")
            ):
                missing.append(f"{path}.{name}")
            walk(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], path + "[]")

    kinds = [k for k in schemas if k.startswith("io.ds01.gpu.v1alpha1.") and not k.endswith("List")]
    assert len(kinds) == 4
    for name in kinds:
        walk(schemas[name], name.rsplit(".", 1)[-1])
    assert missing == []


def test_get_shows_the_printer_columns(admin: Kube, invalid_cases_namespace: str) -> None:
    name = "columns"
    admin.create(
        _with(
            _with(GRANT, "metadata.name", name), "spec.gpus", {"count": 2, "migProfile": "2g.20gb"}
        )
    )
    status = {
        "status": {
            "state": "Active",
            "window": {"start": "2026-11-25T10:00:00Z", "end": "2026-11-28T10:00:00Z"},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Active",
                    "message": "active",
                    "lastTransitionTime": "2026-11-25T10:00:00Z",
                }
            ],
        }
    }
    admin.kubectl(
        "patch",
        "gpugrant",
        name,
        "-n",
        invalid_cases_namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )
    out = admin.kubectl("get", "gpugrants", name, "-n", invalid_cases_namespace).stdout.splitlines()
    assert out[0].split() == [
        "NAME",
        "SUBJECT",
        "GPUS",
        "PROFILE",
        "ACCESS",
        "STATE",
        "EXPIRES",
        "READY",
        "AGE",
    ]
    assert out[1].split()[:8] == [
        name,
        "a@lab.example",
        "2",
        "2g.20gb",
        "Container",
        "Active",
        "2026-11-28T10:00:00Z",
        "True",
    ]
    wide = admin.kubectl("get", "gg", name, "-n", invalid_cases_namespace, "-o", "wide").stdout
    assert "REQUESTED-BY" in wide and "REASON" in wide


def test_kinds_are_in_the_ds01_category(admin: Kube, samples: Path) -> None:
    out = admin.kubectl("get", "ds01", "-A", "-o", "name").stdout
    assert "gpuratelimit.gpu.ds01.io/student" in out
    assert "gpugrant.gpu.ds01.io/neurips-deadline" in out
    assert "gpuexemption.gpu.ds01.io/mchen-protein-folding" in out
