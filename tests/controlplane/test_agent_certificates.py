"""Docker-host agents' certificates against the real apiserver, signer and garbage collector.

Each agent is enrolled as docs/docker-host.md says: a key made here, a
CertificateSigningRequest approved by an admin, the certificate issued by
kube-controller-manager's csrsigning controller with the cluster CA. Then the
certificate is judged by RBAC and the admission policy `ds01-agent-own-node`
exactly as a lab's Docker host would be: its own GPUNode only, nothing else,
and nothing at all once revoked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from controller.agent.publisher import Publisher
from controller.api import names
from controller.devcluster import simnode
from controller.devcluster.controlplane import LocalCluster
from controller.devcluster.process import wait_until
from controller.policy.agentidentity import AGENT_GROUP, agent_user
from controller.runtime import agentenrollment as enrollment
from controller.runtime.agentcredentials import AgentCredentials, PendingRequest, new_request
from controller.runtime.audit import AuditLog
from tests.controlplane.kube import Kube

NODE_A, NODE_B = "cert-node-a", "cert-node-b"


@pytest.fixture(scope="module")
def admin_api(cluster: LocalCluster) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield api
    api.close()


def enrol(cluster: LocalCluster, admin_api: client.ApiClient, node: str) -> Path:
    out = cluster.workdir / "host-agents" / f"{node}.kubeconfig"
    enrollment.enroll(admin_api, node, out, approve_it=True, wait_s=60)
    return out


@pytest.fixture(scope="module")
def agents(cluster: LocalCluster, admin_api: client.ApiClient) -> dict[str, Path]:
    return {node: enrol(cluster, admin_api, node) for node in (NODE_A, NODE_B)}


def whoami(cluster: LocalCluster, kubeconfig: Path) -> dict[str, object]:
    answer = cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout
    return json.loads(answer)["status"]["userInfo"]  # type: ignore[no-any-return]


def publisher(kubeconfig: Path, node: str, tmp_path: Path) -> Publisher:
    api = config.new_client_from_config(config_file=str(kubeconfig))
    return Publisher(api, node, AuditLog(tmp_path / f"{node}.jsonl", "ds01-agent"))


def status_patch(cluster: LocalCluster, kubeconfig: Path, node: str) -> str:
    """Write ``node``'s GPUNode status with ``kubeconfig``; "" when allowed, else the refusal."""
    result = cluster.kubectl(
        "patch",
        "gpunode",
        node,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(simnode.status(node)),
        kubeconfig=kubeconfig,
        check=False,
    )
    return "" if result.returncode == 0 else result.stderr


def test_enrolment_issues_the_cluster_signer_a_certificate_that_names_the_node(
    cluster: LocalCluster, admin: Kube, agents: dict[str, Path]
) -> None:
    path = agents[NODE_A]
    assert path.stat().st_mode & 0o777 == 0o600
    assert not PendingRequest.path_for(path).exists()
    user = whoami(cluster, path)
    assert user["username"] == agent_user(NODE_A) == f"ds01-agent:node:{NODE_A}"
    assert AGENT_GROUP in user["groups"]  # type: ignore[operator]
    credentials = AgentCredentials.read(path)
    ca = x509.load_pem_x509_certificate(cluster.ca_pem)
    assert credentials.certificate.issuer == ca.subject  # the cluster's signer, not ours
    credentials.certificate.verify_directly_issued_by(ca)
    key = serialization.load_pem_private_key(credentials.key_pem, None)
    assert key.public_key() == credentials.certificate.public_key()  # the key made here
    life = credentials.not_after - datetime.now(UTC)
    assert 29 <= life.days <= 30
    # Approved by the admin who enrolled it, and labelled for `kubectl get csr -l`.
    requests = admin.get("csr", "-l", f"{names.AGENT_NODE}={NODE_A}")["items"]
    assert [c["type"] for r in requests for c in r["status"]["conditions"]] == ["Approved"]
    assert requests[0]["spec"]["expirationSeconds"] == 30 * 86400
    # Its RBAC: two bindings by name, owned by the GPUNode (deleting it revokes the agent).
    uid = admin.get("gpunode", NODE_A)["metadata"]["uid"]
    bindings = admin.get("clusterrolebindings", "-l", f"{names.AGENT_NODE}={NODE_A}")["items"]
    assert sorted(b["roleRef"]["name"] for b in bindings) == list(enrollment.AGENT_ROLES)
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "User", "name": agent_user(NODE_A), "apiGroup": "rbac.authorization.k8s.io"}
        ]
        assert [o["uid"] for o in binding["metadata"]["ownerReferences"]] == [uid]


