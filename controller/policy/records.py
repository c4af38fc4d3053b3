"""What a decision wants told: Kubernetes Events and audit records.

Policy code returns these as values; the operator posts them. An audit record
is DS01's envelope without the timestamp and source, which the writer adds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class ObjectRef:
    """The object an Event is about."""

    kind: str
    name: str
    namespace: str | None = None
    uid: str | None = None


@dataclass(frozen=True)
class EventRecord:
    """A Kubernetes Event to post."""

    about: ObjectRef
    reason: str
    message: str
    type: Literal["Normal", "Warning"] = "Normal"


@dataclass(frozen=True)
class AuditRecord:
    """One audit line: `event_type` is `category.action`."""

    event_type: str
    user: str
    details: dict[str, Any] = field(default_factory=dict)
    object_key: str | None = None
    """The write this record depends on: it is recorded only once that write succeeded."""
