"""Reading a GPUNode's spec on the agent: a bad entry is skipped and reported, never the whole spec.

The agent enforces whatever spec it last read. If one entry of a new spec
could not be read (a field a newer operator writes in a form this agent's
model refuses) and the whole spec were rejected, the agent would keep
enforcing an older spec for every user on the node. Instead each list
entry is read on its own: entries that fail are left out (with a message
naming the entry and the reason) and everything else takes effect. The
node's status (written by the agent itself) is never needed to read the
spec, so nothing in it can block the spec either.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from controller.api.node import (
    GPUNodeSpec,
    HostAccessEntry,
    LifecycleExemptionEntry,
    Reservation,
    Revocation,
)

_ENTRIES: dict[str, type[BaseModel]] = {
    "hostAccess": HostAccessEntry,
    "reservations": Reservation,
    "revocations": Revocation,
    "lifecycleExemptions": LifecycleExemptionEntry,
}


@dataclass(frozen=True)
class SpecRead:
    """A node's spec as far as it could be read, and what was left out."""

    spec: GPUNodeSpec
    generation: int
    uid: str | None
    skipped: list[str] = field(default_factory=list)
    """`spec.<list>[i]: reason` for each entry left out."""


def _reason(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else str(first["msg"])


def read_spec(body: Mapping[str, Any]) -> SpecRead:
    """The spec of a GPUNode object as the apiserver returned it (a dict)."""
    metadata = body.get("metadata") or {}
    raw = dict(body.get("spec") or {})
    generation = int(metadata.get("generation") or 0)
    uid = metadata.get("uid")
    try:
        return SpecRead(GPUNodeSpec.model_validate(raw), generation, uid)
    except ValidationError:
        pass
    skipped: list[str] = []
    for name, model in _ENTRIES.items():
        entries = raw.get(name)
        if not isinstance(entries, list):
            if entries is not None:
                skipped.append(f"spec.{name}: not a list")
                raw.pop(name)
            continue
        kept = []
        for i, entry in enumerate(entries):
            try:
                model.model_validate(entry)
            except ValidationError as error:
                skipped.append(f"spec.{name}[{i}]: {_reason(error)}")
                continue
            kept.append(entry)
        raw[name] = kept or None
    try:
        spec = GPUNodeSpec.model_validate({k: v for k, v in raw.items() if v is not None})
    except ValidationError as error:
        # What is left is the mode itself: read it as Audit (report, never block) until
        # a spec this agent can read arrives.
        skipped.append(f"spec: {_reason(error)}; enforcing nothing (Audit) until it is readable")
        spec = GPUNodeSpec(enforcement="Audit")
    return SpecRead(spec, generation, uid, skipped)
