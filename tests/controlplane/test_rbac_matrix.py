"""The access matrix, proved against the real apiserver and published in docs/security.md.

Each cell is asked of the apiserver (SubjectAccessReview for RBAC; a real,
dry-run write with the identity's own credentials where admission decides).
The claims below are read off that matrix, and the committed table must be
exactly what the apiserver answers now.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from controller.cli.dev import add_simulated_node
from controller.devcluster import simnode
from controller.devcluster.binaries import source_root
from controller.devcluster.controlplane import LocalCluster
from controller.runtime import agentenrollment as enrollment
from controller.runtime.agentcredentials import new_request
from tests.controlplane import rbac_matrix
from tests.controlplane.kube import GROUP, VERSION, Kube, agent_kubeconfig
from tests.controlplane.rbac_matrix import OTHER_ACCOUNT, STUDENT_ACCOUNT, Identity, Write

ROOT = source_root()
DOC = ROOT / "docs" / "security.md"
OWN_NODE, OTHER_NODE = rbac_matrix.AGENT_NODE, "matrix-node-b"
PENDING_GRANT = "matrix-probe"
ADMINS_REQUEST = "matrix-admins-request"


@dataclass(frozen=True)
class Matrix:
    columns: list[str]
    rbac: dict[str, dict[str, str]]
    writes: dict[str, dict[str, str]]


def anonymous_kubeconfig(cluster: LocalCluster) -> Path:
    """A kubeconfig that trusts the apiserver and presents no credentials."""
    path = cluster.workdir / "users" / "anonymous.kubeconfig"
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    admin["users"] = [{"name": "anonymous", "user": {}}]
    admin["contexts"][0]["context"]["user"] = "anonymous"
    path.write_text(yaml.safe_dump(admin))
    return path


def credentials(
    cluster: LocalCluster, admin: Kube, as_user: Any, who: Identity
) -> client.ApiClient:
    if who.kind == "certificate":
        groups = [g for g in who.groups if not g.startswith("system:")]
        kube: Kube = as_user(who.user, *groups)
        return kube.api
    if who.kind == "anonymous":
        path = anonymous_kubeconfig(cluster)
    elif who.kind == "enrolled":  # as docs/docker-host.md enrols a Docker host's agent
        path = cluster.workdir / "users" / "matrix-host-agent.kubeconfig"
        enrollment.enroll(admin.api, OWN_NODE, path, approve_it=True, wait_s=60)
    elif who.user.endswith(":ds01-agent"):
        path = agent_kubeconfig(cluster, admin, OWN_NODE)
    else:
        namespace, name = who.user.split(":")[2:]
        token = admin.kubectl("create", "token", name, "-n", namespace).stdout.strip()
        path = cluster.token_kubeconfig(f"matrix-{name}", token)
    return config.new_client_from_config(config_file=str(path))


def pod(name: str, **spec: Any) -> dict[str, Any]:
    main: dict[str, Any] = {"name": "main", "image": "busybox:local"}
    main.update(spec.pop("main", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [main], **spec},
    }


def namespace_patch(body: dict[str, Any]) -> Callable[[client.ApiClient], object]:
    return lambda api: client.CoreV1Api(api).patch_namespace(STUDENT_ACCOUNT, body, dry_run="All")


def create_pod(body: dict[str, Any]) -> Callable[[client.ApiClient], object]:
    return lambda api: client.CoreV1Api(api).create_namespaced_pod(
        STUDENT_ACCOUNT, body, dry_run="All"
    )


def node_status(node: str) -> Callable[[client.ApiClient], object]:
    return lambda api: client.CustomObjectsApi(api).patch_cluster_custom_object_status(
        GROUP, VERSION, "gpunodes", node, simnode.status(node), dry_run="All"
    )


def approve_request(name: str) -> Callable[[client.ApiClient], object]:
    def attempt(api: client.ApiClient) -> object:
        certificates = client.CertificatesV1Api(api)
        body = certificates.read_certificate_signing_request(name)
        body.status = client.V1CertificateSigningRequestStatus(
            conditions=[
                client.V1CertificateSigningRequestCondition(
                    type="Approved", status="True", reason="Matrix", message="the access matrix"
                )
            ]
        )
        return certificates.replace_certificate_signing_request_approval(name, body, dry_run="All")

    return attempt


WRITES = (
    Write(
        "label gpu.ds01.io/user of the student's account",
        namespace_patch({"metadata": {"labels": {"gpu.ds01.io/user": "someone-else"}}}),
    ),
    Write(
        "annotation gpu.ds01.io/groups of the student's account",
        namespace_patch({"metadata": {"annotations": {"gpu.ds01.io/groups": "admin"}}}),
    ),
    Write(
        "label pod-security.kubernetes.io/enforce of the student's account",
        namespace_patch(
            {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}}
        ),
    ),
    Write(
        "another label of the student's account",
        namespace_patch({"metadata": {"labels": {"team": "vision"}}}),
    ),
    Write(
        "ConfigMap ds01-policy in the student's account",
        lambda api: client.CoreV1Api(api).patch_namespaced_config_map(
            "ds01-policy",
            STUDENT_ACCOUNT,
            {"data": {"maxDevicesPerWorkload": "Unlimited"}},
            dry_run="All",
        ),
    ),
    Write(
        "approve a pending GPUGrant in the student's account",
        lambda api: client.CustomObjectsApi(api).patch_namespaced_custom_object(
            GROUP,
            VERSION,
            STUDENT_ACCOUNT,
            "gpugrants",
            PENDING_GRANT,
            {"spec": {"approval": {"decision": "Approved"}}},
            dry_run="All",
        ),
    ),
    Write("a plain pod in the student's account", create_pod(pod("plain"))),
    Write(
        "a pod with hostPath /etc in the student's account",
        create_pod(pod("etc", volumes=[{"name": "etc", "hostPath": {"path": "/etc"}}])),
    ),
    Write(
        "a pod asking for nvidia.com/gpu: 8 in the student's account",
        create_pod(pod("vendor", main={"resources": {"limits": {"nvidia.com/gpu": "8"}}})),
    ),
    Write("status of the agent's own GPUNode", node_status(OWN_NODE)),
    Write("status of another node's GPUNode", node_status(OTHER_NODE)),
    Write("approve a certificate request an admin made", approve_request(ADMINS_REQUEST)),
)


@pytest.fixture(scope="module")
def matrix(cluster: LocalCluster, admin: Kube, as_user, samples: Path) -> Matrix:  # type: ignore[no-untyped-def]
    for node in (OWN_NODE, OTHER_NODE):
        add_simulated_node(cluster, node)
    admin.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "ds01-policy", "namespace": STUDENT_ACCOUNT},
            # As the operator publishes it (ds01-pod-limits reads these keys).
            "data": {
                "podsBlocked": "",
                "gpuBlocked": "",
                "gpuResources": "gpu",
                "gpuResourcesNote": "you may ask for: gpu.ds01.io/gpu",
                "maxDevicesPerWorkload": "2",
                "maxDevicesPerWorkloadSource": "GPURateLimit/student",
                "gpuRemaining": "Unlimited",
                "gpuAllowance": "Unlimited",
                "gpuAllowanceSource": "GPURateLimit/student",
                "gpuInUse": "0",
            },
        }
    )
    admin.apply(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "GPUGrant",
            "metadata": {"name": PENDING_GRANT, "namespace": STUDENT_ACCOUNT},
            "spec": {
                "subject": {"kind": "User", "name": "248835@lab.example"},
                "gpus": {"count": 1},
                "duration": "1h",
                "reason": "the access matrix",
            },
        }
    )
    # An admin's own request for a client certificate (the operator may not approve it).
    if not admin.kubectl("get", "csr", ADMINS_REQUEST, "--ignore-not-found").stdout:
        _, request = new_request("matrix-admins-node")
        admin.create(
            {
                "apiVersion": "certificates.k8s.io/v1",
                "kind": "CertificateSigningRequest",
                "metadata": {"name": ADMINS_REQUEST},
                "spec": {
                    "request": base64.b64encode(request).decode(),
                    "signerName": "kubernetes.io/kube-apiserver-client",
                    "usages": ["digital signature", "client auth"],
                    "expirationSeconds": 3600,
                },
            }
        )
    people = rbac_matrix.identities(ROOT)
    authz = client.AuthorizationV1Api(admin.api)
    columns = [p.column for p in people]
    apis = {p.column: credentials(cluster, admin, as_user, p) for p in people}  # enrols first
    rbac = {
        row.label: {p.column: rbac_matrix.allowed_verbs(authz, p, row) for p in people}
        for row in rbac_matrix.RESOURCES
    }
    writes = {
        w.label: {c: rbac_matrix.outcome(w.attempt, apis[c]) for c in columns} for w in WRITES
    }
    return Matrix(columns, rbac, writes)


def test_every_role_binding_in_the_manifests_is_a_column() -> None:
    """The identities are the manifests' own: every subject a ds01 binding names is covered."""
    people = rbac_matrix.identities(ROOT)
    users = {p.user for p in people}
    groups = {g for p in people for g in p.groups}
    for path in sorted((ROOT / "manifests" / "core").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "ClusterRoleBinding":
                for subject in doc["subjects"]:
                    if subject["kind"] == "Group":
                        assert subject["name"] in groups, subject
                    else:
                        namespace = subject.get("namespace", "")
                        assert f"system:serviceaccount:{namespace}:{subject['name']}" in users


def test_an_unauthenticated_client_can_do_nothing(matrix: Matrix) -> None:
    assert {cells["anonymous"] for cells in matrix.rbac.values()} == {"—"}
    assert {cells["anonymous"] for cells in matrix.writes.values()} == {"RBAC"}


def test_no_user_reaches_into_another_account(matrix: Matrix) -> None:
    for row, cells in matrix.rbac.items():
        if "other account" in row:
            assert cells["student"] == "—", row
            assert "c" in cells["other user"], row  # it is theirs
            # Approvers decide grants anywhere and nothing else; admins read pods, no more.
            assert cells["approver"] == ("glwup" if row.startswith("GPUGrants") else "—"), row
            assert not set("cupd") & set(cells["admin"]) or row.startswith("GPUGrants"), row
    for row in ("pods/exec, other account", "pods/attach, other account"):
        assert {c for c, v in matrix.rbac[row].items() if "c" in v} == {"other user"}, row


def test_only_admins_create_or_delete_limits_and_exemptions_or_delete_nodes(
    matrix: Matrix,
) -> None:
    def holders(row: str, letter: str) -> set[str]:
        return {c for c, v in matrix.rbac[row].items() if letter in v}

    for row in ("GPURateLimits", "GPUExemptions"):
        assert holders(row, "c") == {"admin"}, row
    for row in ("GPURateLimits", "GPUExemptions", "GPUNodes"):
        assert holders(row, "d") == {"admin"}, row
    # The operator registers nodes it schedules for; an agent its own (ds01-agent-own-node).
    assert holders("GPUNodes", "c") == {"admin", "operator", "agent", "host agent"}


def test_only_admins_and_the_operator_change_what_makes_and_guards_an_account(
    matrix: Matrix,
) -> None:
    writes = matrix.writes
    for label in (
        "label gpu.ds01.io/user of the student's account",
        "annotation gpu.ds01.io/groups of the student's account",
    ):
        allowed = {c for c, v in writes[label].items() if v == "allowed"}
        assert allowed == {"admin"}, (label, writes[label])
    psa = writes["label pod-security.kubernetes.io/enforce of the student's account"]
    assert {c for c, v in psa.items() if v == "allowed"} == {"admin", "operator"}
    policy = writes["ConfigMap ds01-policy in the student's account"]
    assert policy["student"] == "ds01-operator-objects"
    assert {c for c, v in policy.items() if v == "allowed"} == {"operator"}


def test_the_student_may_run_plain_pods_but_no_escape_and_decides_no_grant(matrix: Matrix) -> None:
    writes = matrix.writes
    assert writes["a plain pod in the student's account"]["student"] == "allowed"
    assert writes["a pod with hostPath /etc in the student's account"]["student"] == (
        "ds01-pod-security"
    )
    assert writes["a pod asking for nvidia.com/gpu: 8 in the student's account"]["student"] == (
        "ds01-pod-security"
    )
    approve = writes["approve a pending GPUGrant in the student's account"]
    assert approve["student"] == "ds01-grant-approval"
    assert {c for c, v in approve.items() if v == "allowed"} == {"approver", "admin", "operator"}


def test_an_agent_writes_only_its_own_nodes_status(matrix: Matrix) -> None:
    """A pod's token and a Docker host's certificate alike."""
    agents = ("agent", "host agent")
    for agent in agents:
        assert matrix.writes["status of the agent's own GPUNode"][agent] == "allowed"
        assert matrix.writes["status of another node's GPUNode"][agent] == "ds01-agent-own-node"
    for label in ("status of the agent's own GPUNode", "status of another node's GPUNode"):
        others = {c: v for c, v in matrix.writes[label].items() if c not in agents}
        assert set(others.values()) == {"RBAC"}, others


def test_only_the_operator_approves_certificate_requests_and_only_agents_renewals(
    matrix: Matrix,
) -> None:
    approval = matrix.rbac["CertificateSigningRequest approval"]
    assert {c for c, v in approval.items() if "u" in v} == {"operator"}
    assert matrix.writes["approve a certificate request an admin made"] == {
        c: ("ds01-agent-renewals" if c == "operator" else "RBAC") for c in matrix.columns
    }
    # Only a Docker host's agent submits requests (its renewals), and reads them by name.
    requests = matrix.rbac["CertificateSigningRequests"]
    assert {c: v for c, v in requests.items() if v != "—"} == {
        "operator": "glw",
        "host agent": "gc",
    }


def test_the_committed_table_is_what_the_apiserver_answers(matrix: Matrix) -> None:
    generated = rbac_matrix.render(matrix.columns, matrix.rbac, matrix.writes)
    document = DOC.read_text()
    if os.environ.get("DS01_WRITE_SECURITY_TABLE") == "1":
        DOC.write_text(rbac_matrix.splice(document, generated))
        document = DOC.read_text()
    assert rbac_matrix.committed(document) == generated, (
        "docs/security.md's access matrix drifted from the apiserver's answers; regenerate it "
        "with DS01_WRITE_SECURITY_TABLE=1 pytest tests/controlplane/test_rbac_matrix.py"
    )


def test_the_table_lists_every_identity_resource_and_write(matrix: Matrix) -> None:
    generated = rbac_matrix.render(matrix.columns, matrix.rbac, matrix.writes)
    assert json.dumps(matrix.columns) == json.dumps(
        [
            "student",
            "other user",
            "approver",
            "admin",
            "operator",
            "agent",
            "host agent",
            "anonymous",
        ]
    )
    for row in [r.label for r in rbac_matrix.RESOURCES] + [w.label for w in WRITES]:
        assert f"| {row} |" in generated
    assert OTHER_ACCOUNT in " ".join(r.namespace for r in rbac_matrix.RESOURCES)
