"""`kubectl ds01 why`: one paragraph a student understands, and what to do next.

Built from what the operator already wrote — a grant's conditions, Events,
the published policy (`ds01-policy`), a pod's lifecycle annotations — never
from a second opinion: the sentences the operator put in conditions and
Events are quoted, and this module adds the context (which request, since
when, until when) and the next step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from controller.api import names
from controller.api.accountpolicy import AccountPolicy
from controller.api.kinds import GPUGrant
from controller.policy.conditions import find
from controller.policy.units import format_duration, parse_duration_limit


@dataclass(frozen=True)
class EventView:
    """A Kubernetes Event as `why` reads it."""

    reason: str
    message: str
    type: str = "Normal"
    at: datetime | None = None
    kind: str = ""
    count: int = 1


@dataclass(frozen=True)
class PodView:
    """The parts of a pod `why` reads."""

    name: str
    namespace: str
    phase: str
    gpu_requests: Mapping[str, int]
    annotations: Mapping[str, str]
    owner: str | None = None
    """`Job/train`, `ReplicaSet/web-5d8f`..., None for a bare pod."""
    created: datetime | None = None
    started: datetime | None = None
    """When an agent first saw it use a GPU (GPUNode status), if it did."""
    node: str | None = None
    workload_type: str = "pod"
    """`job` for a Job's pods, else `pod` (the lifecycle's types on Kubernetes)."""


def ago(at: datetime | None, now: datetime) -> str:
    """``3h ago`` / ``in 2h`` for people; ``at`` rounded to seconds."""
    if at is None:
        return "at an unknown time"
    delta = now - at
    text = format_duration(timedelta(seconds=round(abs(delta.total_seconds()))))
    return f"{text} ago" if delta >= timedelta(0) else f"in {text}"


def stamp(at: datetime | None) -> str:
    if at is None:
        return "unknown"
    return at.strftime("%Y-%m-%d %H:%M UTC")


def _what(grant: GPUGrant) -> str:
    gpus = grant.spec.gpus
    shape = f"{gpus.count} x {gpus.mig_profile}" if gpus.mig_profile else f"{gpus.count} GPU"
    if not gpus.mig_profile and gpus.count > 1:
        shape += "s"
    span = grant.spec.duration or (
        f"until {stamp(grant.spec.expires_at)}" if grant.spec.expires_at else "24h"
    )
    access = " with Host access" if grant.spec.access == "Host" else ""
    return f"GPUGrant {grant.metadata.name} ({shape}{access}, {span})"


def _limit(doc: AccountPolicy | None, path: str) -> tuple[object, str] | None:
    if doc is None or path not in doc.limits:
        return None
    entry = doc.limits[path]
    return entry.value, entry.source


def _latest(events: Sequence[EventView], *reasons: str) -> EventView | None:
    found = [e for e in events if not reasons or e.reason in reasons]
    return found[-1] if found else None


@dataclass(frozen=True)
class _About:
    """What every grant paragraph draws on."""

    grant: GPUGrant
    what: str
    asked: str
    said: str
    """The operator's own sentence (Approved or Ready condition)."""
    doc: AccountPolicy | None
    now: datetime


def _pending_text(a: _About) -> str:
    text = f"{a.what} was requested {a.asked} and is {a.said}."
    approval = _limit(a.doc, "grants.approval")
    if approval and approval[0] == "Auto":
        text += (
            " A request within your grant limits (grants.maxDuration, "
            "grants.maxGPUEquivalents) is approved at once; a smaller request would not wait."
        )
    return text + (
        " Approvers see it in `kubectl ds01 pending`; nothing else is needed from you. "
        "You will see an Event when it is decided (`kubectl ds01 status`)."
    )


def _invalid_text(a: _About) -> str:
    return (
        f"{a.what} cannot be granted: {a.said}. It will stay as it is; delete it "
        f"(`kubectl delete gpugrant {a.grant.metadata.name}`) and request again with what "
        "your policy allows (`kubectl ds01 status` lists your limits)."
    )


