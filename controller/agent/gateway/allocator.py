"""One lock around the decisions that count what exists: workload counts and GPUs.

Two users racing for the last free GPU must not both get it, and a user at
`maxWorkloads - 1` must not get two containers by creating them at once. So a
create decides under one lock, from a fresh listing of the engine's containers
(their signed labels say who holds what) plus the creates decided but not yet
answered by the engine ("pending"). A pending entry is dropped, under the same
lock, only after the engine answered: by then the listing shows the container
(or it failed and holds nothing). Nothing here survives a restart, and nothing
needs to: the labels are the record.

A stopped GPU container keeps its devices for its owner's `holdAfterStop`
(DS01's "GPU kept after a container stops"); after that they may go to someone
else, and starting the old container again is refused while they are taken.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from controller.agent.gateway.engine import HOLDING_STATES, Engine, Owned

T = TypeVar("T")


@dataclass(frozen=True)
class _Pending:
    owner: str
    devices: tuple[str, ...]


@dataclass(frozen=True)
class Tally:
    """What the caller's decision sees: their container count and every held device."""

    count: int
    held: dict[str, str]
    """Device UUID -> the owner of the container (or pending create) holding it."""


class Allocator:
    def __init__(
        self,
        engine: Engine,
        hold_after_stop: Callable[[str], timedelta],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.engine = engine
        self.hold_after_stop = hold_after_stop
        self.clock = clock
        self.lock = asyncio.Lock()
        self._pending: dict[int, _Pending] = {}
        self._tokens = itertools.count(1)

    async def _held(self, containers: list[Owned], skip: str | None = None) -> dict[str, str]:
        now = self.clock()
        held: dict[str, str] = {}
        for container in containers:
            if not container.devices or container.owner is None or container.id == skip:
                continue
            if container.state not in HOLDING_STATES:
                inspected = await self.engine.container(container.id)
                if inspected is None:
                    continue  # removed meanwhile: holds nothing
                finished = inspected.finished_at
                if (
                    inspected.state not in HOLDING_STATES
                    and finished is not None
                    and finished + self.hold_after_stop(container.owner) <= now
                ):
                    continue  # stopped longer than its owner's holdAfterStop
            for device in container.devices:
                held[device] = container.owner
        for pending in self._pending.values():
            for device in pending.devices:
                held[device] = pending.owner
        return held

    async def admit(
        self, owner: str, decide: Callable[[Tally], tuple[T, tuple[str, ...] | None]]
    ) -> tuple[T, int | None]:
        """Decide a create under the lock; a token when it was admitted with these devices.

        ``decide`` returns (its result, the devices to hold) — None for devices
        means refused. The caller must `release` the token once the engine
        answered the create.
        """
        async with self.lock:
            containers = await self.engine.containers()
            count = sum(1 for c in containers if c.owner == owner)
            count += sum(1 for p in self._pending.values() if p.owner == owner)
            held = await self._held(containers)
            result, devices = decide(Tally(count, held))
            if devices is None:
                return result, None
            token = next(self._tokens)
            self._pending[token] = _Pending(owner, devices)
            return result, token

    async def release(self, token: int) -> None:
        async with self.lock:
            self._pending.pop(token, None)

    async def taken(self, container: Owned) -> dict[str, str]:
        """Devices of ``container`` that another container (or pending create) holds now."""
        if not container.devices:
            return {}
        async with self.lock:
            held = await self._held(await self.engine.containers(), skip=container.id)
        return {d: held[d] for d in container.devices if d in held}
