"""The last applied policy (and accounts and limits), kept on the node for an unreachable apiserver.

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
from controller.api.ratelimit import GPURateLimitSpec
from controller.policy.effective import NamedLimit

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


VIEWS_FILE = "views.json"

Namespaces = list[tuple[str, dict[str, str], dict[str, str]]]


class ViewStore:
    """The last accounts and rate limits read from the apiserver, for a restart without it.

    The Docker gateway decides who a caller is and what they may ask for from
    these; after a restart with the apiserver away it uses the saved copy
    rather than treating every user as unknown. Saved only when they change.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / VIEWS_FILE
        self._saved: str | None = None

    def save(self, namespaces: Namespaces, limits: list[NamedLimit]) -> None:
        body = json.dumps(
            {
                "namespaces": [
                    {"name": n, "labels": labels, "annotations": notes}
                    for n, labels, notes in namespaces
                ],
                "limits": [{"name": lim.name, "spec": lim.spec.to_wire()} for lim in limits],
            },
            sort_keys=True,
        )
        if body == self._saved:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        self._saved = body

    def load(self) -> tuple[Namespaces, list[NamedLimit]] | None:
        """The saved views; None when there are none. A corrupt file stops the start."""
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            body = json.loads(raw)
            namespaces = [
                (str(n["name"]), dict(n["labels"]), dict(n["annotations"]))
                for n in body["namespaces"]
            ]
            limits = [
                NamedLimit(str(item["name"]), GPURateLimitSpec.model_validate(item["spec"]))
                for item in body["limits"]
            ]
        except (ValueError, KeyError, TypeError, ValidationError) as error:
            raise StateError(
                f"{self.path}: not saved accounts and limits ({error}); remove or repair it"
            ) from None
        self._saved = raw
        return namespaces, limits
