"""Enrolling a Docker-host agent and renewing its certificate, through the CSR API.

`enroll` (an admin's credentials, once per host): gives the node's agent
identity its RBAC (two ClusterRoleBindings owned by the node's GPUNode, so
deleting the GPUNode revokes the agent), submits a certificate request for a
key made on the host, approves it when asked to (the admin running it is the
approver) or waits for another admin's `kubectl certificate approve`, and
writes the agent's kubeconfig. `renew` (the agent's own credentials, from a
timer): once a certificate is due (`policy.agentidentity.renewal`), the same
with a new key; the operator approves such renewals (`operator.agentrenewals`).

Kubernetes' own signer (kube-controller-manager's csrsigning controller, with
the cluster CA) issues the certificate; nothing here holds a CA key.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from controller.api import names
from controller.api.base import GROUP, VERSION
from controller.policy.agentidentity import (
    CLIENT_USAGES,
    DEFAULT_VALIDITY,
    MIN_VALIDITY,
    SIGNER,
    Renewal,
    agent_user,
    node_name_problem,
    renewal,
)
from controller.runtime.agentcredentials import (
    AgentCredentials,
    PendingRequest,
    new_request,
    now_utc,
)

AGENT_ROLES = ("ds01-agent", "ds01-agent-credentials")
"""What an enrolled agent is bound to: the agent's work, and renewing its own certificate."""
FIELD_MANAGER = "ds01-agent-enroll"


class CredentialError(RuntimeError):
    """Enrolment or renewal gave the agent no certificate; the message says why and what next."""


class RequestDeniedError(CredentialError):
    pass


class RequestPendingError(CredentialError):
    """Still waiting for approval at the deadline; the request and its key are kept."""


def binding_name(role: str, node: str) -> str:
    return f"{role}:node:{node}"


def _api_error(error: ApiException) -> str:
    return f"{error.status} {error.reason}: {str(error.body or '').strip()[:400]}"


def authorize(api: client.ApiClient, node: str) -> str:
    """Bind ``node``'s agent identity to the agent roles; returns its GPUNode's uid.

    The bindings name the user (not the group), so one node's agent is revoked
    by deleting its bindings, or its GPUNode (they are owned by it, and the
    garbage collector removes them with it). A missing GPUNode is created as an
    agent would register it: an empty Audit spec the operator then fills in.
    """
    custom = client.CustomObjectsApi(api)
    try:
        gpunode = custom.get_cluster_custom_object(GROUP, VERSION, "gpunodes", node)
    except ApiException as error:
        if error.status != 404:
            raise CredentialError(f"reading GPUNode {node}: {_api_error(error)}") from None
        gpunode = custom.create_cluster_custom_object(
            GROUP,
            VERSION,
            "gpunodes",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "GPUNode",
                "metadata": {"name": node},
                "spec": {"enforcement": "Audit"},
            },
        )
    uid = str(cast(dict[str, Any], gpunode)["metadata"]["uid"])
    rbac = client.RbacAuthorizationV1Api(api)
    for role in AGENT_ROLES:
        body = client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(
                name=binding_name(role, node),
                labels={names.AGENT_NODE: node, names.PART_OF_LABEL: names.PART_OF},
                owner_references=[
                    client.V1OwnerReference(
                        api_version=f"{GROUP}/{VERSION}", kind="GPUNode", name=node, uid=uid
                    )
                ],
            ),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role
            ),
            subjects=[
                client.RbacV1Subject(
                    kind="User", name=agent_user(node), api_group="rbac.authorization.k8s.io"
                )
            ],
        )
        try:
            try:
                rbac.create_cluster_role_binding(body)
            except ApiException as error:
                if error.status != 409:
                    raise
                # An earlier enrolment's: owned by this GPUNode now (it may be a new one).
                rbac.replace_cluster_role_binding(binding_name(role, node), body)
        except ApiException as error:
            raise CredentialError(
                f"binding {agent_user(node)} to ClusterRole {role}: {_api_error(error)} "
                "(enrolling needs a cluster admin's credentials)"
            ) from None
    return uid


