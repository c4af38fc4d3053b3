"""The operator's pod lifecycle: which GPU pods to warn and which to stop. Pure.

The judge is `controller.policy.lifecycle`, shared with the agent's Docker
lifecycle; this module feeds it pods. Each pass builds one check per GPU pod
from what the node agents report in GPUNode status (utilisation of its full
GPUs; for its MIG slices, whether they have compute processes) and carries
the judge's state between checks in the pod's own annotations, so an
operator restart loses nothing. It returns what to do: annotations to write,
Events and audit records, and whether to stop the workload's owner.

Signals are GPU-only: GPUNode status carries no per-pod CPU or network use,
so a pod's check says 0% CPU and no traffic, and its GPUs alone decide.

Only pods that ask for a `gpu.ds01.io/` resource, that an agent reports, and
that belong to someone (an account namespace, or the agent's attribution)
are judged; every other pod is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from controller.api import names
from controller.api.kinds import GPUExemption, GPUNode
from controller.api.ratelimit import GPURateLimitSpec, WorkloadType
from controller.policy import exemptions as exemption_policy
from controller.policy.effective import NamedLimit, effective_limits
from controller.policy.lifecycle import (
    LifeState,
    Rules,
    Verdict,
    in_high_demand,
    judge,
    keep_alive_until,
    observe,
    rules_for,
)
from controller.policy.plan import Snapshot, accounts
from controller.policy.pods import OwnerRef, Pod
from controller.policy.records import AuditRecord, EventRecord, ObjectRef

IDLE_SINCE = names.IDLE_SINCE
"""Kept here for controller.operator, which imports it from this module."""

STATE_KEYS = (names.IDLE_SINCE, names.IDLE_CHECKS, names.LIFECYCLE_WARNED, names.LIFECYCLE_WARNING)
"""The pod annotations that carry the idle lifecycle's state (`controller.api.names`)."""
DEFAULT_REPORT_MAX_AGE = timedelta(minutes=5)


@dataclass(frozen=True)
class Owner:
    """Whom a pod's use is charged to: its account's user, else the agent's attribution."""

    user: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class PodStep:
    """What to do about one pod after a check."""

    pod: Pod
    node: str
    user: str
    action: str
    """`keep`, `warn`, `stop`, `would-stop` (Audit mode) or `restop` (a stop to finish)."""
    annotations: Mapping[str, str | None]
    """A merge patch of the pod's annotations (None removes); empty when nothing changed."""
    events: tuple[EventRecord, ...] = ()
    audit: tuple[AuditRecord, ...] = ()
    stop_grace: timedelta = timedelta(0)
    verdict: Verdict | None = None

    @property
    def stops(self) -> bool:
        return self.action in ("stop", "restop")


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 time from an annotation; None when absent, unreadable or naive."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def load_state(annotations: Mapping[str, str], now: datetime) -> LifeState:
    """The judge's state as the annotations keep it; unreadable parts count as absent.

    An idle-since in the future (edited by hand) is taken as now: it can delay a
    stop only by as long as its owner keeps editing the pod.
    """
    since = parse_time(annotations.get(names.IDLE_SINCE))
    try:
        streak = max(0, int(annotations.get(names.IDLE_CHECKS, "0")))
    except ValueError:
        streak = 0
    warned = frozenset(w for w in annotations.get(names.LIFECYCLE_WARNED, "").split(",") if w)
    if since is None or streak == 0:
        return LifeState(warned=warned)
    return LifeState(streak, min(since, now), warned)


def state_annotations(state: LifeState, rules: Rules) -> dict[str, str | None]:
    """The annotations that keep ``state`` (None: absent).

    The streak is counted only up to what the judge needs, so a pod idle for
    hours is not rewritten on every check.
    """
    streak = min(state.idle_streak, rules.consecutive_checks)
    return {
        names.IDLE_SINCE: state.idle_since.isoformat() if state.idle_since and streak else None,
        names.IDLE_CHECKS: str(streak) if streak and state.idle_since else None,
        names.LIFECYCLE_WARNED: ",".join(sorted(state.warned)) or None,
    }


def annotation_patch(
    current: Mapping[str, str], desired: Mapping[str, str | None]
) -> dict[str, str | None]:
    """The merge patch that turns ``current`` into ``desired`` for the keys ``desired`` names."""
    return {k: v for k, v in desired.items() if current.get(k) != v}


