"""The admission matrix: every class of pod escape, judged by the real apiserver.

Three namespaces separate the two layers, so each is proved on its own:

- `u-escapee`, an account whose Pod Security level an admin set to privileged:
  ds01-pod-security alone stands between the student and the node;
- `psa-only`, not an account (ds01-pod-security does not apply) but labelled
  as the operator labels accounts: Pod Security Admission alone;
- `u-guarded`, an account as the operator keeps it: both layers.

The student holds a real client certificate; requests are server-side dry
runs (judged by every admission step, stored nowhere), so the matrix is fast
and leaves nothing behind. Escapes come from `tests/controlplane/escapes.py`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from controller.devcluster.controlplane import LocalCluster
from controller.policy.accounts import AccountSettings, pod_security_labels
from tests.controlplane.escapes import ESCAPES, Escape, base_pod
from tests.controlplane.kube import Kube

STUDENT = "escapee@lab.example"
VAP = "ValidatingAdmissionPolicy 'ds01-pod-security'"
PSA = 'violates PodSecurity "baseline:latest"'
ADVICE = re.compile(r"; (remove|use|ask|write|reach)\b")


@dataclass(frozen=True)
class Matrix:
    student: Kube
    admin: Kube
    alone: str
    psa_only: str
    guarded: str
    target: str
    """A real pod in `alone` that ephemeral containers are added to."""


def verdict(kube: Kube, namespace: str, body: dict[str, Any]) -> tuple[int, str]:
    """(0, "") when admitted, else (HTTP status, the apiserver's message)."""
    try:
        kube.core.create_namespaced_pod(namespace, body, dry_run="All")
    except ApiException as error:
        return error.status, str(json.loads(error.body).get("message", error.body))
    return 0, ""


def ephemeral_verdict(
    kube: Kube, namespace: str, pod: str, patch: dict[str, Any]
) -> tuple[int, str]:
    try:
        kube.core.patch_namespaced_pod_ephemeralcontainers(pod, namespace, patch, dry_run="All")
    except ApiException as error:
        return error.status, str(json.loads(error.body).get("message", error.body))
    return 0, ""


def bind(admin: Kube, namespace: str, role: str, kind: str = "ClusterRole") -> None:
    admin.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": f"escapee-{role}", "namespace": namespace},
            "subjects": [
                {"kind": "User", "name": STUDENT, "apiGroup": "rbac.authorization.k8s.io"}
            ],
            "roleRef": {"kind": kind, "name": role, "apiGroup": "rbac.authorization.k8s.io"},
        }
    )


def account_namespace(admin: Kube, name: str, labels: dict[str, str]) -> str:
    return admin.namespace(
        name,
        {"gpu.ds01.io/user": "escapee-lab.example", **labels},
        {"gpu.ds01.io/user-name": STUDENT, "gpu.ds01.io/groups": "student"},
    )


@pytest.fixture(scope="module")
def matrix(cluster: LocalCluster, admin: Kube, as_user) -> Matrix:  # type: ignore[no-untyped-def]
    operator_labels = pod_security_labels({}, AccountSettings())
    relaxed = pod_security_labels({"gpu.ds01.io/pod-security": "privileged"}, AccountSettings())
    alone = account_namespace(admin, "u-escapee", relaxed)
    guarded = account_namespace(admin, "u-guarded", operator_labels)
    psa_only = admin.namespace("psa-only", operator_labels)
    for namespace in (alone, guarded, psa_only):
        bind(admin, namespace, "ds01-user")
    # `kubectl debug` rights, which ds01-user does not give: so that ephemeral
    # containers reach admission at all, as they would for anyone granted them.
    admin.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "debugger", "namespace": alone},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods/ephemeralcontainers"],
                    "verbs": ["get", "update", "patch"],
                }
            ],
        }
    )
    bind(admin, alone, "debugger", kind="Role")
    admin.apply(
        {
            "apiVersion": "node.k8s.io/v1",
            "kind": "RuntimeClass",
            "metadata": {"name": "kata"},
            "handler": "kata",
        }
    )
    student: Kube = as_user(STUDENT, "student")
    target = base_pod("escape-target")
    student.core.create_namespaced_pod(alone, target)
    return Matrix(student, admin, alone, psa_only, guarded, target["metadata"]["name"])


def refused_by_us(status: int, message: str, escape: Escape, field: str) -> None:
    assert status == 403, f"{escape.name} was {'admitted' if status == 0 else message}"
    assert VAP in message, message
    assert field in message, message
    assert ADVICE.search(message), f"the refusal does not say what to do: {message}"


