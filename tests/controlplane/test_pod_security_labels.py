"""The operator sets and keeps Pod Security Admission labels on account namespaces.

Only the operator and admins may change them (ds01-account-labels): a lab
manager whom RBAC lets edit namespaces cannot switch enforcement off, and what
an admin changes by hand is put back unless they chose the level for the
account with the annotation gpu.ds01.io/pod-security.
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.devcluster.process import wait_until
from controller.policy.accounts import AccountSettings, pod_security_labels
from tests.controlplane.conftest import OperatorEnv
from tests.controlplane.kube import Kube
from tests.controlplane.test_operator import make_account

PSA = "pod-security.kubernetes.io/"
MANAGER = "lab.manager@lab.example"


def labels(kube: Kube, namespace: str) -> dict[str, str]:
    return dict(kube.core.read_namespace(namespace).metadata.labels or {})


def wait_labels(kube: Kube, namespace: str, expected: dict[str, str], what: str) -> None:
    wait_until(
        lambda: all(labels(kube, namespace).get(k) == v for k, v in expected.items()),
        30,
        what,
        0.2,
    )


@pytest.fixture(scope="module")
def account(operator_env: OperatorEnv) -> str:
    namespace, _ = make_account(operator_env, "psa@lab.example", "student", "psa")
    return namespace


@pytest.fixture(scope="module")
def manager(operator_env: OperatorEnv) -> Kube:
    """Someone RBAC lets label namespaces, who is not a ds01 admin."""
    admin = operator_env.admin
    rule: dict[str, Any] = {
        "apiGroups": [""],
        "resources": ["namespaces"],
        "verbs": ["get", "list", "patch", "update"],
    }
    admin.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "namespace-labeller"},
            "rules": [rule],
        }
    )
    admin.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "namespace-labeller"},
            "subjects": [
                {"kind": "User", "name": MANAGER, "apiGroup": "rbac.authorization.k8s.io"}
            ],
            "roleRef": {
                "kind": "ClusterRole",
                "name": "namespace-labeller",
                "apiGroup": "rbac.authorization.k8s.io",
            },
        }
    )
    return Kube(operator_env.cluster, operator_env.cluster.user_kubeconfig(MANAGER))


def test_the_operator_labels_every_new_account_for_pod_security(
    operator_env: OperatorEnv, account: str
) -> None:
    wait_labels(
        operator_env.admin,
        account,
        pod_security_labels({}, AccountSettings()),
        "the operator's Pod Security labels on the new account",
    )
    assert labels(operator_env.admin, account)[f"{PSA}enforce"] == "baseline"


def test_a_namespace_editor_cannot_relabel_an_account_but_may_label_other_namespaces(
    operator_env: OperatorEnv, account: str, manager: Kube
) -> None:
    wait_labels(operator_env.admin, account, {f"{PSA}enforce": "baseline"}, "baseline")
    for change in (f"{PSA}enforce=privileged", f"{PSA}enforce-version=v1.22", f"{PSA}enforce-"):
        result = manager.kubectl("label", "namespace", account, "--overwrite", change, check=False)
        assert result.returncode != 0, change
        assert "ds01-account-labels" in result.stderr, result.stderr
        assert "are set by the ds01 operator" in result.stderr, result.stderr
    assert labels(operator_env.admin, account)[f"{PSA}enforce"] == "baseline"
    other = operator_env.admin.namespace("psa-not-an-account")
    manager.kubectl("label", "namespace", other, f"{PSA}enforce=privileged")


def test_the_operator_puts_back_what_an_admin_changed_by_hand(
    operator_env: OperatorEnv, account: str
) -> None:
    admin = operator_env.admin
    admin.kubectl("label", "namespace", account, "--overwrite", f"{PSA}enforce=privileged")
    wait_labels(admin, account, {f"{PSA}enforce": "baseline"}, "the operator to restore baseline")


def test_an_admins_annotation_chooses_the_level_for_one_account(
    operator_env: OperatorEnv, account: str, manager: Kube
) -> None:
    admin = operator_env.admin
    annotated = manager.kubectl(
        "annotate", "namespace", account, "gpu.ds01.io/pod-security=privileged", check=False
    )
    assert annotated.returncode != 0 and "ds01-account-labels" in annotated.stderr
    admin.kubectl("annotate", "namespace", account, "gpu.ds01.io/pod-security=privileged")
    try:
        wait_labels(admin, account, {f"{PSA}enforce": "privileged"}, "the admin's chosen level")
    finally:
        admin.kubectl("annotate", "namespace", account, "gpu.ds01.io/pod-security-")
    wait_labels(admin, account, {f"{PSA}enforce": "baseline"}, "the default level again")
