"""A Docker-host agent's identity: a client certificate that names its node.

An agent in a DaemonSet pod authenticates with its pod-bound ServiceAccount
token, which carries the node's name. A Docker host has no kubelet, so no pod
and no such token: its agent holds an X.509 client certificate issued through
the CertificateSigningRequest API (signer `kubernetes.io/kube-apiserver-client`)
with subject CN ``ds01-agent:node:<node>`` and O ``ds01:agents``. Kubernetes
reads that as user ``ds01-agent:node:<node>`` in group ``ds01:agents``; the
admission policy `ds01-agent-own-node` keeps it to that node's GPUNode exactly
as it keeps a token to the node it is bound to.

Certificates last `DEFAULT_VALIDITY` and are renewed from `RENEW_AT` of their
lifetime with a new key. The operator approves a renewal only when it asks for
nothing the requester does not already hold (`renewal_refusal`); everything
else waits for an admin (`docs/docker-host.md`, "Credentials").

Pure: no I/O. Parsing a request's PEM is only decoding.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

AGENT_USER_PREFIX = "ds01-agent:node:"
AGENT_GROUP = "ds01:agents"
SIGNER = "kubernetes.io/kube-apiserver-client"
CLIENT_USAGES = ("digital signature", "client auth")
"""What an agent asks for: a TLS client key, nothing else."""
MIN_VALIDITY = timedelta(seconds=600)
"""Kubernetes refuses a shorter `spec.expirationSeconds`."""
DEFAULT_VALIDITY = timedelta(days=30)
MAX_RENEWAL_VALIDITY = timedelta(days=30)
"""The longest certificate the operator approves by itself; longer ones wait for an admin."""
RENEW_AT = 2 / 3
"""Renew once this fraction of the lifetime has passed: 20 of 30 days, 10 days to spare."""
MAX_NODE_LENGTH = 64 - len(AGENT_USER_PREFIX)
"""X.509 limits a common name to 64 characters."""

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ALLOWED_USAGES = frozenset({"digital signature", "key encipherment", "client auth"})


def node_name_problem(node: str) -> str | None:
    """Why ``node`` cannot name a Docker-host agent's GPUNode; None when it can."""
    if not node:
        return "node: a name is required"
    if len(node) > MAX_NODE_LENGTH:
        return (
            f"node: {node!r} is {len(node)} characters; a certificate's common name "
            f"{AGENT_USER_PREFIX}<node> leaves room for at most {MAX_NODE_LENGTH}"
        )
    if not _SUBDOMAIN.match(node):
        return (
            f"node: {node!r} is not a GPUNode name (lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit)"
        )
    return None


def agent_user(node: str) -> str:
    """The user name Kubernetes gives the certificate of ``node``'s agent."""
    if problem := node_name_problem(node):
        raise ValueError(problem)
    return AGENT_USER_PREFIX + node


def node_of(user: str, groups: Sequence[str]) -> str | None:
    """The node a certificate identity is bound to, or None when it is not an agent's.

    Both the name and the group are required, as admission requires them: a
    name from another authenticator that happens to start with the prefix does
    not make an agent of someone without the group.
    """
    if not user.startswith(AGENT_USER_PREFIX) or AGENT_GROUP not in groups:
        return None
    node = user.removeprefix(AGENT_USER_PREFIX)
    return None if node_name_problem(node) else node


# -- rotation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Renewal:
    """Where a certificate stands in its life, and when it is renewed."""

    state: Literal["valid", "due", "expired"]
    renew_from: datetime
    expires: datetime

    def describe(self) -> str:
        if self.state == "expired":
            return f"expired at {self.expires:%Y-%m-%d %H:%M:%S} UTC"
        return (
            f"valid until {self.expires:%Y-%m-%d %H:%M:%S} UTC, "
            f"renewed from {self.renew_from:%Y-%m-%d %H:%M:%S} UTC"
        )


def renewal(
    not_before: datetime, not_after: datetime, now: datetime, renew_at: float = RENEW_AT
) -> Renewal:
    """Whether a certificate valid from ``not_before`` to ``not_after`` is due at ``now``.

    Due from ``renew_at`` of its lifetime: early enough that a renewal waiting
    for an admin (no operator running, or a request it leaves alone) still has
    a third of the lifetime to be approved in.
    """
    if not 0.0 <= renew_at <= 1.0:
        raise ValueError(f"renew_at: {renew_at} is not a fraction of the lifetime (0 to 1)")
    if not_after <= not_before:
        raise ValueError(f"certificate: it ends ({not_after}) before it starts ({not_before})")
    renew_from = not_before + (not_after - not_before) * renew_at
    if now >= not_after:
        state: Literal["valid", "due", "expired"] = "expired"
    elif now >= renew_from:
        state = "due"
    else:
        state = "valid"
    return Renewal(state, renew_from, not_after)