@pytest.mark.parametrize("escape", ESCAPES, ids=lambda e: e.name)
def test_each_pod_escape_is_refused_for_a_student_by_ds01_pod_security_alone(
    matrix: Matrix, escape: Escape
) -> None:
    status, message = verdict(matrix.student, matrix.alone, escape.pod())
    refused_by_us(status, message, escape, escape.expected_field())


@pytest.mark.parametrize("escape", [e for e in ESCAPES if e.container_level], ids=lambda e: e.name)
def test_container_escapes_are_refused_in_init_containers_too(
    matrix: Matrix, escape: Escape
) -> None:
    status, message = verdict(matrix.student, matrix.alone, escape.pod("initContainers"))
    refused_by_us(status, message, escape, escape.expected_field("initContainers"))


@pytest.mark.parametrize(
    "escape", [e for e in ESCAPES if e.container_level and e.ephemeral], ids=lambda e: e.name
)
def test_container_escapes_are_refused_in_ephemeral_containers_added_through_the_subresource(
    matrix: Matrix, escape: Escape
) -> None:
    status, message = ephemeral_verdict(
        matrix.student, matrix.alone, matrix.target, escape.ephemeral_patch()
    )
    refused_by_us(status, message, escape, escape.expected_field("ephemeralContainers"))


@pytest.mark.parametrize("escape", ESCAPES, ids=lambda e: e.name)
def test_admins_are_held_to_every_rule_but_the_runtime_class_and_volume_type_lists(
    matrix: Matrix, escape: Escape
) -> None:
    status, message = verdict(matrix.admin, matrix.alone, escape.pod())
    if escape.admin:
        assert status == 0, message
    else:
        refused_by_us(status, message, escape, escape.expected_field())


@pytest.mark.parametrize("escape", ESCAPES, ids=lambda e: e.name)
def test_pod_security_admission_alone_refuses_exactly_what_baseline_covers(
    matrix: Matrix, escape: Escape
) -> None:
    """Where PSA admits, ds01-pod-security is the only guard (and the previous tests prove it)."""
    status, message = verdict(matrix.student, matrix.psa_only, escape.pod())
    if escape.psa:
        assert status == 403 and PSA in message, message
    else:
        assert status == 0, message


def normal_gpu_pod(name: str) -> dict[str, Any]:
    """What an ML job asks for: a GPU, shared memory, data, secrets, a notebook port."""
    body = base_pod(name)
    body["spec"]["securityContext"] = {
        "seccompProfile": {"type": "RuntimeDefault"},
        "sysctls": [{"name": "net.ipv4.ip_local_port_range", "value": "32768 60999"}],
    }
    body["spec"]["containers"][0].update(
        {
            "resources": {"limits": {"gpu.ds01.io/gpu": "1", "memory": "16Gi"}},
            "env": [{"name": "CUDA_CACHE_PATH", "value": "/scratch/cuda"}],
            "envFrom": [{"secretRef": {"name": "wandb"}}],
            "ports": [{"containerPort": 8888}],
            "securityContext": {
                "runAsUser": 0,
                "capabilities": {"drop": ["ALL"], "add": ["CHOWN", "SETUID"]},
            },
            "volumeMounts": [
                {"name": "shm", "mountPath": "/dev/shm"},
                {"name": "data", "mountPath": "/data"},
                {"name": "token", "mountPath": "/var/run/secrets/hub"},
            ],
        }
    )
    body["spec"]["volumes"] += [
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "datasets"}},
        {"name": "token", "projected": {"sources": [{"secret": {"name": "hub"}}]}},
        {"name": "conf", "configMap": {"name": "conf"}},
        {
            "name": "info",
            "downwardAPI": {"items": [{"path": "n", "fieldRef": {"fieldPath": "metadata.name"}}]},
        },
        {
            "name": "work",
            "ephemeral": {
                "volumeClaimTemplate": {
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "10Gi"}},
                    }
                }
            },
        },
    ]
    return body


@pytest.mark.parametrize("where", ["alone", "guarded"])
def test_a_normal_gpu_pod_is_admitted_under_both_layers(matrix: Matrix, where: str) -> None:
    namespace = matrix.alone if where == "alone" else matrix.guarded
    status, message = verdict(matrix.student, namespace, normal_gpu_pod("training"))
    assert status == 0, message


def test_the_same_pod_with_one_escape_added_is_refused_in_the_guarded_account(
    matrix: Matrix,
) -> None:
    """The benign pod is not admitted by accident: one forbidden field flips the verdict."""
    body = normal_gpu_pod("training")
    body["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "8"
    status, message = verdict(matrix.student, matrix.guarded, body)
    assert status == 403 and VAP in message
    assert "spec.containers[name=main].resources.limits[nvidia.com/gpu]" in message
    assert "ask for gpu.ds01.io/gpu" in message
