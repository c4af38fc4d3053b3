"""The operator approves Docker-host agents' certificate renewals, and nothing else.

A certificate lasts 30 days and the agent asks for the next one from day 20
(`docs/docker-host.md`, "Credentials"). Asking an admin every time would
make approvals a routine click, which is how a forged request gets approved;
so a request that only renews what its requester already is (`renewal_refusal`:
an agent's certificate asking for the same name and group, a client key,
at most 30 days) is approved here, and every other request is left for an
admin, untouched. The admission policy `ds01-agent-renewals` independently
refuses any approval by the operator of a request that an agent's certificate
did not make, so a fault here cannot approve an admin's or a user's request.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import kopf
import structlog
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.policy.agentidentity import SigningRequest, parse_request, renewal_refusal
from controller.runtime.agentenrollment import approve
from controller.runtime.audit import AuditLog

log = structlog.get_logger("ds01.operator.agent-renewals")

REASON = "DS01AgentRenewal"


def read_request(body: dict[str, Any]) -> SigningRequest:
    """The operator's view of a CertificateSigningRequest; ValueError when it cannot be read."""
    spec = body.get("spec") or {}
    conditions = (body.get("status") or {}).get("conditions") or []
    subject, extensions, key = parse_request(base64.b64decode(spec.get("request") or ""))
    return SigningRequest(
        name=str(body.get("metadata", {}).get("name", "")),
        signer=str(spec.get("signerName", "")),
        requester=str(spec.get("username", "")),
        requester_groups=tuple(spec.get("groups") or ()),
        usages=tuple(spec.get("usages") or ()),
        expiration_seconds=spec.get("expirationSeconds"),
        subject=subject,
        extensions=extensions,
        key=key,
        decided=any(c.get("type") in ("Approved", "Denied") for c in conditions),
    )


def consider(api: client.ApiClient, body: dict[str, Any], audit: AuditLog | None) -> bool:
    """Approve ``body`` if it is an agent's renewal; returns whether it was approved."""
    name = str(body.get("metadata", {}).get("name", ""))
    try:
        request = read_request(body)
    except ValueError as error:
        log.info("leaving a certificate request to an admin", csr=name, why=str(error))
        return False
    refusal = renewal_refusal(request)
    if refusal is not None:
        if refusal != "already decided":
            log.info("leaving a certificate request to an admin", csr=name, why=refusal)
        return False
    try:
        approve(
            api,
            name,
            REASON,
            f"the ds01 operator renews {request.requester}: same name and group, "
            f"{request.expiration_seconds}s",
        )
    except ApiException as error:
        log.warning("could not approve an agent's renewal", csr=name, status=error.status)
        return False
    log.info("approved an agent's certificate renewal", csr=name, user=request.requester)
    if audit is not None:
        audit.write(
            "agent.certificate.renewal-approved",
            request.requester,
            {"csr": name, "expirationSeconds": request.expiration_seconds},
        )
    return True


def register(
    registry: kopf.OperatorRegistry,
    api: client.ApiClient,
    audit: AuditLog | None = None,
    leading: Callable[[], bool] = lambda: True,
) -> None:
    """Watch CertificateSigningRequests and approve agents' renewals as they arrive.

    Only the leading replica approves (``leading``): two replicas would both approve and
    record. A request that arrived while this replica followed is taken up by the timer
    once it leads.
    """

    def undecided(status: kopf.Status, **_: Any) -> bool:
        conditions = status.get("conditions") or []
        return not any(c.get("type") in ("Approved", "Denied", "Failed") for c in conditions)

    @kopf.on.event(
        "certificates.k8s.io",
        "v1",
        "certificatesigningrequests",
        registry=registry,
        id="agent-renewals",
        when=undecided,
    )
    def renewal(type: str, body: kopf.Body, **_: Any) -> None:
        if type != "DELETED" and leading():
            consider(api, dict(body), audit)

    @kopf.timer(
        "certificates.k8s.io",
        "v1",
        "certificatesigningrequests",
        registry=registry,
        id="agent-renewals-pending",
        when=undecided,
        interval=30,
    )
    def pending(body: kopf.Body, **_: Any) -> None:
        if leading():
            consider(api, dict(body), audit)
