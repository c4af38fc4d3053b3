"""Who is using which GPU, how we know, and whether they may.

DS01's awareness layer, as a pure function: every GPU process NVML lists is
joined (by the agent) with /proc and its cgroup, then attributed here:

- a process in a pod's cgroup belongs to the pod, whose namespace names the
  owner (never a label a user can write); its allocation comes from kubelet's
  PodResources;
- a process in a Docker container belongs to the container: the owner is the
  gateway's signed label when the agent verified it, else the container
  process's UID mapped to an account; its allocation is what it was created with;
- any other process is a host process: UID -> Linux login -> account; it must
  be seen in two consecutive scans before it is reported (short-lived tools);
- system processes (persistence daemon, DCGM, nvidia-smi, X) are left out.

Violations: use nobody can be attributed; use by an owner with no right to
the device (no allocation, no host access, someone else's reservation); use of
a device outside the workload's allocation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from controller.api.node import (
    GPUNodeSpec,
    GPUProcess,
    OwnerSource,
    Violation,
    ViolationKind,
    WorkloadKind,
    WorkloadReport,
)
from controller.api.values import DEVICE_UUID, PRINCIPAL
from controller.policy.enforcement import reserved_for

SYSTEM_COMMANDS = frozenset(
    {
        "nvidia-persistenced",
        "nv-hostengine",
        "nvidia-smi",
        "dcgm-exporter",
        "Xorg",
        "X",
        "nvidia-cuda-mps-control",
        "nvidia-cuda-mps-server",
    }
)
_DEVICE_UUID = re.compile(DEVICE_UUID.pattern)
_PRINCIPAL = re.compile(PRINCIPAL.pattern)
SYSTEM_NAMESPACES = frozenset({"kube-system", "ds01-system", "gpu-operator"})


SYSTEM_UID_MAX = 999
"""Debian's system accounts end here (`SYS_UID_MAX`); people's logins start above it."""


def is_system(comm: str, uid: int | None, commands: frozenset[str] = SYSTEM_COMMANDS) -> bool:
    """A system daemon or tool: its command name, run by root or a system account.

    The name alone proves nothing: any user can call their program `nvidia-smi`
    (a process's name is whatever it sets), so a person's process is never taken
    for a system one, whatever it is called. Daemons such as nvidia-persistenced
    run under their own system account.
    """
    return comm in commands and uid is not None and 0 <= uid <= SYSTEM_UID_MAX


@dataclass(frozen=True)
class ProcessUse:
    """An NVML process joined with what /proc says about it."""

    pid: int
    start_ticks: int
    device_uuid: str
    used_memory_mib: int | None
    uid: int
    comm: str
    container_id: str | None = None
    pod_uid: str | None = None


@dataclass(frozen=True)
class ContainerView:
    """A Docker container as the agent sees it."""

    id: str
    name: str
    allocated: frozenset[str]
    owner: str | None = None
    """The owner from a label the agent verified as the gateway's; else None."""
    started_at: datetime | None = None


@dataclass(frozen=True)
class PodView:
    """A pod on this node: identity from the API, devices from PodResources."""

    uid: str
    namespace: str
    name: str
    allocated: frozenset[str] = frozenset()


@dataclass(frozen=True)
class NodeView:
    """Everything besides the processes that attribution needs."""

    spec: GPUNodeSpec
    parents: Mapping[str, str]
    """Device UUID -> UUID of its physical GPU (a GPU maps to itself)."""
    logins: Mapping[int, str]
    """UID -> Linux login on this node."""
    accounts_by_login: Mapping[str, str]
    """Linux login -> account user name (from account namespaces)."""
    accounts_by_namespace: Mapping[str, str]
    """Account namespace -> account user name."""
    containers: Mapping[str, ContainerView] = field(default_factory=dict)
    pods: Mapping[str, PodView] = field(default_factory=dict)
    system_commands: frozenset[str] = SYSTEM_COMMANDS
    system_namespaces: frozenset[str] = SYSTEM_NAMESPACES


@dataclass(frozen=True)
class Memory:
    """What carries from one scan to the next."""

    host_seen: frozenset[tuple[int, int]] = frozenset()
    """(pid, start ticks) of host GPU processes seen in the previous scan."""
    first_seen: Mapping[str, datetime] = field(default_factory=dict)
    """Workload or violation key -> when it was first seen."""
    reports: Mapping[tuple[object, ...], WorkloadReport | None] = field(default_factory=dict)
    """Last scan's status entries by everything each was made from (see `_Made`)."""
    violations: Mapping[tuple[object, ...], Violation] = field(default_factory=dict)
    """Last scan's violations by everything each was made from."""


@dataclass
class Attribution:
    workloads: list[WorkloadReport]
    violations: list[Violation]
    memory: Memory


@dataclass
class _Workload:
    kind: WorkloadKind
    name: str
    owner: str | None
    source: OwnerSource
    namespace: str | None = None
    container_id: str | None = None
    allocated: frozenset[str] | None = None
    system: bool = False
    host_uid: int | None = None
    processes: list[ProcessUse] = field(default_factory=list)


def _covers(allocated: frozenset[str], device: str, parents: Mapping[str, str]) -> bool:
    """Whether an allocation includes ``device`` (its own UUID, or its physical GPU's)."""
    return device in allocated or parents.get(device, device) in allocated


def _workload_for(use: ProcessUse, view: NodeView) -> tuple[str, _Workload]:
    if use.pod_uid is not None:
        pod = view.pods.get(use.pod_uid)
        if pod is None:
            return f"pod/{use.pod_uid}", _Workload(
                "Pod", use.pod_uid, None, "Unknown", container_id=use.container_id
            )
        owner = view.accounts_by_namespace.get(pod.namespace)
        return f"pod/{pod.uid}", _Workload(
            "Pod",
            pod.name,
            owner,
            "Namespace" if owner else "Unknown",
            pod.namespace,
            use.container_id,
            pod.allocated,
            system=pod.namespace in view.system_namespaces,
        )
    if use.container_id is not None:
        container = view.containers.get(use.container_id)
        login = view.logins.get(use.uid)
        by_uid = view.accounts_by_login.get(login) if login else None
        if container is None:
            return f"container/{use.container_id}", _Workload(
                "Container",
                use.container_id[:12],
                by_uid,
                "ContainerUID" if by_uid else "Unknown",
                container_id=use.container_id,
                allocated=frozenset(),
            )
        owner, source = (
            (container.owner, "GatewayLabel")
            if container.owner
            else (by_uid, "ContainerUID" if by_uid else "Unknown")
        )
        return f"container/{container.id}", _Workload(
            "Container",
            container.name,
            owner,
            source,  # type: ignore[arg-type]
            container_id=container.id,
            allocated=container.allocated,
        )
    login = view.logins.get(use.uid)
    owner = view.accounts_by_login.get(login) if login else None
    return f"host/{use.pid}/{use.start_ticks}", _Workload(
        "HostProcess",
        use.comm,
        owner,
        "ProcessUID" if owner else "Unknown",
        host_uid=use.uid,
    )


def _host_entitled(owner: str, device: str, view: NodeView, now: datetime) -> bool:
    for entry in view.spec.host_access or ():
        if entry.user != owner or (entry.until is not None and entry.until <= now):
            continue
        if entry.device_uuids is None or _covers(
            frozenset(entry.device_uuids), device, view.parents
        ):
            return True
    return False


def _reserved_for(device: str, view: NodeView, now: datetime) -> str | None:
    parent = view.parents.get(device, device)
    for hold in view.spec.reservations or ():
        starts = hold.from_ or now
        if hold.device_uuid in (device, parent) and starts <= now < hold.until:
            return hold.user
    return None


def _judge(
    work: _Workload, device: str, view: NodeView, now: datetime
) -> tuple[ViolationKind, str] | None:
    """Why this use of ``device`` breaks policy, or None."""
    if work.system:
        return None
    if work.owner is None:
        where = f"namespace {work.namespace}" if work.namespace else "no account"
        return "Unattributed", f"{work.kind} {work.name} uses {device} and maps to {where}"
    holder = _reserved_for(device, view, now)
    if holder is not None and holder != work.owner:
        return "Unentitled", f"{work.owner} uses {device}, reserved for {holder}"
    if work.kind == "HostProcess":
        if not _host_entitled(work.owner, device, view, now):
            return "Unentitled", (
                f"host process {work.name} of {work.owner} uses {device} without a Host grant "
                "or HostAccess exemption on this node"
            )
        return None
    allocation = (work.allocated or frozenset()) | reserved_for(view.spec, work.owner, now)
    if not allocation:
        return (
            "Unentitled",
            f"{work.kind} {work.name} of {work.owner} uses {device} without any GPU allocation",
        )
    if not _covers(allocation, device, view.parents):
        return "OutsideAllocation", (
            f"{work.kind} {work.name} of {work.owner} uses {device}, outside its allocation "
            f"{', '.join(sorted(allocation))}"
        )
    return None


def attribute(
    uses: Sequence[ProcessUse], view: NodeView, memory: Memory, now: datetime
) -> Attribution:
    """Attribute one scan's GPU processes; see the module docstring."""
    workloads: dict[str, _Workload] = {}
    host_now: set[tuple[int, int]] = set()
    for use in sorted(_describable(uses), key=lambda u: (u.pid, u.device_uuid)):
        if is_system(use.comm, use.uid, view.system_commands):
            continue
        key, work = _workload_for(use, view)
        if work.kind == "HostProcess":
            host_now.add((use.pid, use.start_ticks))
            if (use.pid, use.start_ticks) not in memory.host_seen:
                continue  # first sighting: report from the second scan on
        workloads.setdefault(key, work).processes.append(use)

    first_seen = dict(memory.first_seen)
    made = _Made(memory)
    reports: list[WorkloadReport] = []
    violations: list[Violation] = []
    current: set[str] = set(workloads)
    for key, work in sorted(workloads.items()):
        since = first_seen.setdefault(key, now)
        devices = sorted({p.device_uuid for p in work.processes})
        report = made.report(work, devices, since)
        if report is not None:
            reports.append(report)
        for device in devices:
            verdict = _judge(work, device, view, now)
            if verdict is None:
                continue
            kind, message = verdict
            violation_key = f"{key}|{device}|{kind}"
            current.add(violation_key)
            pid = next(p.pid for p in work.processes if p.device_uuid == device)
            violations.append(
                made.violation(
                    kind=kind,
                    device_uuid=device,
                    pid=pid,
                    owner=work.owner if work.owner and _PRINCIPAL.match(work.owner) else None,
                    message=message[:1024],
                    since=first_seen.setdefault(violation_key, now),
                )
            )
    kept = {k: t for k, t in first_seen.items() if k in current}
    return Attribution(
        reports,
        violations,
        Memory(frozenset(host_now), kept, made.reports, made.violations),
    )


def _describable(uses: Sequence[ProcessUse]) -> list[ProcessUse]:
    """NVML's processes as far as a status can describe them.

    NVML answers are not trusted to fit: a process it reports as PID 0 (seen for
    processes in other PID namespaces) or on a device that is not a UUID cannot be
    named, so it is left out rather than failing the whole scan; negative memory
    is no reading.
    """
    out = []
    for use in uses:
        if use.pid < 1 or not _DEVICE_UUID.match(use.device_uuid):
            continue
        negative = use.used_memory_mib is not None and use.used_memory_mib < 0
        out.append(replace(use, used_memory_mib=None) if negative else use)
    return out


def _report(work: _Workload, devices: list[str], since: datetime) -> WorkloadReport | None:
    """The workload's status entry; None when what it is named by cannot be written."""
    try:
        return WorkloadReport(
            kind=work.kind,
            name=work.name[:256],
            namespace=work.namespace,
            container_id=work.container_id,
            owner=work.owner,
            owner_source=work.source,
            devices=devices,
            allocated=sorted(work.allocated) if work.allocated is not None else None,
            processes=[
                GPUProcess(pid=p.pid, device_uuid=p.device_uuid, memory_used_mib=p.used_memory_mib)
                for p in work.processes
            ],
            started_at=since,
        )
    except ValueError:  # a name from a container or pod the schema cannot hold
        return None


class _Made:
    """Status entries made this scan, reusing last scan's where nothing they came from changed.

    Validating the API models is most of attribution's cost (10 µs a workload entry,
    5 µs a violation: 3 ms a scan with 200 workloads), and a node's workloads are
    mostly the same from one scan to the next. The models are frozen, so an entry made
    from the same values is the same entry: reusing it changes only the cost.
    """

    def __init__(self, memory: Memory) -> None:
        self.last_reports, self.last_violations = memory.reports, memory.violations
        self.reports: dict[tuple[object, ...], WorkloadReport | None] = {}
        self.violations: dict[tuple[object, ...], Violation] = {}

    def report(self, work: _Workload, devices: list[str], since: datetime) -> WorkloadReport | None:
        made_of = (
            work.kind,
            work.name,
            work.namespace,
            work.container_id,
            work.owner,
            work.source,
            tuple(devices),
            work.allocated,
            tuple((p.pid, p.device_uuid, p.used_memory_mib) for p in work.processes),
            since,
        )
        if made_of in self.last_reports:  # None too: it could not be written last time either
            report = self.last_reports[made_of]
        else:
            report = _report(work, devices, since)
        self.reports[made_of] = report
        return report

    def violation(
        self,
        *,
        kind: ViolationKind,
        device_uuid: str,
        pid: int,
        owner: str | None,
        message: str,
        since: datetime,
    ) -> Violation:
        made_of = (kind, device_uuid, pid, owner, message, since)
        violation = self.last_violations.get(made_of)
        if violation is None:
            violation = Violation(
                kind=kind,
                device_uuid=device_uuid,
                pid=pid,
                owner=owner,
                message=message,
                since=since,
            )
        self.violations[made_of] = violation
        return violation
