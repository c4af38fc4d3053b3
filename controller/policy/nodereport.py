"""Which changes to a GPUNode call for a new plan at once.

An agent writes its node's status on every change and at a heartbeat, and a
busy GPU's utilisation changes at every scan: a node with work writes every
few seconds. No decision reads those readings (the metrics and the pod
lifecycle read them from the cache on their own schedule), so a version that
differs from the last only in them can wait for the next pass.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

READINGS = frozenset({"utilizationPercent", "memoryUsedMiB", "heartbeatTime"})
"""GPUNode status fields an agent changes at every scan and no decision reads: the
heartbeat and the live readings (metrics and the pod lifecycle read them from the
cache on their own schedule)."""


def decisive_part(body: Mapping[str, Any]) -> str:
    """What of a GPUNode object decisions can depend on, as a comparable string.

    Everything but `READINGS` (wherever they sit in `status`): two versions that
    differ only in readings give the same string, so the operator need not plan
    again at once (see `controller.operator.reconciler.LAZY`).
    """
    metadata = body.get("metadata") or {}
    return json.dumps(
        [
            metadata.get("labels"),
            metadata.get("deletionTimestamp"),
            body.get("spec"),
            _without_readings(body.get("status")),
        ],
        sort_keys=True,
        default=str,
    )


def _without_readings(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_readings(v) for k, v in value.items() if k not in READINGS}
    if isinstance(value, list):
        return [_without_readings(v) for v in value]
    return value
