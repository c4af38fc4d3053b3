"""RBAC, judged by the real apiserver for real client-certificate identities."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.controlplane.kube import Kube

STUDENT = ("248835@lab.example", "student")
RESEARCHER = ("mchen@lab.example", "researcher")
APPROVER = ("prof.ada@lab.example", "ds01:approvers")
ADMIN = ("it.admin@lab.example", "ds01:admins")

LIMIT = """
apiVersion: gpu.ds01.io/v1alpha1
kind: GPURateLimit
metadata: {name: rbac-probe}
spec:
  subjects: [{kind: User, name: 248835@lab.example}]
  gpu: {maxGPUEquivalents: 8}
"""
EXEMPTION = """
apiVersion: gpu.ds01.io/v1alpha1
kind: GPUExemption
metadata: {name: rbac-probe}
spec:
  subject: {kind: User, name: 248835@lab.example}
  exemptFrom: [IdleTimeout]
  category: Waiver
  reason: probing RBAC
"""


def grant(namespace: str, name: str, user: str) -> str:
    return f"""
apiVersion: gpu.ds01.io/v1alpha1
kind: GPUGrant
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  subject: {{kind: User, name: "{user}"}}
  gpus: {{count: 1}}
  duration: 1h
  reason: probing RBAC
"""


@pytest.mark.parametrize("manifest", [LIMIT, EXEMPTION], ids=["GPURateLimit", "GPUExemption"])
@pytest.mark.parametrize(
    "who", [STUDENT, RESEARCHER, APPROVER], ids=["student", "researcher", "approver"]
)
def test_only_admins_create_limits_and_exemptions(
    as_user, samples: Path, manifest: str, who: tuple[str, str]
) -> None:
    result = as_user(*who).create(manifest, check=False)
    assert result.returncode != 0
    assert "forbidden" in result.stderr
    assert who[0] in result.stderr


@pytest.mark.parametrize("manifest", [LIMIT, EXEMPTION], ids=["GPURateLimit", "GPUExemption"])
def test_admin_creates_limits_and_exemptions(as_user, samples: Path, manifest: str) -> None:
    admin: Kube = as_user(*ADMIN)
    admin.create(manifest)
    kind = "gpuratelimit" if "GPURateLimit" in manifest else "gpuexemption"
    admin.kubectl("delete", kind, "rbac-probe")


def test_student_requests_grants_only_in_their_own_account(as_user, samples: Path) -> None:
    student: Kube = as_user(*STUDENT)
    student.create(grant("u-248835", "own-request", STUDENT[0]))
    elsewhere = student.create(grant("u-mchen", "foreign-request", STUDENT[0]), check=False)
    assert elsewhere.returncode != 0
    assert 'cannot create resource "gpugrants"' in elsewhere.stderr
    assert 'in the namespace "u-mchen"' in elsewhere.stderr


def test_student_cannot_see_other_accounts_grants(as_user, samples: Path) -> None:
    result = as_user(*STUDENT).kubectl("get", "gpugrants", "-n", "u-mchen", check=False)
    assert result.returncode != 0 and "forbidden" in result.stderr


def test_student_cannot_relabel_their_account(as_user, samples: Path) -> None:
    result = as_user(*STUDENT).kubectl(
        "label",
        "namespace",
        "u-248835",
        "--overwrite",
        "gpu.ds01.io/user=someone-else",
        check=False,
    )
    assert result.returncode != 0 and "forbidden" in result.stderr


def test_everyone_signed_in_reads_limits_but_not_exemptions(as_user, samples: Path) -> None:
    student: Kube = as_user(*STUDENT)
    names = student.kubectl("get", "gpuratelimits", "-o", "name").stdout.split()
    assert "gpuratelimit.gpu.ds01.io/student" in names
    hidden = student.kubectl("get", "gpuexemptions", check=False)
    assert hidden.returncode != 0 and "forbidden" in hidden.stderr


def test_approver_may_update_grants_anywhere_but_not_write_status(
    as_user, admin: Kube, samples: Path
) -> None:
    approver: Kube = as_user(*APPROVER)
    approver.kubectl(
        "patch",
        "gpugrant",
        "neurips-deadline",
        "-n",
        "u-248835",
        "--type=merge",
        "-p",
        '{"metadata": {"annotations": {"gpu.ds01.io/approver-note": "looking"}}}',
    )
    status = approver.kubectl(
        "patch",
        "gpugrant",
        "neurips-deadline",
        "-n",
        "u-248835",
        "--type=merge",
        "--subresource=status",
        "-p",
        '{"status": {"state": "Active"}}',
        check=False,
    )
    assert status.returncode != 0 and "forbidden" in status.stderr
    assert (
        admin.get("gpugrant", "neurips-deadline", "-n", "u-248835").get("status", {}).get("state")
        != "Active"
    )


def test_can_i_matches_the_roles(as_user, samples: Path) -> None:
    cases = [
        (STUDENT, ("create", "gpugrants", "-n", "u-248835"), "yes"),
        (STUDENT, ("create", "gpuratelimits"), "no"),
        (STUDENT, ("update", "gpugrants", "--subresource=status", "-n", "u-248835"), "no"),
        (STUDENT, ("update", "gpugrants", "-n", "u-248835"), "yes"),
        (APPROVER, ("update", "gpugrants", "-n", "u-mchen"), "yes"),
        (APPROVER, ("create", "gpuexemptions"), "no"),
        (ADMIN, ("create", "gpuexemptions"), "yes"),
        (ADMIN, ("update", "namespaces"), "yes"),
    ]
    for who, question, expected in cases:
        answer = as_user(*who).kubectl("auth", "can-i", *question, check=False).stdout.strip()
        assert answer == expected, (who, question, answer)


def test_only_admins_change_account_labels_and_annotations(
    admin: Kube, as_user, samples: Path
) -> None:
    """Even someone RBAC lets edit namespaces cannot touch gpu.ds01.io/ metadata."""
    admin.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "namespace-editor"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["namespaces"],
                    "verbs": ["get", "list", "patch", "update"],
                }
            ],
        }
    )
    admin.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "namespace-editor"},
            "subjects": [
                {
                    "kind": "User",
                    "name": "lab.manager@lab.example",
                    "apiGroup": "rbac.authorization.k8s.io",
                }
            ],
            "roleRef": {
                "kind": "ClusterRole",
                "name": "namespace-editor",
                "apiGroup": "rbac.authorization.k8s.io",
            },
        }
    )
    manager: Kube = as_user("lab.manager@lab.example")
    promoted = manager.kubectl(
        "annotate", "namespace", "u-248835", "--overwrite", "gpu.ds01.io/groups=admin", check=False
    )
    assert promoted.returncode != 0
    assert "ds01-account-labels" in promoted.stderr and "only members of" in promoted.stderr
    relabelled = manager.kubectl(
        "label", "namespace", "u-248835", "--overwrite", "gpu.ds01.io/user=someone", check=False
    )
    assert relabelled.returncode != 0 and "gpu.ds01.io/ labels and annotations" in relabelled.stderr
    # Other metadata stays the manager's to edit.
    manager.kubectl("label", "namespace", "u-248835", "--overwrite", "team=vision")
    ds01_admin: Kube = as_user(*ADMIN)
    ds01_admin.kubectl(
        "annotate", "namespace", "u-248835", "--overwrite", "gpu.ds01.io/groups=student,approver"
    )
    assert (
        admin.get("namespace", "u-248835")["metadata"]["annotations"]["gpu.ds01.io/groups"]
        == "student,approver"
    )
    ds01_admin.kubectl(
        "annotate", "namespace", "u-248835", "--overwrite", "gpu.ds01.io/groups=student"
    )