def submit(
    api: client.ApiClient, node: str, request_pem: bytes, validity: timedelta = DEFAULT_VALIDITY
) -> str:
    """Create the CertificateSigningRequest; returns its (generated) name."""
    if validity < MIN_VALIDITY:
        raise ValueError(f"validity: {validity} is shorter than Kubernetes' minimum of 10m")
    body = client.V1CertificateSigningRequest(
        metadata=client.V1ObjectMeta(
            generate_name=f"ds01-agent-{node}-", labels={names.AGENT_NODE: node}
        ),
        spec=client.V1CertificateSigningRequestSpec(
            request=base64.b64encode(request_pem).decode(),
            signer_name=SIGNER,
            usages=list(CLIENT_USAGES),
            expiration_seconds=int(validity.total_seconds()),
        ),
    )
    try:
        created = client.CertificatesV1Api(api).create_certificate_signing_request(body)
    except ApiException as error:
        revoked = (
            " (an agent is revoked by deleting its ClusterRoleBindings or its GPUNode; "
            "an admin enrols it again with `ds01 agent enroll`)"
            if error.status == 403
            else ""
        )
        raise CredentialError(
            f"submitting a certificate request for {agent_user(node)}: {_api_error(error)}"
            + revoked
        ) from None
    if created.metadata is None or not created.metadata.name:
        raise CredentialError(f"the apiserver named no request for {agent_user(node)}")
    return created.metadata.name


def approve(api: client.ApiClient, name: str, reason: str, message: str) -> None:
    """Add the Approved condition (what `kubectl certificate approve` does)."""
    certificates = client.CertificatesV1Api(api)
    csr = certificates.read_certificate_signing_request(name)
    conditions = list((csr.status.conditions if csr.status else None) or [])
    if any(c.type == "Approved" for c in conditions):
        return
    conditions.append(
        client.V1CertificateSigningRequestCondition(
            type="Approved", status="True", reason=reason, message=message
        )
    )
    csr.status = client.V1CertificateSigningRequestStatus(conditions=conditions)
    certificates.replace_certificate_signing_request_approval(name, csr)


@dataclass(frozen=True)
class Outcome:
    state: Literal["issued", "denied", "failed", "pending", "gone"]
    certificate: bytes = b""
    reason: str = ""


def outcome(api: client.ApiClient, name: str) -> Outcome:
    """Where request ``name`` stands now."""
    try:
        csr = client.CertificatesV1Api(api).read_certificate_signing_request(name)
    except ApiException as error:
        if error.status == 404:
            return Outcome("gone")
        raise CredentialError(
            f"reading CertificateSigningRequest {name}: {_api_error(error)}"
        ) from None
    conditions = (csr.status.conditions if csr.status else None) or []
    for condition in conditions:
        if condition.type in ("Denied", "Failed"):
            why = ": ".join(x for x in (condition.reason, condition.message) if x)
            return Outcome("denied" if condition.type == "Denied" else "failed", reason=why)
    if csr.status and csr.status.certificate:
        return Outcome("issued", base64.b64decode(csr.status.certificate))
    return Outcome("pending")


def collect(api: client.ApiClient, name: str, wait_s: float, poll_s: float = 1.0) -> Outcome:
    """Wait up to ``wait_s`` for request ``name`` to be decided (polls: an agent's
    renewal role may read a request by name, nothing more)."""
    end = time.monotonic() + wait_s
    while True:
        found = outcome(api, name)
        if found.state != "pending" or time.monotonic() >= end:
            return found
        time.sleep(poll_s)


def _server_and_ca(api: client.ApiClient) -> tuple[str, bytes | None]:
    configuration = api.configuration
    ca = Path(configuration.ssl_ca_cert).read_bytes() if configuration.ssl_ca_cert else None
    return str(configuration.host), ca


