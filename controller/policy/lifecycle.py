"""Idle reclaim and runtime limits for GPU workloads, as DS01 has them. Pure.

Shared by the operator (pods) and the agent (Docker containers): each gathers
one `Check` per interval and keeps the `LifeState` that must survive between
checks; `judge` says keep, warn or stop.

DS01's rules, kept:
- only GPU workloads are judged (callers never pass CPU-only ones);
- idle means every signal is idle in a check: no full GPU of the workload above
  the utilisation threshold (for MIG slices, NVML reports no utilisation, so a
  slice is busy when it has compute processes), CPU under its threshold, and
  network traffic *in that check* under its threshold (DS01 wrongly used the
  cumulative counter);
- the idle clock starts with the first of `consecutiveChecks` idle checks in a
  row, and only after the startup grace; any busy check resets it;
- under high demand (share of GPUs allocated at or above the threshold) the idle
  timeout is scaled down (50% halves it);
- warnings at 80% and 95% of the idle timeout and 75% and 90% of the runtime,
  each once, the idle ones again after activity;
- a keep-alive holds off idle reaping for at most `keepAliveMax` (24 h);
- exemptions lift the idle timeout or the runtime cap.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from controller.api.ratelimit import GPURateLimitSpec, LifecycleOverride, WorkloadType
from controller.policy.quantity import parse_quantity_bytes
from controller.policy.units import parse_duration_limit

IDLE_WARNINGS = (80, 95)
RUNTIME_WARNINGS = (75, 90)


@dataclass(frozen=True)
class Rules:
    """One workload's lifecycle limits, resolved from its owner's effective policy."""

    idle_timeout: timedelta | None
    max_runtime: timedelta | None
    startup_grace: timedelta
    consecutive_checks: int
    gpu_below_percent: int
    cpu_below_percent: float
    network_below_bytes: int
    stop_grace: timedelta
    keep_alive_max: timedelta
    high_demand_threshold_percent: int
    high_demand_idle_percent: int


def rules_for(
    limits: GPURateLimitSpec, workload_type: WorkloadType, exempt_from: frozenset[str]
) -> Rules:
    """The rules of a workload type under an effective policy (built-in defaults filled in)."""
    life = limits.lifecycle
    assert life is not None and life.idle is not None, "pass an effective (complete) policy"
    override: LifecycleOverride | None = next(
        (o for o in life.by_workload_type or () if o.type == workload_type), None
    )

    def pick(name: str) -> str | None:
        own = getattr(override, name) if override is not None else None
        value = own if own is not None else getattr(life, name)
        return value if isinstance(value, str) or value is None else str(value)

    idle = parse_duration_limit(pick("idle_timeout") or "Unlimited")
    runtime = parse_duration_limit(pick("max_runtime") or "Unlimited")
    return Rules(
        idle_timeout=None if "IdleTimeout" in exempt_from else idle,
        max_runtime=None if "MaxRuntime" in exempt_from else runtime,
        startup_grace=parse_duration_limit(life.startup_grace or "0s") or timedelta(0),
        consecutive_checks=life.idle.consecutive_checks or 1,
        gpu_below_percent=life.idle.gpu_utilization_below_percent or 0,
        cpu_below_percent=float(life.idle.cpu_below_percent or 0),
        network_below_bytes=parse_quantity_bytes(life.idle.network_below_bytes or 0),
        stop_grace=parse_duration_limit(pick("stop_grace_period") or "60s") or timedelta(0),
        keep_alive_max=parse_duration_limit(life.keep_alive_max or "24h") or timedelta(hours=24),
        high_demand_threshold_percent=life.high_demand_threshold_percent or 100,
        high_demand_idle_percent=life.high_demand_idle_percent or 100,
    )


@dataclass(frozen=True)
class Check:
    """One observation of a workload."""

    at: datetime
    gpu_utilization: tuple[int | None, ...] = ()
    """Utilisation of each allocated full GPU (None: not reported)."""
    mig_busy: tuple[bool, ...] = ()
    """For each allocated MIG slice: whether it has compute processes."""
    cpu_percent: float = 0.0
    network_bytes: int = 0
    """Traffic since the previous check (not cumulative)."""

    def idle(self, rules: Rules) -> bool:
        gpus_idle = all(u is None or u < rules.gpu_below_percent for u in self.gpu_utilization)
        return (
            gpus_idle
            and not any(self.mig_busy)
            and self.cpu_percent < rules.cpu_below_percent
            and self.network_bytes < rules.network_below_bytes
        )


def observe(
    at: datetime,
    devices: Collection[str],
    utilization: Mapping[str, int | None],
    whole: Collection[str],
    busy_slices: Collection[str],
    *,
    cpu_percent: float = 0.0,
    network_bytes: int = 0,
) -> Check:
    """A check from a workload's devices, as both the agent and the operator see them.

    ``whole`` are the UUIDs of full GPUs (not in MIG mode): for those NVML gives
    a utilisation; every other device is a MIG slice, busy while it has compute
    processes (``busy_slices``), because NVML reports no utilisation for slices.
    """
    ordered = sorted(devices)
    return Check(
        at=at,
        gpu_utilization=tuple(utilization.get(d) for d in ordered if d in whole),
        mig_busy=tuple(d in busy_slices for d in ordered if d not in whole),
        cpu_percent=cpu_percent,
        network_bytes=network_bytes,
    )


@dataclass(frozen=True)
class LifeState:
    """What must survive between checks (in pod annotations, or the agent's state file)."""

    idle_streak: int = 0
    idle_since: datetime | None = None
    """The first idle check of the current streak."""
    warned: frozenset[str] = field(default_factory=frozenset)
    """Warnings already given: `idle-80`, `idle-95`, `runtime-75`, `runtime-90`."""


Action = Literal["keep", "warn", "stop"]


@dataclass(frozen=True)
class Verdict:
    action: Action
    state: LifeState
    reason: str = ""
    """`Idle` or `MaxRuntime` for warnings and stops."""
    message: str = ""
    warnings: tuple[str, ...] = ()


def _pct(part: timedelta, whole: timedelta) -> float:
    return 100.0 * part.total_seconds() / whole.total_seconds() if whole.total_seconds() else 100.0


def judge(
    rules: Rules,
    state: LifeState,
    check: Check,
    started_at: datetime,
    *,
    high_demand: bool = False,
    keep_alive_until: datetime | None = None,
) -> Verdict:
    """Keep, warn or stop one GPU workload after ``check``; the state to carry on."""
    now = check.at
    warned = set(state.warned)
    if now - started_at < rules.startup_grace or not check.idle(rules):
        warned -= {f"idle-{p}" for p in IDLE_WARNINGS}
        state = LifeState(warned=frozenset(warned))
    else:
        since = state.idle_since or now
        state = LifeState(state.idle_streak + 1, since, frozenset(warned))
    runtime = now - started_at
    if rules.max_runtime is not None and runtime >= rules.max_runtime:
        return Verdict(
            "stop",
            state,
            "MaxRuntime",
            f"ran {_hours(runtime)} of {_hours(rules.max_runtime)} allowed",
        )
    timeout = rules.idle_timeout
    if timeout is not None and high_demand:
        timeout = timeout * rules.high_demand_idle_percent / 100
    kept_alive = keep_alive_until is not None and now < keep_alive_until
    idle_for = (
        now - state.idle_since
        if state.idle_since is not None and state.idle_streak >= rules.consecutive_checks
        else timedelta(0)
    )
    if timeout is not None and not kept_alive and idle_for >= timeout:
        demand = " (halved: GPUs are in high demand)" if high_demand else ""
        return Verdict(
            "stop",
            state,
            "Idle",
            f"idle for {_hours(idle_for)}, the limit is {_hours(timeout)}{demand}",
        )
    due: list[str] = []
    if timeout is not None and not kept_alive and idle_for > timedelta(0):
        due += [f"idle-{p}" for p in IDLE_WARNINGS if _pct(idle_for, timeout) >= p]
    if rules.max_runtime is not None:
        due += [f"runtime-{p}" for p in RUNTIME_WARNINGS if _pct(runtime, rules.max_runtime) >= p]
    new = tuple(w for w in due if w not in warned)
    if not new:
        return Verdict("keep", state)
    state = replace(state, warned=frozenset(warned | set(new)))
    top = new[-1]
    if top.startswith("idle"):
        assert timeout is not None
        message = (
            f"idle for {_hours(idle_for)}; it will be stopped after {_hours(timeout)} idle "
            f"({top.split('-')[1]}% reached)"
        )
        return Verdict("warn", state, "Idle", message, new)
    assert rules.max_runtime is not None
    message = (
        f"running for {_hours(runtime)}; it will be stopped at {_hours(rules.max_runtime)} "
        f"({top.split('-')[1]}% reached)"
    )
    return Verdict("warn", state, "MaxRuntime", message, new)


def keep_alive_until(
    requested: datetime | None, set_at: datetime | None, rules: Rules
) -> datetime | None:
    """A keep-alive honoured for at most `keepAliveMax` from when it was set."""
    if requested is None or set_at is None:
        return None
    return min(requested, set_at + rules.keep_alive_max)


def in_high_demand(allocated: int, total: int, rules: Rules) -> bool:
    """Whether the share of allocated GPUs reached the high-demand threshold."""
    return total > 0 and 100 * allocated >= rules.high_demand_threshold_percent * total


def _hours(delta: timedelta) -> str:
    """A duration for people: `45s`, `12m`, `2h05m`."""
    seconds = int(delta.total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    minutes = seconds // 60
    return f"{minutes}m" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"