def test_a_certificate_agent_writes_its_own_gpunode_status(
    cluster: LocalCluster, admin: Kube, agents: dict[str, Path], tmp_path: Path
) -> None:
    own = publisher(agents[NODE_A], NODE_A, tmp_path)
    assert own.ensure_node().spec.enforcement == "Audit"
    assert status_patch(cluster, agents[NODE_A], NODE_A) == ""
    assert admin.get("gpunode", NODE_A)["status"]["gpus"] == len(simnode.inventory(NODE_A))


def test_a_certificate_for_one_node_is_refused_on_another_nodes_gpunode(
    cluster: LocalCluster, agents: dict[str, Path], tmp_path: Path
) -> None:
    refused = status_patch(cluster, agents[NODE_A], NODE_B)
    assert "ds01-agent-own-node" in refused
    assert f"(its certificate is for node {NODE_A})" in refused
    # Registering a node it is not: create is granted by RBAC, refused by admission.
    with pytest.raises(ApiException) as created:
        publisher(agents[NODE_A], "cert-node-c", tmp_path).ensure_node()
    assert created.value.status == 403
    assert f"its certificate is for node {NODE_A}" in str(created.value.body)
    # And B's own certificate may write B.
    assert status_patch(cluster, agents[NODE_B], NODE_B) == ""


def test_the_agent_name_without_the_agent_group_names_no_node(
    cluster: LocalCluster, admin: Kube, agents: dict[str, Path]
) -> None:
    """A certificate with the right CN but not the group (signed some other way) is an
    agent bound to no node; so is a member of the group with another name, even when a
    careless binding grants the group the agent's role."""
    name_only = cluster.user_kubeconfig(agent_user(NODE_A), ())  # its binding names the user
    refused = status_patch(cluster, name_only, NODE_A)
    assert "ds01-agent-own-node" in refused and "(its credentials name no node)" in refused
    careless = "test-ds01-agents-group"
    admin.kubectl(
        "create",
        "clusterrolebinding",
        careless,
        "--clusterrole=ds01-agent",
        f"--group={AGENT_GROUP}",
    )
    try:
        group_only = cluster.user_kubeconfig("someone", (AGENT_GROUP,))
        wait_until(
            lambda: "ds01-agent-own-node" in status_patch(cluster, group_only, NODE_A),
            30,
            "the group's binding to reach the authorizer",
        )
        assert "(its credentials name no node)" in status_patch(cluster, group_only, NODE_A)
    finally:
        admin.kubectl("delete", "clusterrolebinding", careless)


@pytest.mark.parametrize(
    "attempt",
    [
        ("get", "secrets", "-A"),
        ("get", "csr"),
        ("create", "namespace", "agent-made"),
        ("run", "x", "--image=busybox", "-n", "default"),
        ("create", "clusterrolebinding", "x", "--clusterrole=cluster-admin", "--user=me"),
        ("patch", "gpunode", NODE_A, "--type=merge", "-p", '{"spec": {"enforcement": "Off"}}'),
        ("delete", "gpunode", NODE_B),
        ("label", "gpunode", NODE_A, "gpu.ds01.io/enforcement=Off"),
    ],
    ids=lambda a: " ".join(a[:3]),
)
def test_a_certificate_agent_may_do_nothing_else(
    cluster: LocalCluster, agents: dict[str, Path], attempt: tuple[str, ...]
) -> None:
    result = cluster.kubectl(*attempt, kubeconfig=agents[NODE_A], check=False)
    assert result.returncode != 0 and "forbidden" in result.stderr.lower(), result.stderr


