"""Container labels the agent may believe: only those the Docker gateway signed.

DS01 trusted owner labels its users could write. Here a container's owner and
devices are taken from labels only when they carry an HMAC the gateway made
with a key only the agent and gateway hold (a root-only file on the node).
Anything else — labels set through the engine's own socket, copied from another
container, or edited — fails verification and the owner comes from the
container process's UID instead.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controller.api import names


@dataclass(frozen=True)
class Stamp:
    """What the gateway vouches for: who owns a container and which devices it was given."""

    owner: str
    devices: tuple[str, ...]


def _payload(name: str, owner: str, devices: Sequence[str]) -> bytes:
    return "\n".join([name, owner, ",".join(sorted(devices))]).encode()


def sign(key: bytes, name: str, owner: str, devices: Sequence[str]) -> dict[str, str]:
    """The labels the gateway puts on a container it creates."""
    digest = hmac.new(key, _payload(name, owner, devices), hashlib.sha256).hexdigest()
    return {names.OWNER: owner, names.DEVICES: ",".join(sorted(devices)), names.SIGNATURE: digest}


def verify(key: bytes | None, name: str, labels: Mapping[str, str]) -> Stamp | None:
    """The stamp a container's labels carry, if the gateway's signature holds."""
    owner, signature = labels.get(names.OWNER), labels.get(names.SIGNATURE)
    if key is None or not owner or not signature:
        return None
    devices = tuple(d for d in labels.get(names.DEVICES, "").split(",") if d)
    expected = hmac.new(key, _payload(name, owner, devices), hashlib.sha256).hexdigest()
    return Stamp(owner, devices) if hmac.compare_digest(expected, signature) else None