def _obtain(
    api: client.ApiClient,
    node: str,
    out: Path,
    *,
    validity: timedelta,
    wait_s: float,
    server: str,
    ca_pem: bytes | None,
    submitted: Callable[[str], None],
) -> AgentCredentials:
    """Submit (or resume) a request for ``node``, wait for it, write ``out``."""
    pending = PendingRequest.load(out)
    if pending is not None and (
        pending.node != node or outcome(api, pending.name).state in ("gone", "failed")
    ):
        PendingRequest.discard(out)  # another node's, or expired from the apiserver
        pending = None
    if pending is None:
        key_pem, request_pem = new_request(node)
        name = submit(api, node, request_pem, validity)
        pending = PendingRequest(node, name, key_pem, now_utc())
        pending.save(out)
    submitted(pending.name)
    found = collect(api, pending.name, wait_s)
    if found.state == "issued":
        credentials = AgentCredentials(server, ca_pem, found.certificate, pending.key_pem)
        credentials.write(out)
        PendingRequest.discard(out)
        return credentials
    if found.state == "pending":
        raise RequestPendingError(
            f"certificate request {pending.name} for {agent_user(node)} is still waiting for "
            f"approval: an admin approves it with `kubectl certificate approve {pending.name}` "
            f"(after checking `kubectl get csr {pending.name}` names that user); run this "
            "again to collect the certificate (its key is kept on this host)"
        )
    PendingRequest.discard(out)
    if found.state == "denied":
        raise RequestDeniedError(
            f"certificate request {pending.name} for {agent_user(node)} was denied"
            + (f" ({found.reason})" if found.reason else "")
            + "; ask an admin why, then run this again for a new request"
        )
    raise CredentialError(
        f"certificate request {pending.name} for {agent_user(node)} {found.state}"
        + (f" ({found.reason})" if found.reason else "")
        + "; run this again for a new request"
    )


def enroll(
    api: client.ApiClient,
    node: str,
    out: Path,
    *,
    validity: timedelta = DEFAULT_VALIDITY,
    approve_it: bool = False,
    wait_s: float = 900,
    submitted: Callable[[str], None] = lambda name: None,
) -> AgentCredentials:
    """Give ``node``'s agent its identity and write its kubeconfig to ``out``, as an admin.

    ``api`` is the admin's client; the agent's kubeconfig points at the same
    apiserver and trusts the same CA. With ``approve_it`` the admin approves
    the request here; otherwise ``submitted`` is told its name and another
    admin approves it within ``wait_s``.
    """
    if problem := node_name_problem(node):
        raise ValueError(problem)
    authorize(api, node)
    server, ca_pem = _server_and_ca(api)

    def submitted_and_approved(name: str) -> None:
        if approve_it:
            try:
                approve(api, name, "DS01AgentEnrolled", f"ds01 agent enroll --node {node}")
            except ApiException as error:
                raise CredentialError(
                    f"approving {name}: {_api_error(error)} (approving needs `approve` on "
                    f"signers/{SIGNER}: a cluster admin's credentials)"
                ) from None
        submitted(name)

    return _obtain(
        api,
        node,
        out,
        validity=validity,
        wait_s=wait_s,
        server=server,
        ca_pem=ca_pem,
        submitted=submitted_and_approved,
    )


@dataclass(frozen=True)
class RenewResult:
    renewed: bool
    renewal: Renewal
    """Where the credentials in the kubeconfig now stand."""


def agent_client(credentials: AgentCredentials) -> client.ApiClient:
    loaded: Any = config.new_client_from_config_dict(credentials.kubeconfig())
    return loaded  # type: ignore[no-any-return]


def renew(
    kubeconfig: Path,
    *,
    validity: timedelta = DEFAULT_VALIDITY,
    wait_s: float = 600,
    force: bool = False,
    now: datetime | None = None,
    submitted: Callable[[str], None] = lambda name: None,
) -> RenewResult:
    """Renew the agent's certificate in ``kubeconfig`` if it is due (or ``force``).

    Uses the agent's own certificate to ask for the next one, so it works only
    while that one is valid and the agent is still bound (not revoked).
    """
    current = AgentCredentials.read(kubeconfig)
    node = current.node
    if node is None:
        raise CredentialError(
            f"{kubeconfig}: its certificate ({current.user}) is not a Docker-host agent's; "
            "enrol with `ds01 agent enroll`"
        )
    standing = renewal(current.not_before, current.not_after, now or now_utc())
    in_flight = PendingRequest.load(kubeconfig) is not None
    if standing.state == "valid" and not force and not in_flight:
        return RenewResult(False, standing)
    if standing.state == "expired":
        PendingRequest.discard(kubeconfig)
        raise CredentialError(
            f"{kubeconfig}: the certificate of {current.user} {standing.describe()}; it cannot "
            f"ask for its own successor: an admin enrols the node again (`ds01 agent enroll "
            f"--node {node}`)"
        )
    api = agent_client(current)
    try:
        fresh = _obtain(
            api,
            node,
            kubeconfig,
            validity=validity,
            wait_s=wait_s,
            server=current.server,
            ca_pem=current.ca_pem,
            submitted=submitted,
        )
    finally:
        api.close()
    return RenewResult(True, renewal(fresh.not_before, fresh.not_after, now or now_utc()))