def overlaid(pod: Pod, written: Mapping[str, str | None]) -> Pod | None:
    """``pod`` with annotations the operator wrote laid over; None once the pod shows them.

    The watch cache can lag the operator's own writes by a moment; deciding from
    the older annotations would repeat a warning or restart an idle clock.
    """
    if all(pod.annotations.get(k) == v for k, v in written.items()):
        return None
    merged = {**pod.annotations, **written}
    return replace(pod, annotations={k: v for k, v in merged.items() if v is not None})


def workload_type(pod: Pod) -> WorkloadType:
    """A Job's pods are `job`; every other pod is `pod` (user labels cannot pick a laxer type)."""
    return "job" if pod.owner is not None and pod.owner.kind == "Job" else "pod"


def stop_target(chain: Sequence[OwnerRef]) -> OwnerRef | None:
    """What to stop so the work is not simply recreated; None: delete the pod itself.

    ``chain`` is the pod's controller, then that one's controller, and so on.
    A Job is suspended (a CronJob will start its next run; that is a new run);
    a Deployment's ReplicaSet is stopped through the Deployment, which would
    otherwise scale it back; Deployments, StatefulSets and lone ReplicaSets are
    scaled to zero. A pod of any other controller (a DaemonSet, a custom kind)
    is deleted, which its controller may undo: the operator says so in its log.
    """
    for i, ref in enumerate(chain):
        if ref.kind in ("Job", "Deployment", "StatefulSet"):
            return ref
        if ref.kind == "ReplicaSet":
            above = chain[i + 1] if i + 1 < len(chain) else None
            return above if above is not None and above.kind == "Deployment" else ref
        return None
    return None


def node_signals(node: GPUNode) -> tuple[dict[str, int | None], set[str], set[str], int, int]:
    """Utilisation of full GPUs, their UUIDs, busy MIG slices, allocated devices, all slots."""
    status = node.status
    devices = (status.devices if status else None) or []
    workloads = (status.workloads if status else None) or []
    whole = {d.uuid for d in devices if not d.mig_enabled}
    utilization = {d.uuid: d.utilization_percent for d in devices if not d.mig_enabled}
    busy = {p.device_uuid for w in workloads for p in w.processes or ()}
    slots = sum(len(d.mig_instances or ()) if d.mig_enabled else 1 for d in devices)
    allocated = len({u for w in workloads for u in (w.allocated or w.devices)})
    return utilization, whole, busy, allocated, slots


@dataclass(frozen=True)
class LifeInputs:
    """What a lifecycle pass reads (the operator's watch caches)."""

    nodes: Sequence[GPUNode]
    pods: Sequence[Pod]
    limits: Sequence[NamedLimit]
    exemptions: Sequence[GPUExemption]
    owners: Mapping[str, Owner]
    """Account namespaces' users, by namespace."""


def inputs_of(snapshot: Snapshot) -> LifeInputs:
    """The lifecycle's view of the operator's snapshot."""
    found, _ = accounts(snapshot.namespaces)
    return LifeInputs(
        nodes=snapshot.nodes,
        pods=snapshot.pods,
        limits=[NamedLimit(lim.metadata.name, lim.spec) for lim in snapshot.limits],
        exemptions=snapshot.exemptions,
        owners={ns: Owner(a.user, tuple(a.groups)) for ns, a in found.items()},
    )


