"""One object that cannot be decided must not stop the decisions about every other.

`plan` judges each object inside its own guard. An object whose decision
raises is taken out of the rest of the pass (so it cannot poison what other
objects share with it: a node's inventory, a subject's usage), keeps what it
holds, and is marked: `Ready=False` with reason `Invalid` (its input is
beyond what the policy can judge, for example a date so far out that adding
its duration overflows) or `Error` (a fault in the policy code), a message
naming the failure, and one Warning Event when the failure first appears or
changes. Everyone else is decided as usual.

The CRD schemas are meant to refuse every such input at admission (the
property tests generate objects from the schemas and check that none gets
here); this is the net below that, for what a schema cannot say and for
objects written before a schema was tightened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from controller.api.base import Condition
from controller.policy.conditions import Want, find, merge
from controller.policy.records import EventRecord, ObjectRef

MAX_MESSAGE = 1000
"""Characters of an error kept in a condition message (Events are cut at 1024)."""
INPUT_ERRORS = (ValueError, ArithmeticError)
"""Exceptions that mean "this input cannot be judged" rather than a fault in the code
(pydantic's ValidationError is a ValueError; OverflowError an ArithmeticError)."""


@dataclass(frozen=True)
class Failure:
    """Why one object could not be decided in this pass."""

    about: ObjectRef
    reason: str
    """`Invalid` or `Error` (see the module docstring)."""
    message: str

    @property
    def key(self) -> str:
        """``Kind/namespace/name``: how failures are listed in the plan and in logs."""
        where = f"{self.about.namespace}/" if self.about.namespace else ""
        return f"{self.about.kind}/{where}{self.about.name}"


def failure(about: ObjectRef, error: Exception, during: str) -> Failure:
    """A failure record for ``error``, raised while ``during`` (e.g. "deciding the grant")."""
    reason = "Invalid" if isinstance(error, INPUT_ERRORS) else "Error"
    text = " ".join(str(error).split()) or "no message"
    message = f"cannot be decided ({during}): {type(error).__name__}: {text}"
    if reason == "Error":
        message += "; this is a fault in ds01-controller, please report it"
    return Failure(about, reason, message[:MAX_MESSAGE])


def failed_conditions(
    old: Sequence[Condition] | None, failed: Failure, now: datetime, generation: int | None
) -> list[Condition]:
    """``old`` conditions with Ready replaced by the failure (the others are kept as they were)."""
    kept = [c for c in old or () if c.type != "Ready"]
    ready = merge(old, [Want("Ready", False, failed.reason, failed.message)], now, generation)
    return [*kept, *ready]


def failure_events(old: Sequence[Condition] | None, failed: Failure) -> tuple[EventRecord, ...]:
    """One Warning Event, unless the stored Ready condition already says the same."""
    ready = find(old, "Ready")
    if ready is not None and (ready.reason, ready.message) == (failed.reason, failed.message):
        return ()
    return (EventRecord(failed.about, failed.reason, failed.message, "Warning"),)
