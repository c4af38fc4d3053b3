"""Kubeconfig files for the local control plane's identities."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from controller.devcluster.pki import KeyPair


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_kubeconfig(
    path: Path, server: str, ca_pem: bytes, user: str, credentials: KeyPair | str
) -> Path:
    """Write a kubeconfig for ``user``: a client certificate, or a bearer token string.

    The file is created mode 0600 before anything secret is written into it.
    """
    auth: dict[str, str]
    if isinstance(credentials, KeyPair):
        auth = {
            "client-certificate-data": _b64(credentials.cert),
            "client-key-data": _b64(credentials.key),
        }
    else:
        auth = {"token": credentials}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "ds01-dev",
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)},
            }
        ],
        "users": [{"name": user, "user": auth}],
        "contexts": [{"name": "ds01-dev", "context": {"cluster": "ds01-dev", "user": user}}],
        "current-context": "ds01-dev",
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
