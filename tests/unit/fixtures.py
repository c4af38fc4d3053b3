"""Builders for API objects in unit tests: agent reports and grants as the apiserver stores them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from controller.api.kinds import GPUGrant, GPUNode
from controller.devcluster import simnode

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def a100_node(
    name: str = "gpu-node-1",
    gpus: int = 8,
    mig: dict[int, list[str]] | None = None,
    nvlink: bool = True,
    unhealthy: tuple[int, ...] = (),
    labels: dict[str, str] | None = None,
) -> GPUNode:
    """An agent's report of an A100 node; ``mig`` maps a GPU index to its instances' profiles."""
    return GPUNode.model_validate(
        {
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"enforcement": "Enforce"},
            "status": {
                "devices": simnode.inventory(name, gpus, mig or {}, nvlink, unhealthy),
                "gpus": gpus,
            },
        }
    )


def grant(
    name: str,
    user: str = "alice@lab.example",
    namespace: str = "u-alice",
    count: int = 1,
    profile: str | None = None,
    created: datetime = T0,
    duration: str | None = "2h",
    **spec: Any,
) -> GPUGrant:
    gpus: dict[str, Any] = {"count": count}
    if profile:
        gpus["migProfile"] = profile
    body: dict[str, Any] = {
        "subject": {"kind": "User", "name": user},
        "gpus": gpus,
        "reason": "test",
        **spec,
    }
    if duration:
        body["duration"] = duration
    return GPUGrant.model_validate(
        {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "creationTimestamp": created.isoformat(),
                "generation": 1,
                "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
            },
            "spec": body,
        }
    )


def later(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)