def _denied_text(a: _About) -> str:
    approved = find(a.grant.status.conditions if a.grant.status else None, "Approved")
    if approved is not None and approved.reason == "RateLimited":
        return (
            f"{a.what} was refused: {a.said}. Try again once a day has passed since your "
            "earlier requests, or ask an admin for a GPUExemption from RateLimits if this "
            "blocks urgent work."
        )
    return (
        f"{a.what} was {a.said}. Ask the approver what would be acceptable, or request "
        "again with less (fewer GPUs, a shorter window) and a clearer reason."
    )


def _approved_text(a: _About) -> str:
    scheduled = find(a.grant.status.conditions if a.grant.status else None, "Scheduled")
    why = scheduled.message if scheduled else "no devices are free for its window"
    return (
        f"{a.what} is approved but not in force yet: {why}. It takes effect by itself as "
        "soon as devices are free for its whole window; nothing is needed from you. To get "
        "GPUs sooner, request fewer devices, another MIG profile or another node (--node)."
    )


def _scheduled_text(a: _About) -> str:
    window = a.grant.status.window if a.grant.status else None
    start = window.start if window else None
    return (
        f"{a.what} is approved and starts {ago(start, a.now)} ({stamp(start)}); {a.said}. "
        "Nothing to do until then."
    )


def _active_text(a: _About) -> str:
    status = a.grant.status
    end = status.window.end if status and status.window else None
    text = f"{a.what} is active until {stamp(end)} ({ago(end, a.now)})"
    if a.doc is not None:
        x = a.doc.allowance
        text += (
            f"; your allowance is {x.total} GPU-equivalents ({x.base} from "
            f"{x.base_source} + {x.grants} from grants), {x.in_use} in use, {x.remaining} left"
        )
    text += "."
    if status is not None and status.expiry_warned:
        text += (
            " It ends soon: save your work. An approver can extend it "
            f"(`kubectl ds01 extend {a.grant.metadata.name} --by 24h`)."
        )
    if a.doc is not None and a.doc.budget.exhausted:
        text += (
            " But your GPU budget is used up, so no new GPU pod starts: see `kubectl ds01 status`."
        )
    return text


def _expired_text(a: _About) -> str:
    window = a.grant.status.window if a.grant.status else None
    end = window.end if window else None
    return (
        f"{a.what} expired {ago(end, a.now)} ({stamp(end)}). GPU use that depended on it was "
        "warned and ended after the revocation grace. Request a new grant if you need more."
    )


def _revoked_text(a: _About) -> str:
    revocation = a.grant.spec.revocation
    if revocation is not None:
        how = f"revoked by {revocation.revoked_by or 'someone'}: {revocation.reason}"
    elif a.grant.metadata.deletion_timestamp is not None:
        how = "deleted, which revokes it"
    else:
        how = f"revoked: {a.said}"
    revoked_at = a.grant.status.revoked_at if a.grant.status else None
    return (
        f"{a.what} was {how} ({ago(revoked_at, a.now)}). GPU use that depended on it is "
        "warned and ended after the revocation grace. Request a new grant if you still need GPUs."
    )


_BY_STATE = {
    "Pending": _pending_text,
    "Invalid": _invalid_text,
    "Denied": _denied_text,
    "Approved": _approved_text,
    "Scheduled": _scheduled_text,
    "Active": _active_text,
    "Expired": _expired_text,
    "Revoked": _revoked_text,
}


def explain_grant(
    grant: GPUGrant, events: Sequence[EventView], doc: AccountPolicy | None, now: datetime
) -> str:
    """Why the grant is in its state, and what to do next."""
    status = grant.status
    what = _what(grant)
    asked = ago(grant.metadata.creation_timestamp, now)
    if status is None or status.state is None:
        return (
            f"{what} was requested {asked} and the operator has not decided it yet. It "
            "normally does within seconds; if this lasts more than a minute the operator may "
            "be down: tell an admin."
        )
    approved = find(status.conditions, "Approved")
    ready = find(status.conditions, "Ready")
    said = (approved.message if approved else "") or (ready.message if ready else "")
    text = _BY_STATE[status.state](_About(grant, what, asked, said, doc, now))
    warning = _latest([e for e in events if e.type == "Warning"])
    if warning is not None and warning.message not in text and status.state != "Active":
        text += f" Latest warning: {warning.reason}: {warning.message}."
    return text


