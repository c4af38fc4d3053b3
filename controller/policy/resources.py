"""Per-container CPU, memory, /dev/shm and pids limits for Docker containers. Pure.

The caller's effective `resources.perWorkload` gives each a default (applied
when the container asks for nothing) and a maximum (a request above it is
refused, naming the `docker run` flag and the object that set the limit).
Memory is also the memory-plus-swap limit: swap is not available (DS01).

`docker update` can change the same limits on a running container, and can
lift them (`--pids-limit -1`, `--cpu-quota -1`), so updates are held to the
same maxima.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from controller.api.ratelimit import Bounds, PerWorkloadResources
from controller.policy.quantity import format_quantity, gibibytes, parse_quantity

NANO = 10**9
DEFAULT_CPU_PERIOD = 100_000
"""Docker's CFS period in microseconds when `CpuPeriod` is not given."""


@dataclass(frozen=True)
class Limit:
    """One resource's default and maximum (None: none / unlimited)."""

    default: Fraction | None
    max: Fraction | None
    source: str

    @staticmethod
    def of(bounds: Bounds | None, source: str) -> Limit:
        if bounds is None:
            return Limit(None, None, source)
        default = parse_quantity(bounds.default) if bounds.default is not None else None
        maximum = (
            parse_quantity(bounds.max)
            if bounds.max is not None and bounds.max != "Unlimited"
            else None
        )
        return Limit(default, maximum, source)


@dataclass(frozen=True)
class ContainerLimits:
    cpu: Limit
    memory: Limit
    shm: Limit
    pids: Limit

    @staticmethod
    def of(per: PerWorkloadResources | None, source_of: Callable[[str], str]) -> ContainerLimits:
        per = per or PerWorkloadResources()
        base = "resources.perWorkload"
        return ContainerLimits(
            cpu=Limit.of(per.cpu, source_of(f"{base}.cpu.max")),
            memory=Limit.of(per.memory, source_of(f"{base}.memory.max")),
            shm=Limit.of(per.shm, source_of(f"{base}.shm.max")),
            pids=Limit.of(per.pids, source_of(f"{base}.pids.max")),
        )


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _cpus(host: MutableMapping[str, Any]) -> Fraction | None:
    """CPUs a HostConfig asks for (`--cpus`, or `--cpu-quota`/`--cpu-period`); None: no limit."""
    nano = _int(host.get("NanoCpus"))
    if nano > 0:
        return Fraction(nano, NANO)
    quota = _int(host.get("CpuQuota"))
    if quota > 0:
        return Fraction(quota, _int(host.get("CpuPeriod")) or DEFAULT_CPU_PERIOD)
    return None


def _above(what: str, asked: Fraction, limit: Limit, memory: bool) -> str:
    shown = gibibytes(asked) if memory else format_quantity(asked)
    most = (
        gibibytes(limit.max or Fraction(0)) if memory else format_quantity(limit.max or Fraction(0))
    )
    return f"{what} {shown} is above your maximum of {most} per container ({limit.source})"


def _fill(
    host: MutableMapping[str, Any], key: str, asked: int, limit: Limit, flag: str
) -> str | None:
    """Default ``host[key]`` when nothing (or <= 0) is asked; refuse above the maximum."""
    if asked <= 0:
        if limit.default is not None:
            host[key] = int(limit.default)
        return None
    if limit.max is not None and asked > limit.max:
        return _above(flag, Fraction(asked), limit, memory=key != "PidsLimit")
    return None


def apply_create(
    host: MutableMapping[str, Any], limits: ContainerLimits, host_cpus: int | None = None
) -> str | None:
    """Fill defaults into ``host`` (a HostConfig) and check maxima; a refusal message or None.

    The CPU default is cut to the host's CPUs (``host_cpus``): the engine
    refuses a limit above what the machine has.
    """
    cpus = _cpus(host)
    if cpus is None:
        if limits.cpu.default is not None:
            default = limits.cpu.default
            if host_cpus is not None:
                default = min(default, Fraction(host_cpus))
            host["NanoCpus"] = int(default * NANO)
    elif limits.cpu.max is not None and cpus > limits.cpu.max:
        return _above("--cpus", cpus, limits.cpu, memory=False)
    refused = _fill(host, "Memory", _int(host.get("Memory")), limits.memory, "--memory")
    if refused is not None:
        return refused
    memory = _int(host.get("Memory"))
    swap = _int(host.get("MemorySwap"))
    if swap not in (0, memory) and memory > 0:
        return "--memory-swap: swap is not available here; the memory limit is also the swap limit"
    if memory > 0:
        host["MemorySwap"] = memory
    return _fill(host, "ShmSize", _int(host.get("ShmSize")), limits.shm, "--shm-size") or _fill(
        host, "PidsLimit", _int(host.get("PidsLimit")), limits.pids, "--pids-limit"
    )


def check_update(update: MutableMapping[str, Any], limits: ContainerLimits) -> str | None:
    """Hold a `docker update` body to the maxima; a refusal message or None.

    Only the fields the update names are looked at (the others keep their
    values). A value that lifts a limit (-1, or 0 where 0 means unlimited) is
    refused when there is a maximum.
    """
    if "NanoCpus" in update or "CpuQuota" in update:
        quota = _int(update.get("CpuQuota"))
        if quota < 0 and limits.cpu.max is not None:
            return f"--cpu-quota {quota} would lift your CPU limit ({limits.cpu.source})"
        cpus = _cpus(update)
        if cpus is not None and limits.cpu.max is not None and cpus > limits.cpu.max:
            return _above("--cpus", cpus, limits.cpu, memory=False)
    if "Memory" in update or "MemorySwap" in update:
        memory = _int(update.get("Memory"))
        swap = _int(update.get("MemorySwap"))
        if memory < 0 and limits.memory.max is not None:
            return f"--memory {memory} would lift your memory limit ({limits.memory.source})"
        if memory > 0 and limits.memory.max is not None and memory > limits.memory.max:
            return _above("--memory", Fraction(memory), limits.memory, memory=True)
        if swap not in (0, memory):
            return (
                "--memory-swap: swap is not available here; the memory limit is also the swap limit"
            )
        if memory > 0:
            update["MemorySwap"] = memory
    if "PidsLimit" in update and update.get("PidsLimit") is not None:
        pids = _int(update.get("PidsLimit"))
        if limits.pids.max is not None and (pids <= 0 or pids > limits.pids.max):
            if pids <= 0:
                return f"--pids-limit {pids} would lift your process limit ({limits.pids.source})"
            return _above("--pids-limit", Fraction(pids), limits.pids, memory=False)
    return None