def decide(
    inputs: LifeInputs, now: datetime, report_max_age: timedelta = DEFAULT_REPORT_MAX_AGE
) -> list[PodStep]:
    """One lifecycle pass over every GPU pod the agents report.

    Nodes whose agent has not reported for ``report_max_age`` are skipped: a
    stale report could show a busy GPU as idle. Nodes in `Off` mode are left
    alone; in `Audit` mode a stop is only reported, and the idle clock restarts.
    """
    pods = {(p.namespace, p.name): p for p in inputs.pods}
    steps: list[PodStep] = []
    specs: dict[Owner, GPURateLimitSpec] = {}
    for node in inputs.nodes:
        status = node.status
        beat = status.agent.heartbeat_time if status and status.agent else None
        if status is None or beat is None or now - beat > report_max_age:
            continue
        if node.spec.enforcement == "Off":
            continue
        utilization, whole, busy, allocated, slots = node_signals(node)
        for report in status.workloads or ():
            pod = pods.get((report.namespace or "", report.name))
            devices = report.allocated or report.devices
            if report.kind != "Pod" or pod is None or not devices:
                continue
            if pod.terminal or pod.deleting or not pod.gpu_requests():
                continue
            owner = inputs.owners.get(pod.namespace) or (
                Owner(report.owner) if report.owner else None
            )
            if owner is None:
                continue  # nobody's: not a user's workload to reap (system pods, for one)
            if names.LIFECYCLE_STOPPED in pod.annotations:
                steps.append(PodStep(pod, node.metadata.name, owner.user, "restop", {}))
                continue
            exempt = exemption_policy.exempt_from(
                exemption_policy.in_force(
                    inputs.exemptions, owner.user, owner.groups, now, node.metadata.name
                )
            )
            if owner not in specs:
                specs[owner] = effective_limits(owner.user, owner.groups, inputs.limits).spec
            spec = specs[owner]
            rules = rules_for(spec, workload_type(pod), exempt)
            started = report.started_at or pod.created or now
            verdict = judge(
                rules,
                load_state(pod.annotations, now),
                observe(now, devices, utilization, whole, busy),
                started,
                high_demand=in_high_demand(allocated, slots, rules),
                keep_alive_until=keep_alive_until(
                    parse_time(pod.annotations.get(names.KEEP_ALIVE)), started, rules
                ),
            )
            audit_mode = node.spec.enforcement == "Audit"
            steps.append(
                _step(pod, node.metadata.name, owner.user, rules, verdict, audit_mode=audit_mode)
            )
    return steps


def _step(
    pod: Pod, node: str, user: str, rules: Rules, verdict: Verdict, *, audit_mode: bool
) -> PodStep:
    about = ObjectRef("Pod", pod.name, pod.namespace, pod.uid)
    details: dict[str, object] = {
        "namespace": pod.namespace,
        "pod": pod.name,
        "node": node,
        "reason": verdict.reason,
        "message": verdict.message,
    }
    key = f"pod:{pod.namespace}/{pod.name}"
    desired: dict[str, str | None] = dict(state_annotations(verdict.state, rules))
    if not verdict.state.warned:
        desired[names.LIFECYCLE_WARNING] = None
    if verdict.action == "keep":
        patch = annotation_patch(pod.annotations, desired)
        return PodStep(pod, node, user, "keep", patch, verdict=verdict)
    if verdict.action == "warn":
        desired[names.LIFECYCLE_WARNING] = verdict.message
        kind = "idle_warning" if verdict.reason == "Idle" else "runtime_warning"
        return PodStep(
            pod,
            node,
            user,
            "warn",
            annotation_patch(pod.annotations, desired),
            (EventRecord(about, f"{verdict.reason}Warning", verdict.message, "Warning"),),
            (
                AuditRecord(
                    f"maintenance.{kind}",
                    user,
                    {**details, "warnings": list(verdict.warnings)},
                    key,
                ),
            ),
            verdict=verdict,
        )
    grace = int(rules.stop_grace.total_seconds())
    if audit_mode:
        cleared = {k: None for k in STATE_KEYS}
        message = f"Audit mode: this pod's workload would be stopped: {verdict.message}"
        return PodStep(
            pod,
            node,
            user,
            "would-stop",
            annotation_patch(pod.annotations, cleared),
            (EventRecord(about, "WouldStop", message, "Normal"),),
            (AuditRecord("maintenance.would_stop", user, {**details, "stopGraceSeconds": grace}),),
            verdict=verdict,
        )
    kind = "idle_kill" if verdict.reason == "Idle" else "runtime_kill"
    message = f"stopping this pod's workload: {verdict.message}"
    desired[names.LIFECYCLE_STOPPED] = f"{verdict.reason}: {verdict.message}"
    return PodStep(
        pod,
        node,
        user,
        "stop",
        annotation_patch(pod.annotations, desired),
        (EventRecord(about, f"Stopped{verdict.reason}", message, "Warning"),),
        (AuditRecord(f"maintenance.{kind}", user, {**details, "stopGraceSeconds": grace}, key),),
        rules.stop_grace,
        verdict,
    )
