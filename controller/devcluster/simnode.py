"""A simulated GPU node for the embedded default: a GPUNode whose status says what an agent would.

Until a node agent runs in `ds01 dev up`, this gives the operator an
inventory to place reserving grants on: DS01's kind of server, 8 x
A100-SXM4-80GB fully NVLinked, GPUs 0 and 1 in MIG mode (2g.20gb x 3 +
1g.10gb). UUIDs are derived from the node name, so they are stable.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

MIG_LAYOUT = ("2g.20gb", "2g.20gb", "2g.20gb", "1g.10gb")


def _uuid(prefix: str, *parts: object) -> str:
    return f"{prefix}-{uuid.uuid5(uuid.NAMESPACE_URL, '/'.join(map(str, parts)))}"


def inventory(
    node: str,
    gpus: int = 8,
    mig: Mapping[int, Sequence[str]] | None = None,
    nvlink: bool = True,
    unhealthy: Sequence[int] = (),
) -> list[dict[str, Any]]:
    """The `status.devices` of a simulated A100 node.

    ``mig`` maps a GPU index to the profiles of its MIG instances (default: GPUs
    0 and 1 with DS01's layout); ``nvlink`` connects every GPU to every other.
    """
    layouts = {0: MIG_LAYOUT, 1: MIG_LAYOUT} if mig is None else mig
    devices = []
    for index in range(gpus):
        device: dict[str, Any] = {
            "uuid": _uuid("GPU", node, index),
            "index": index,
            "model": "NVIDIA A100-SXM4-80GB",
            "memoryMiB": 81920,
            "device": {"major": 195, "minor": index},
            "pciBusID": f"00000000:{0x07 + index * 0x10:02X}:00.0",
            "health": "Unhealthy" if index in unhealthy else "Healthy",
            "utilizationPercent": 0,
            "memoryUsedMiB": 0,
            "nvlinkPeers": [i for i in range(gpus) if i != index] if nvlink else [],
        }
        if index in layouts:
            start, instances = 0, []
            for gi, profile in enumerate(layouts[index], start=1):
                slices = int(profile[0])
                instances.append(
                    {
                        "uuid": _uuid("MIG", node, index, gi),
                        "profile": profile,
                        "slices": slices,
                        "placementStart": start,
                        "gpuInstanceID": gi,
                        "computeInstanceID": 0,
                        "capabilityDevice": {"major": 511, "minor": index * 16 + gi},
                        "health": "Healthy",
                    }
                )
                start += slices
            device.update(migEnabled=True, migTotalSlices=7, migInstances=instances)
            device.pop("utilizationPercent")
        devices.append(device)
    return devices


def gpunode(node: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The GPUNode object to apply: name and labels only.

    The spec is the operator's to fill (the CRD defaults `enforcement` to Audit
    until it does). Applying no spec field keeps a re-apply by `ds01 dev up`
    from ever conflicting with the operator's writes to it.
    """
    return {
        "apiVersion": "gpu.ds01.io/v1alpha1",
        "kind": "GPUNode",
        "metadata": {"name": node, "labels": {"gpu.ds01.io/simulated": "true", **(labels or {})}},
        "spec": {},
    }


def status(node: str) -> dict[str, Any]:
    """The status an agent would report for the node right now."""
    devices = inventory(node)
    healthy = sum(len(d.get("migInstances", [])) or 1 for d in devices)
    now = datetime.now(UTC).isoformat()
    return {
        "status": {
            "agent": {"version": "simulated", "heartbeatTime": now, "cgroupVersion": "v1"},
            "enforcement": "Audit",
            "gpus": len(devices),
            "healthyDevices": healthy,
            "devices": devices,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Simulated",
                    "message": "simulated by ds01 dev up; no agent runs on this node",
                    "lastTransitionTime": now,
                }
            ],
        }
    }
