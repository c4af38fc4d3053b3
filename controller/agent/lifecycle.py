"""Idle reclaim and runtime limits for GPU containers on a Docker host.

The decisions are `controller.policy.lifecycle` (shared with the operator's pod
lifecycle); this module gathers each container's check — utilisation of its
whole GPUs, compute processes on its MIG slices, CPU from its cpuacct cgroup,
network bytes from its network namespace, both as deltas since the previous
check — and acts: Events and audit records for warnings, a stop with the
type's SIGTERM grace for a verdict to stop. The state that must survive an
agent restart (idle streaks, warnings given) is kept in the state directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import structlog

from controller.agent.docker import Container, DockerClient, DockerError
from controller.agent.inventory import Inventory, Sample
from controller.api import names
from controller.api.node import GPUNodeSpec
from controller.api.ratelimit import GPURateLimitSpec, WorkloadType
from controller.policy.lifecycle import (
    Check,
    LifeState,
    Verdict,
    in_high_demand,
    judge,
    keep_alive_until,
    observe,
    rules_for,
)

log = structlog.get_logger("ds01.agent.lifecycle")

Notify = Callable[[str, str | None, str, str, dict[str, object]], None]


def workload_type(container: Container) -> WorkloadType:
    """DS01's container types: by tooling labels, else a raw `docker run`."""
    labels = container.labels
    declared = labels.get(names.WORKLOAD_TYPE)
    if declared in ("job", "unknown"):
        return declared  # type: ignore[return-value]
    if container.name.startswith("vsc-") or any(k.startswith("devcontainer.") for k in labels):
        return "devcontainer"
    if any(k.startswith("com.docker.compose.") for k in labels):
        return "compose"
    return "docker"


def _controller_path(proc_root: Path, pid: int, controller: str) -> str | None:
    try:
        for line in (proc_root / str(pid) / "cgroup").read_text().splitlines():
            _, names, path = line.split(":", 2)
            if controller in names.split(","):  # "" finds the v2 (unified) line
                return path
    except OSError:
        return None
    return None


def _cpu_ns(cgroup_root: Path, proc_root: Path, pid: int) -> int | None:
    """CPU time of the process's cgroup: cpuacct (v1) or cpu.stat (v2); None if unreadable."""
    path = _controller_path(proc_root, pid, "cpuacct")
    try:
        if path is not None:
            return int((cgroup_root / "cpuacct" / path.lstrip("/") / "cpuacct.usage").read_text())
        unified = _controller_path(proc_root, pid, "")
        if unified is None:
            return None
        for line in (cgroup_root / unified.lstrip("/") / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) * 1000
    except (OSError, ValueError):
        return None
    return None


def _network_bytes(proc_root: Path, pid: int) -> int:
    """Bytes received and sent on the container's interfaces (loopback excluded)."""
    try:
        lines = (proc_root / str(pid) / "net" / "dev").read_text().splitlines()[2:]
    except OSError:
        return 0
    total = 0
    for line in lines:
        name, _, counters = line.partition(":")
        if name.strip() == "lo":
            continue
        fields = counters.split()
        total += int(fields[0]) + int(fields[8])
    return total


@dataclass
class _Seen:
    at: datetime
    cpu_ns: int | None
    network: int


