"""The last applied policy, kept on the node so enforcement survives an unreachable apiserver.

Written atomically (temporary file, fsync, rename) whenever a new GPUNode spec
is applied. Read at start: with the apiserver away the agent keeps enforcing
it (fail open for users: nothing is revoked for lack of data, and entries whose
own expiry passes still close). A file that exists but cannot be read as a
policy stops the agent at start with a message naming it: a system operation
fails closed rather than enforcing a guess.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from controller.agent.publisher import PolicyView
from controller.api.node import GPUNodeSpec

FILE = "policy.json"


class StateError(RuntimeError):
    """The state directory holds something the agent must not guess about."""


class PolicyStore:
    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE

    def save(self, view: PolicyView, node: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "node": node,
            "generation": view.generation,
            "savedAt": datetime.now(UTC).isoformat(),
            "spec": view.spec.to_wire(),
        }
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(body, indent=1).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def load(self, node: str) -> PolicyView | None:
        """The saved policy for ``node``; None when there is none yet."""
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            body = json.loads(raw)
            if body.get("node") != node:
                raise StateError(
                    f"{self.path}: saved for node {body.get('node')!r}, this agent is {node!r}; "
                    "remove the file if the node was renamed"
                )
            return PolicyView(GPUNodeSpec.model_validate(body["spec"]), int(body["generation"]))
        except (ValueError, KeyError, TypeError, ValidationError) as error:
            raise StateError(
                f"{self.path}: not a saved policy ({error}); remove or repair it"
            ) from None
