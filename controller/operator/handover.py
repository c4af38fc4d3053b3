"""A new leader's first step: wait until its watch caches hold what the old leader wrote.

The follower's caches are warm, but a watch can lag. A leader deciding from a
cache that misses the old leader's last status writes could give a device
away twice: resourceVersion preconditions protect each object, not the
relation between two grants. So after taking the Lease (when the old leader
has stopped writing, `controller.policy.leadership`), the new leader lists
grants and nodes with a consistent read and waits until its caches show each
at that version or later (`leadership.stale_in_cache`). Objects the operator
cannot parse never reach its cache; after `LIMIT` it goes on and says which.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog
from kubernetes import client

from controller.api.base import GROUP, VERSION
from controller.policy.leadership import stale_in_cache
from controller.policy.plan import Snapshot

log = structlog.get_logger("ds01.operator.handover")

LIMIT = 10.0
"""Seconds a new leader waits for its caches before deciding anyway."""
POLL = 0.05


def listed_versions(custom: client.CustomObjectsApi) -> dict[str, str]:
    """Grants (`namespace/name`) and nodes (`node/name`) as the apiserver has them now."""
    versions: dict[str, str] = {}
    grants: Any = custom.list_cluster_custom_object(GROUP, VERSION, "gpugrants")
    for item in grants.get("items", []):
        meta = item["metadata"]
        versions[f"{meta['namespace']}/{meta['name']}"] = meta["resourceVersion"]
    nodes: Any = custom.list_cluster_custom_object(GROUP, VERSION, "gpunodes")
    for item in nodes.get("items", []):
        versions[f"node/{item['metadata']['name']}"] = item["metadata"]["resourceVersion"]
    return versions


def cached_versions(snapshot: Snapshot) -> dict[str, str | None]:
    versions: dict[str, str | None] = {
        f"{g.metadata.namespace}/{g.metadata.name}": g.metadata.resource_version
        for g in snapshot.grants
    }
    versions.update(
        {f"node/{n.metadata.name}": n.metadata.resource_version for n in snapshot.nodes}
    )
    return versions


async def catch_up(
    custom: client.CustomObjectsApi, cached: Callable[[], Snapshot], limit: float = LIMIT
) -> list[str]:
    """Wait until the caches hold the listed versions; the keys still behind at ``limit``."""
    started = time.monotonic()
    deadline = started + limit
    listed: dict[str, str] | None = None
    while listed is None:
        try:
            listed = await asyncio.to_thread(listed_versions, custom)
        except Exception as error:  # the apiserver away: nothing can be written either
            if time.monotonic() > deadline:
                log.warning("cannot list to catch up; deciding from the cache", error=str(error))
                return []
            await asyncio.sleep(0.5)
    while True:
        behind = stale_in_cache(listed, cached_versions(cached()))
        if not behind:
            log.info(
                "caches caught up with the previous leader",
                objects=len(listed),
                seconds=round(time.monotonic() - started, 3),
            )
            return []
        if time.monotonic() > deadline:
            log.warning("caches still behind; deciding anyway", behind=behind[:20])
            return behind
        await asyncio.sleep(POLL)