@dataclass
class DockerLifecycle:
    """Judges every running GPU container once per scan and acts on the verdicts."""

    docker: DockerClient
    notify: Notify
    cgroup_root: Path = Path("/sys/fs/cgroup")
    proc_root: Path = Path("/proc")
    state_file: Path | None = None
    _states: dict[str, LifeState] = field(default_factory=dict)
    _seen: dict[str, _Seen] = field(default_factory=dict)
    _loaded: bool = False

    def run(
        self,
        containers: Sequence[tuple[Container, str | None, frozenset[str]]],
        *,
        inventory: Inventory,
        sample: Sample,
        limits_of: Callable[[str | None], GPURateLimitSpec],
        spec: GPUNodeSpec,
        now: datetime,
        audit: bool = False,
    ) -> list[tuple[Container, Verdict]]:
        """Judge ``containers`` ((container, owner, allocated devices), running ones).

        With ``audit`` (the node's Audit mode) nothing is stopped: a stop verdict
        is reported as one that would have happened, and the workload's clock
        starts again, so it is reported once per timeout, not on every check.
        """
        self._load()
        whole = {g.uuid for g in inventory.gpus if not g.mig_enabled}
        busy_slices = {p.device_uuid for p in sample.processes}
        allocated_total = len({d for _, _, devices in containers for d in devices})
        slots = len(inventory.slots())
        acted: list[tuple[Container, Verdict]] = []
        live = set()
        for container, owner, devices in containers:
            if not devices or not container.running:
                continue  # only GPU workloads are reaped
            live.add(container.id)
            check = self._check(container, devices, whole, busy_slices, sample=sample, now=now)
            if check is None:
                continue
            exempt = frozenset(
                rule
                for entry in spec.lifecycle_exemptions or ()
                if entry.user == owner and (entry.until is None or entry.until > now)
                for rule in entry.exempt_from
            )
            rules = rules_for(limits_of(owner), workload_type(container), exempt)
            started = container.started_at or now
            verdict = judge(
                rules,
                self._states.get(container.id, LifeState()),
                check,
                started,
                high_demand=in_high_demand(allocated_total, slots, rules),
                keep_alive_until=keep_alive_until(_requested(container), started, rules),
            )
            self._states[container.id] = verdict.state
            if verdict.action == "keep":
                continue
            grace = int(rules.stop_grace.total_seconds())
            if verdict.action == "stop" and audit:
                self._states[container.id] = LifeState()
                self._report_audit(container, owner, verdict, grace)
            else:
                self._act(container, owner, verdict, grace)
            acted.append((container, verdict))
        for gone in set(self._states) - live:
            self._states.pop(gone, None)
            self._seen.pop(gone, None)
        self._save()
        return acted

    def _check(
        self,
        container: Container,
        devices: frozenset[str],
        whole: set[str],
        busy_slices: set[str],
        *,
        sample: Sample,
        now: datetime,
    ) -> Check | None:
        cpu = _cpu_ns(self.cgroup_root, self.proc_root, container.pid)
        network = _network_bytes(self.proc_root, container.pid)
        before = self._seen.get(container.id)
        self._seen[container.id] = _Seen(now, cpu, network)
        if before is None:
            return None  # deltas need two observations
        elapsed = (now - before.at).total_seconds() or 1e-9
        cpu_percent = (
            100.0 * (cpu - before.cpu_ns) / (elapsed * 1e9)
            if cpu is not None and before.cpu_ns is not None
            else 0.0
        )
        return observe(
            now,
            devices,
            sample.utilization,
            whole,
            busy_slices,
            cpu_percent=cpu_percent,
            network_bytes=max(0, network - before.network),
        )

    def _act(self, container: Container, owner: str | None, verdict: Verdict, grace: int) -> None:
        details: dict[str, object] = {
            "container": container.id,
            "name": container.name,
            "reason": verdict.reason,
            "message": verdict.message,
        }
        if verdict.action == "warn":
            kind = "idle_warning" if verdict.reason == "Idle" else "runtime_warning"
            message = f"container {container.name}: {verdict.message}"
            self.notify(
                f"maintenance.{kind}",
                owner,
                message,
                "Warning",
                {**details, "warnings": list(verdict.warnings)},
            )
            return
        kind = "idle_kill" if verdict.reason == "Idle" else "runtime_kill"
        self.notify(
            f"maintenance.{kind}",
            owner,
            f"stopping container {container.name}: {verdict.message}",
            "Warning",
            {**details, "stopGraceSeconds": grace},
        )
        try:
            self.docker.stop(container.id, grace)
        except DockerError as error:
            log.warning("could not stop container", container=container.name, error=str(error))

    def _report_audit(
        self, container: Container, owner: str | None, verdict: Verdict, grace: int
    ) -> None:
        self.notify(
            "maintenance.would_stop",
            owner,
            f"Audit mode: container {container.name} would be stopped: {verdict.message}",
            "Normal",
            {
                "container": container.id,
                "name": container.name,
                "reason": verdict.reason,
                "stopGraceSeconds": grace,
            },
        )

    def _load(self) -> None:
        if self._loaded or self.state_file is None:
            self._loaded = True
            return
        self._loaded = True
        try:
            raw = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return
        except ValueError:
            log.warning("lifecycle state unreadable; starting fresh", path=str(self.state_file))
            return
        for cid, item in raw.items():
            self._states[cid] = LifeState(
                idle_streak=int(item["streak"]),
                idle_since=datetime.fromisoformat(item["since"]) if item.get("since") else None,
                warned=frozenset(item.get("warned", [])),
            )

    def _save(self) -> None:
        if self.state_file is None:
            return
        body = {
            cid: {
                "streak": s.idle_streak,
                "since": s.idle_since.isoformat() if s.idle_since else None,
                "warned": sorted(s.warned),
            }
            for cid, s in self._states.items()
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(body))
        os.replace(tmp, self.state_file)


def _requested(container: Container) -> datetime | None:
    value = container.labels.get(names.KEEP_ALIVE)
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
