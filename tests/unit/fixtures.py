"""Builders for API objects in unit tests: agent reports and grants as the apiserver stores them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from controller.api.kinds import GPUGrant, GPUNode

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def device_uuid(prefix: str, node: str, index: int, sub: int = 0) -> str:
    return f"{prefix}-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{node}/{index}/{sub}')}"


def a100_node(
    name: str = "gpu-node-1",
    gpus: int = 8,
    mig: dict[int, list[str]] | None = None,
    nvlink: bool = True,
    unhealthy: tuple[int, ...] = (),
    labels: dict[str, str] | None = None,
) -> GPUNode:
    """An agent's report of an A100 node; ``mig`` maps a GPU index to its instances' profiles."""
    mig = mig or {}
    devices: list[dict[str, Any]] = []
    for index in range(gpus):
        device: dict[str, Any] = {
            "uuid": device_uuid("GPU", name, index),
            "index": index,
            "model": "NVIDIA A100-SXM4-40GB",
            "memoryMiB": 40960,
            "device": {"major": 195, "minor": index},
            "health": "Unhealthy" if index in unhealthy else "Healthy",
            "nvlinkPeers": [i for i in range(gpus) if i != index] if nvlink else [],
        }
        if index in mig:
            start = 0
            instances = []
            for sub, profile in enumerate(mig[index]):
                slices = int(profile[0])
                instances.append(
                    {
                        "uuid": device_uuid("MIG", name, index, sub),
                        "profile": profile,
                        "slices": slices,
                        "placementStart": start,
                        "gpuInstanceID": sub + 1,
                        "computeInstanceID": 0,
                    }
                )
                start += slices
            device |= {"migEnabled": True, "migTotalSlices": 7, "migInstances": instances}
        devices.append(device)
    return GPUNode.model_validate(
        {
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"enforcement": "Enforce"},
            "status": {"devices": devices, "gpus": gpus},
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