def _policy_duration(
    doc: AccountPolicy | None, field: str, workload_type: str
) -> tuple[timedelta | None, str]:
    """A lifecycle duration for the workload type, and where it came from."""
    for path in (f"lifecycle.byWorkloadType[{workload_type}].{field}", f"lifecycle.{field}"):
        found = _limit(doc, path)
        if found is not None:
            value, source = found
            return parse_duration_limit(str(value)), f"{path} {value} from {source}"
    return None, ""


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


def explain_pod(
    pod: PodView, events: Sequence[EventView], doc: AccountPolicy | None, now: datetime
) -> str:
    """Why the pod is stopped, pending or about to be reaped, and what to do next."""
    name = f"Pod {pod.name}"
    if pod.owner:
        name += f" (of {pod.owner})"
    stopped = pod.annotations.get(names.LIFECYCLE_STOPPED)
    if stopped:
        again = (
            'resume the Job (`kubectl patch job ... -p \'{"spec":{"suspend":false}}\'`)'
            if pod.owner and pod.owner.startswith("Job/")
            else "start it again (scale it back up, or create the pod again)"
        )
        return (
            f"{name} was stopped by the ds01 operator: {stopped}. Its owner was stopped too, "
            f"so it is not simply recreated; {again} when you will use the GPU. For an "
            f"interactive session you want to keep while idle, annotate the pod with "
            f"{names.KEEP_ALIVE}=<time> (honoured for at most lifecycle.keepAliveMax)."
        )
    if not pod.gpu_requests:
        text = f"{name} asks for no GPU, so the ds01 lifecycle never stops it."
        return text + _pending(pod, events)
    parts = [f"{name} holds {', '.join(f'{n} x {r}' for r, n in sorted(pod.gpu_requests.items()))}"]
    if pod.started is not None:
        parts.append(f"and has used its GPU since {stamp(pod.started)}")
    text = " ".join(parts) + "."
    warning = pod.annotations.get(names.LIFECYCLE_WARNING)
    idle_since = _parse(pod.annotations.get(names.IDLE_SINCE))
    timeout, timeout_source = _policy_duration(doc, "idleTimeout", pod.workload_type)
    runtime, runtime_source = _policy_duration(doc, "maxRuntime", pod.workload_type)
    if warning:
        text += f" Warning: {warning}."
    if idle_since is not None:
        text += f" It has been idle since {stamp(idle_since)}"
        if timeout is not None:
            text += (
                f" and will be stopped at about {stamp(idle_since + timeout)} "
                f"({ago(idle_since + timeout, now)}; {timeout_source})"
            )
        text += (
            ". Use the GPU to reset the idle clock, or annotate the pod with "
            f"{names.KEEP_ALIVE}=<time> (at most lifecycle.keepAliveMax after its start)."
        )
    elif timeout is None and timeout_source:
        text += f" It is never stopped for idleness ({timeout_source})."
    if runtime is not None and pod.started is not None:
        text += (
            f" Whatever it does, it is stopped at {stamp(pod.started + runtime)} "
            f"({ago(pod.started + runtime, now)}; {runtime_source}); keep-alive does not extend "
            "that: checkpoint and start a new run."
        )
    if idle_since is None and not warning:
        text += " Nothing says it will be stopped soon."
    return text + _pending(pod, events)


def _pending(pod: PodView, events: Sequence[EventView]) -> str:
    if pod.phase != "Pending":
        return ""
    last = _latest([e for e in events if e.type == "Warning"])
    if last is not None:
        return f" It is Pending: {last.reason}: {last.message}."
    return " It is Pending: no node has run it yet."


def explain_other(name: str, events: Sequence[EventView]) -> str | None:
    """For a Job, Deployment... whose pods were refused: the refusal Kubernetes recorded."""
    refusals = [e for e in events if e.type == "Warning"]
    if not refusals:
        return None
    last = refusals[-1]
    return (
        f"{last.kind or 'Object'} {name} could not do what it was asked: {last.reason}: "
        f"{last.message}. Fix what the message names (`kubectl ds01 status` shows your "
        "allowance, budget and rates), then the controller tries again by itself."
    )