# -- what the operator approves ------------------------------------------------------------


@dataclass(frozen=True)
class SigningRequest:
    """What the operator reads of a CertificateSigningRequest (`spec`, and the decoded request)."""

    name: str
    signer: str
    requester: str
    """`spec.username`: set by the apiserver from who created it, never by the client."""
    requester_groups: tuple[str, ...]
    usages: tuple[str, ...]
    expiration_seconds: int | None
    subject: tuple[tuple[str, str], ...]
    """The request's subject as (attribute, value): ("CN", ...), ("O", ...)."""
    extensions: tuple[str, ...]
    """Extensions the request asks for (subject alternative names ...), by name."""
    key: str
    """The public key: "EC secp256r1", "RSA 2048", ... or what else it is."""
    decided: bool
    """Already approved or denied."""


def parse_request(pem: bytes) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...], str]:
    """The subject, requested extensions and key of a PEM certificate request.

    Raises ValueError (with what is wrong) on anything that is not a well-formed,
    correctly self-signed request.
    """
    try:
        request = x509.load_pem_x509_csr(pem)
    except ValueError as error:
        raise ValueError(f"spec.request: not a PEM certificate request ({error})") from None
    if not request.is_signature_valid:
        raise ValueError("spec.request: its signature does not match its key")
    subject = tuple((a.rfc4514_attribute_name, str(a.value)) for a in request.subject)
    extensions = tuple(
        e.oid.dotted_string
        if isinstance(e.value, x509.UnrecognizedExtension)
        else type(e.value).__name__
        for e in request.extensions
    )
    public = request.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        key = f"EC {public.curve.name}"
    elif isinstance(public, rsa.RSAPublicKey):
        key = f"RSA {public.key_size}"
    else:
        key = type(public).__name__
    return subject, extensions, key


def _acceptable_key(key: str) -> bool:
    kind, _, size = key.partition(" ")
    if kind == "EC":
        return size in ("secp256r1", "secp384r1")
    return kind == "RSA" and size.isdigit() and int(size) >= 2048


def renewal_refusal(request: SigningRequest) -> str | None:
    """Why the operator leaves ``request`` to an admin; None when it approves it.

    It approves exactly one thing: an agent renewing its own identity. The
    requester must be an agent's certificate (so it proved it holds the current
    one, and it still has the RBAC binding that lets it create the request); the
    request must name the same user and group and nothing more, for a client
    key only, with a strong key and a bounded lifetime. Such a request gives the
    requester no power it does not have already; anything else (enrolling a new
    node, another name, a longer life) is an admin's decision.
    """
    if request.decided:
        return "already decided"
    if request.signer != SIGNER:
        return f"signer {request.signer} is not {SIGNER}"
    node = node_of(request.requester, request.requester_groups)
    if node is None:
        return f"requested by {request.requester}, not by a Docker-host agent's certificate"
    wanted = (("CN", agent_user(node)), ("O", AGENT_GROUP))
    if sorted(request.subject) != sorted(wanted):
        shown = ", ".join(f"{k}={v}" for k, v in request.subject) or "empty"
        own = f"CN={agent_user(node)}, O={AGENT_GROUP}"
        return f"subject {shown} is not {own} (the requester's own)"
    if request.extensions:
        return f"asks for extensions ({', '.join(request.extensions)}); a renewal asks for none"
    if "client auth" not in request.usages or not set(request.usages) <= _ALLOWED_USAGES:
        return f"usages {', '.join(request.usages)} are not a client certificate's"
    seconds = request.expiration_seconds
    longest = int(MAX_RENEWAL_VALIDITY.total_seconds())
    if seconds is None or not int(MIN_VALIDITY.total_seconds()) <= seconds <= longest:
        return f"spec.expirationSeconds {seconds} is not between 600 and {longest}"
    if not _acceptable_key(request.key):
        return f"key {request.key} is not EC P-256/P-384 or RSA of 2048 bits or more"
    return None
