"""A Docker-host agent's credentials on disk: its kubeconfig, and a request in flight.

The kubeconfig carries the certificate and key inline (one file, mode 0600),
and is only ever replaced whole (a temporary file in the same directory,
synced, renamed over the old one): the agent, which rereads it when it
changes, never reads half of one, and a crash during a renewal leaves the old
credentials. A request waiting for approval keeps its private key in
``<kubeconfig>.pending`` (0600), so a later run collects the certificate
instead of starting over; the key never leaves the host.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controller.policy.agentidentity import AGENT_GROUP, agent_user, node_of


def new_request(node: str) -> tuple[bytes, bytes]:
    """A fresh private key and a certificate request for ``node``'s agent identity (both PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, AGENT_GROUP),
            x509.NameAttribute(NameOID.COMMON_NAME, agent_user(node)),
        ]
    )
    request = (
        x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, request.public_bytes(serialization.Encoding.PEM)


def write_private(path: Path, content: bytes) -> None:
    """Replace ``path`` with ``content`` atomically, mode 0600 from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class AgentCredentials:
    """What an agent's kubeconfig holds: where the apiserver is, how to trust it, who we are."""

    server: str
    ca_pem: bytes | None
    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def user(self) -> str:
        names = self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if names else ""

    @property
    def groups(self) -> tuple[str, ...]:
        names = self.certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        return tuple(str(n.value) for n in names)

    @property
    def node(self) -> str | None:
        """The node this certificate names, or None when it is not an agent's."""
        return node_of(self.user, self.groups)

    @property
    def not_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    def kubeconfig(self) -> dict[str, Any]:
        cluster: dict[str, str] = {"server": self.server}
        if self.ca_pem:
            cluster["certificate-authority-data"] = _b64(self.ca_pem)
        user = self.user or "ds01-agent"
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "ds01", "cluster": cluster}],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate-data": _b64(self.cert_pem),
                        "client-key-data": _b64(self.key_pem),
                    },
                }
            ],
            "contexts": [{"name": "ds01-agent", "context": {"cluster": "ds01", "user": user}}],
            "current-context": "ds01-agent",
            "preferences": {},
        }

    def write(self, path: Path) -> None:
        write_private(path, yaml.safe_dump(self.kubeconfig(), sort_keys=False).encode())

    @classmethod
    def read(cls, path: Path) -> AgentCredentials:
        """The credentials in ``path``; ValueError naming what is missing when it holds none."""
        try:
            loaded = yaml.safe_load(path.read_text())
            context = next(
                c["context"]
                for c in loaded["contexts"]
                if c["name"] == loaded.get("current-context", loaded["contexts"][0]["name"])
            )
            cluster = next(
                c["cluster"] for c in loaded["clusters"] if c["name"] == context["cluster"]
            )
            user = next(u["user"] for u in loaded["users"] if u["name"] == context["user"])
        except (OSError, yaml.YAMLError, KeyError, TypeError, IndexError, StopIteration) as error:
            raise ValueError(f"{path}: not a readable kubeconfig ({error!r})") from None
        if "client-certificate-data" not in user or "client-key-data" not in user:
            raise ValueError(
                f"{path}: its user holds no inline client certificate and key "
                "(client-certificate-data, client-key-data); enrol with `ds01 agent enroll`"
            )
        ca = cluster.get("certificate-authority-data")
        return cls(
            server=str(cluster["server"]),
            ca_pem=base64.b64decode(ca) if ca else None,
            cert_pem=base64.b64decode(user["client-certificate-data"]),
            key_pem=base64.b64decode(user["client-key-data"]),
        )


@dataclass(frozen=True)
class PendingRequest:
    """A certificate request submitted and not yet collected, with its private key."""

    node: str
    name: str
    """The CertificateSigningRequest's name."""
    key_pem: bytes
    submitted: datetime

    @staticmethod
    def path_for(kubeconfig: Path) -> Path:
        return kubeconfig.with_name(kubeconfig.name + ".pending")

    def save(self, kubeconfig: Path) -> None:
        record = {
            "node": self.node,
            "name": self.name,
            "key": self.key_pem.decode(),
            "submitted": self.submitted.isoformat(),
        }
        write_private(self.path_for(kubeconfig), json.dumps(record).encode())

    @classmethod
    def load(cls, kubeconfig: Path) -> PendingRequest | None:
        """The request in flight for ``kubeconfig``; None when none is (or it is unreadable)."""
        try:
            record = json.loads(cls.path_for(kubeconfig).read_text())
            return cls(
                node=str(record["node"]),
                name=str(record["name"]),
                key_pem=str(record["key"]).encode(),
                submitted=datetime.fromisoformat(record["submitted"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @staticmethod
    def discard(kubeconfig: Path) -> None:
        PendingRequest.path_for(kubeconfig).unlink(missing_ok=True)


def now_utc() -> datetime:
    return datetime.now(UTC)
