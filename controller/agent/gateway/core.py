"""The gateway's settings and the state its connections share.

Shared state is small on purpose: an engine client, the identity cache, the
allocation lock and what is pending under it. Everything else (accounts,
limits, the node's spec and GPUs) is read from the agent at each decision.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog

from controller.agent.gateway.allocator import Allocator
from controller.agent.gateway.engine import Engine
from controller.agent.gateway.identity import Identities, Identity
from controller.agent.gateway.views import PolicySource
from controller.policy.effective import EffectiveLimits, NamedLimit, effective_limits
from controller.policy.units import parse_duration_limit

log = structlog.get_logger("ds01.gateway")

PROTECTED_PATHS = ("/proc", "/sys", "/dev")
"""Never bound into a container, nor any directory above them (the root)."""
DOCKER_DEFAULT_CAPABILITIES = frozenset(
    {
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    }
)
"""What every container has already (adding one again changes nothing)."""
USER_CAPABILITIES = DOCKER_DEFAULT_CAPABILITIES | {"IPC_LOCK", "SYS_NICE"}
"""What users may add by default: the defaults, plus pinned memory and nice values that
GPU and RDMA workloads ask for (real-time scheduling stays off: the engine gives
containers no real-time CPU time)."""


@dataclass(frozen=True)
class GatewayOptions:
    """How `ds01 agent --gateway-socket ...` serves users."""

    socket: Path
    """The socket users talk to (the path their docker CLI uses)."""
    engine_socket: str
    """The engine's own socket: root-only, used by the agent and admins."""
    key: bytes
    """The key container labels are signed with (the agent's `--gateway-key`)."""
    admin_group: str | None = None
    """Linux group whose members (and root) pass through unchanged."""
    dev_root: Path = Path("/dev")
    host_dev_root: Path | None = None
    host_etc: Path | None = None
    """The host's /etc, for users and groups, when the gateway does not run on the host."""
    """Where the engine's host has `dev_root` (None: the same path; `--host-dev-root`)."""
    bind_roots: tuple[str, ...] = ("{home}",)
    """Host paths users may bind; `{home}` and `{login}` are filled in per caller."""
    socket_mode: int = 0o666
    socket_group: str | None = None
    runtimes: frozenset[str] = frozenset({"runc"})
    """Runtimes users may name with --runtime."""
    runtime: str | None = None
    """The runtime every user container runs under (the device-rule wrapper), if set."""
    protected: tuple[str, ...] = PROTECTED_PATHS
    devices: tuple[str, ...] = ()
    """Host device paths users may map with --device (none by default)."""
    capabilities: frozenset[str] = USER_CAPABILITIES
    min_host_port: int = 1024
    body_limit: int = 16 << 20
    """Largest create/update/exec body the gateway reads (they are small JSON)."""


AuditWrite = Callable[[str, str | None, str, dict[str, Any]], None]
"""(event type, user, message, details): one audit record, written before the caller goes on."""
EventPost = Callable[[str, str | None, str, str, dict[str, Any]], None]
"""(event type, user, message, Normal|Warning, details): one Kubernetes Event, best effort."""


class Recorder:
    """Every decision's record: the audit line first and always, then an Event if it can.

    The audit record is written before the user gets the answer and is never
    dropped: a slow disk slows the gateway (back-pressure) rather than lose a
    refusal. Events go to the apiserver off the request path, from a queue
    and one thread; when the queue is full an Event is dropped and counted
    (its audit record already exists).
    """

    def __init__(self, audit: AuditWrite, event: EventPost | None, size: int = 10_000) -> None:
        self.audit = audit
        self.event = event
        self.dropped = 0
        self._queue: queue.Queue[tuple[str, str | None, str, str, dict[str, Any]] | None] = (
            queue.Queue(size)
        )
        self._thread = threading.Thread(target=self._run, name="gateway-events", daemon=True)
        self._thread.start()

    async def record(
        self,
        event_type: str,
        user: str | None,
        message: str,
        details: dict[str, Any],
        kind: str = "Warning",
    ) -> None:
        await asyncio.to_thread(self.audit, event_type, user, message, details)
        if self.event is None:
            return
        try:
            self._queue.put_nowait((event_type, user, message, kind, details))
        except queue.Full:
            self.dropped += 1
            log.warning("gateway events dropped (audit records kept)", dropped=self.dropped)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                assert self.event is not None
                self.event(*item)
            except Exception as error:  # best effort, never the request's problem
                log.warning("gateway event not posted", error=str(error)[:300])
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def flush(self) -> None:
        """Wait until every Event queued so far was posted (tests, shutdown)."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)


@dataclass
class Core:
    options: GatewayOptions
    source: PolicySource
    engine: Engine
    identities: Identities
    recorder: Recorder
    allocator: Allocator = field(init=False)
    _limits: dict[tuple[str, tuple[str, ...]], tuple[Sequence[NamedLimit], EffectiveLimits]] = (
        field(default_factory=dict)
    )

    def __post_init__(self) -> None:
        self.allocator = Allocator(self.engine, self.hold_after_stop)

    async def record(
        self,
        event_type: str,
        user: str | None,
        message: str,
        details: dict[str, Any],
        kind: str = "Warning",
    ) -> None:
        await self.recorder.record(event_type, user, message, details, kind)

    def limits_of(self, user: str, groups: Sequence[str] = ()) -> EffectiveLimits:
        """The effective limits of ``user`` (cached until the agent reads new limits)."""
        limits: Sequence[NamedLimit] = self.source.limits()
        key = (user, tuple(groups))
        cached = self._limits.get(key)
        if cached is not None and cached[0] is limits:  # the agent replaces the list on refresh
            return cached[1]
        found = effective_limits(user, groups, limits)
        if len(self._limits) > 4096:
            self._limits.clear()
        self._limits[key] = (limits, found)
        return found

    def limits_for(self, identity: Identity) -> EffectiveLimits:
        return self.limits_of(identity.caller.owner, identity.groups)

    def hold_after_stop(self, owner: str) -> timedelta:
        groups = self.source.accounts().groups.get(owner, ())
        life = self.limits_of(owner, groups).spec.lifecycle
        value = life.hold_after_stop if life is not None else None
        if value is None:
            return timedelta(0)
        limit = parse_duration_limit(value)
        return limit if limit is not None else timedelta(days=36500)  # Unlimited: kept
