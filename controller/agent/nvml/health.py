"""Device health: why a GPU or MIG slice is unhealthy, and how it becomes healthy again.

Two causes, with different rules for recovery:

- lost: the GPU answered a call with GPU_IS_LOST (fell off the bus) or
  RESET_REQUIRED. This is an observation of the current scan: the device is
  healthy again as soon as NVML answers for it again (after a reset or
  re-attach), without anyone having to say so.
- critical XID: as in NVIDIA's device plugin, a critical XID makes the device
  unhealthy and application XIDs (a program's own fault: 13, 31, 43, 45, 68,
  109) are ignored. Unlike NVIDIA's plugin, which never lets a device back,
  an XID-marked device recovers either explicitly (`mark_healthy`, for an
  admin or for the agent after it reset the GPU) or by rule: when
  `recovery_s` is set and that long has passed since the device's last
  critical XID while it keeps answering NVML. The rule is off by default,
  because some XIDs (48 double-bit ECC, 79 fell off the bus) mean the GPU
  needs a reset before it can be trusted.

This module does no I/O; the clock is injected so the rule is testable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from controller.agent.inventory import XidEvent

log = structlog.get_logger("ds01.agent.nvml")

APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})
"""XIDs caused by the application on the device, not by the device (NVIDIA's plugin skips them)."""


@dataclass(frozen=True)
class _Xid:
    xid: int
    at: float


class HealthLedger:
    """Unhealthy device UUIDs (GPU or MIG) and their reasons. Not thread-safe: callers lock."""

    def __init__(
        self,
        ignored_xids: Iterable[int] = APPLICATION_XIDS,
        recovery_s: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.ignored_xids = frozenset(ignored_xids)
        self.recovery_s = recovery_s
        self._clock = clock or time.monotonic
        self._xids: dict[str, _Xid] = {}
        self._lost: dict[str, str] = {}

    def is_critical(self, xid: int) -> bool:
        return xid not in self.ignored_xids

    def record_xid(self, event: XidEvent) -> bool:
        """Note an XID; True when it makes (or keeps) the device unhealthy."""
        if not self.is_critical(event.xid):
            log.info("application XID ignored", device=event.device_uuid, xid=event.xid)
            return False
        if event.device_uuid not in self._xids:
            log.warning("critical XID: device unhealthy", device=event.device_uuid, xid=event.xid)
        self._xids[event.device_uuid] = _Xid(event.xid, self._clock())
        return True

    def lost(self, uuid: str, reason: str) -> None:
        if uuid not in self._lost:
            log.error("GPU lost: unhealthy", device=uuid, reason=reason)
        self._lost[uuid] = reason

    def answered(self, uuid: str) -> None:
        """NVML answered for this device in the current scan: apply the recovery rules."""
        if self._lost.pop(uuid, None) is not None:
            log.warning("GPU answers again", device=uuid)
        seen = self._xids.get(uuid)
        if seen and self.recovery_s is not None and self._clock() - seen.at >= self.recovery_s:
            del self._xids[uuid]
            log.warning(
                "device healthy again: no critical XID", device=uuid, since_s=self.recovery_s
            )

    def mark_healthy(self, uuid: str) -> bool:
        """Forget every reason against this device; False when it had none.

        A GPU that is still lost is found lost again by the next scan.
        """
        had = self._xids.pop(uuid, None) is not None
        had = self._lost.pop(uuid, None) is not None or had
        if had:
            log.warning("device marked healthy", device=uuid)
        return had

    def is_lost(self, uuid: str) -> bool:
        return uuid in self._lost

    def lost_uuids(self) -> frozenset[str]:
        return frozenset(self._lost)

    def reason(self, uuid: str) -> str | None:
        """Why the device is unhealthy, or None when it is healthy."""
        if uuid in self._lost:
            return f"lost: {self._lost[uuid]}"
        if uuid in self._xids:
            return f"XID {self._xids[uuid].xid}"
        return None

    def unhealthy(self) -> dict[str, str]:
        return {
            uuid: reason for uuid in {*self._lost, *self._xids} if (reason := self.reason(uuid))
        }
