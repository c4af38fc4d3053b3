"""Conditions in the metav1.Condition shape, computed level-triggered.

A reconcile recomputes every condition from scratch; `merge` keeps the
existing `lastTransitionTime` when the status did not change, so recomputing
is idempotent and an unchanged object produces an unchanged status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from controller.api.base import Condition


@dataclass(frozen=True)
class Want:
    """A condition as a decision: type, status, reason, message (no time yet)."""

    type: str
    status: bool
    reason: str
    message: str

    @property
    def status_text(self) -> str:
        return "True" if self.status else "False"


def merge(
    existing: Sequence[Condition] | None,
    wanted: Sequence[Want],
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    """The conditions to write: ``wanted`` in order, keeping unchanged transition times."""
    by_type = {c.type: c for c in existing or ()}
    out = []
    for want in wanted:
        old = by_type.get(want.type)
        since = old.last_transition_time if old and old.status == want.status_text else now
        out.append(
            Condition(
                type=want.type,
                status=want.status_text,
                reason=want.reason,
                message=want.message,
                last_transition_time=since,
                observed_generation=generation,
            )
        )
    return out


def find(conditions: Sequence[Condition] | None, type_: str) -> Condition | None:
    """The condition of ``type_``, if present."""
    return next((c for c in conditions or () if c.type == type_), None)