def test_approving_requests_is_for_admins_not_agents(
    cluster: LocalCluster, admin_api: client.ApiClient, agents: dict[str, Path]
) -> None:
    """An agent may submit a request for another identity, but not approve it."""
    agent_api = config.new_client_from_config(config_file=str(agents[NODE_A]))
    _, request = new_request(NODE_B)
    name = enrollment.submit(agent_api, NODE_B, request)
    approved = cluster.kubectl(
        "certificate", "approve", name, kubeconfig=agents[NODE_A], check=False
    )
    assert approved.returncode != 0 and "forbidden" in approved.stderr.lower()
    assert enrollment.outcome(admin_api, name).state == "pending"


def test_an_enrolment_waits_for_an_admin_and_a_denied_one_says_so(
    cluster: LocalCluster, admin: Kube, admin_api: client.ApiClient
) -> None:
    out = cluster.workdir / "host-agents" / "waiting.kubeconfig"
    names: list[str] = []
    with pytest.raises(enrollment.RequestPendingError) as waiting:
        enrollment.enroll(admin_api, "cert-waiting", out, wait_s=0, submitted=names.append)
    (name,) = names
    assert f"kubectl certificate approve {name}" in str(waiting.value)
    assert not out.exists() and PendingRequest.path_for(out).exists()  # key kept for later
    admin.kubectl("certificate", "approve", name)
    enrollment.enroll(admin_api, "cert-waiting", out, wait_s=60, submitted=names.append)
    assert names == [name, name]  # collected, not asked again
    assert whoami(cluster, out)["username"] == agent_user("cert-waiting")

    denied_out = cluster.workdir / "host-agents" / "denied.kubeconfig"
    names.clear()
    with pytest.raises(enrollment.RequestPendingError):
        enrollment.enroll(admin_api, "cert-denied", denied_out, wait_s=0, submitted=names.append)
    admin.kubectl("certificate", "deny", names[0])
    with pytest.raises(enrollment.RequestDeniedError) as denied:
        enrollment.enroll(admin_api, "cert-denied", denied_out, wait_s=60)
    assert f"certificate request {names[0]} for {agent_user('cert-denied')} was denied" in str(
        denied.value
    )
    assert not denied_out.exists() and not PendingRequest.path_for(denied_out).exists()


def revoke_and_wait(cluster: LocalCluster, admin: Kube, node: str, *how: str) -> None:
    admin.kubectl(*how)

    def unbound() -> bool:
        selector = f"{names.AGENT_NODE}={node}"
        return not admin.get("clusterrolebindings", "-l", selector)["items"]

    wait_until(unbound, 60, f"{node}'s bindings to be gone")


@pytest.mark.parametrize(
    ("node", "how"),
    [
        ("cert-revoked-node", ("delete", "gpunode", "cert-revoked-node")),
        (
            "cert-revoked-binding",
            ("delete", "clusterrolebinding", "-l", f"{names.AGENT_NODE}=cert-revoked-binding"),
        ),
    ],
    ids=["GPUNode deleted", "bindings deleted"],
)
def test_a_revoked_agent_stops_writing(
    cluster: LocalCluster,
    admin: Kube,
    admin_api: client.ApiClient,
    tmp_path: Path,
    node: str,
    how: tuple[str, ...],
) -> None:
    """Revoking is deleting the agent's bindings, or its GPUNode (which owns them)."""
    path = enrol(cluster, admin_api, node)
    assert status_patch(cluster, path, node) == ""
    revoke_and_wait(cluster, admin, node, *how)
    if how[1] == "gpunode":
        # Gone with its node: it may not register the node again (RBAC, not admission).
        def refused_registration() -> bool:
            try:
                publisher(path, node, tmp_path).ensure_node()
            except ApiException as error:
                return error.status == 403 and "cannot create" in str(error.body)
            admin.kubectl("delete", "gpunode", node)  # registered before RBAC caught up
            return False

        wait_until(refused_registration, 30, f"{node}'s agent to be refused by RBAC")
    else:
        wait_until(
            lambda: f'User "{agent_user(node)}" cannot' in status_patch(cluster, path, node),
            30,
            f"{node}'s agent to be refused by RBAC",
        )
    # Its certificate cannot ask for a successor either.
    with pytest.raises(enrollment.CredentialError, match="an agent is revoked by deleting"):
        enrollment.renew(path, force=True, wait_s=0)
