"""GPURateLimit: limits and rates for a set of users or groups.

Every field is optional on purpose: a GPURateLimit is an overlay. The effective
policy of a user is built field by field from the built-in defaults, then the
Group limits that name one of the user's groups in ascending priority, then the
User limits; a field left out inherits from below. That is why no field has a
server-side default.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from controller.api.base import Conditions, Model, Subject
from controller.api.values import (
    CountLimit,
    DurationLimit,
    GPUEquivalentLimit,
    HoursLimit,
    MIGProfile,
    Quantity,
    QuantityLimit,
    Text,
)

WorkloadType = Literal["devcontainer", "compose", "docker", "job", "pod", "unknown"]
ApprovalMode = Literal["Auto", "Required"]


class GPUPolicy(Model):
    """How much GPU a subject may hold and in what shape."""

    max_gpu_equivalents: GPUEquivalentLimit | None = None
    """GPU-equivalents held at once across all workloads (a full GPU is 1, a 2g.20gb slice on an A100 is 2/7), or `Unlimited`."""
    max_devices_per_workload: CountLimit | None = None
    """Distinct GPUs or MIG slices one container or pod may hold, or `Unlimited`."""
    allow_full_gpus: bool | None = None
    """Whether whole (non-MIG) GPUs may be allocated; `false` limits the subject to MIG slices."""
    allowed_mig_profiles: (
        Annotated[
            list[MIGProfile],
            Field(max_length=32, json_schema_extra={"x-kubernetes-list-type": "set"}),
        ]
        | None
    ) = None
    """MIG profiles the subject may use (for example `1g.10gb`); an empty list allows none, leaving the field out inherits."""


class GrantPolicy(Model):
    """How the subject's own GPUGrant requests are handled."""

    approval: ApprovalMode | None = None
    """`Auto`: requests that stay inside this policy are approved by the operator; `Required`: every request waits for an approver."""
    max_duration: DurationLimit | None = None
    """Longest window a single grant may span (for example `168h`), or `Unlimited`."""
    max_gpu_equivalents: GPUEquivalentLimit | None = None
    """GPU-equivalents one grant may add on top of the allowance, or `Unlimited`."""
    revocation_grace: DurationLimit | None = None
    """Time between the warning that a grant ended (expiry or revocation) and the end of GPU use that depended on it."""
    soft_revocation: bool | None = None
    """Only warn when a grant ends, never end processes or containers (not the default)."""


class BudgetPolicy(Model):
    """GPU time over a rolling window."""

    gpu_hours: HoursLimit | None = None
    """GPU-equivalent-hours the subject may use per window (for example `200`), or `Unlimited`."""
    window: DurationLimit | None = None
    """Length of the rolling window the budget is counted over (for example `168h` for a week)."""


class RatePolicy(Model):
    """How often and how much at once."""

    workload_starts_per_hour: CountLimit | None = None
    """Workloads the subject may start in any 60-minute window, or `Unlimited`."""
    grant_requests_per_day: CountLimit | None = None
    """GPUGrants the subject may request in any 24-hour window, or `Unlimited`."""
    max_workloads: CountLimit | None = None
    """Containers or pods at once; on Docker hosts stopped containers count too, as in DS01."""


class Bounds(Model):
    """A default applied when a workload asks for nothing, and a maximum it may ask for."""

    default: Quantity | None = None
    """Value given to a workload that does not ask (for example `4` CPUs or `16Gi`)."""
    max: QuantityLimit | None = None
    """Most a single workload may ask for, or `Unlimited`."""


class PerWorkloadResources(Model):
    """Per-container or per-pod resources."""

    cpu: Bounds | None = None
    """CPUs per workload."""
    memory: Bounds | None = None
    """Memory per workload; swap is disabled, so this is also the memory-plus-swap limit."""
    shm: Bounds | None = None
    """Size of /dev/shm per container."""
    pids: Bounds | None = None
    """Processes and threads per workload."""


class AggregateResources(Model):
    """Caps on everything one user runs together."""

    cpu: QuantityLimit | None = None
    """CPUs across all of the user's workloads, or `Unlimited`."""
    memory: QuantityLimit | None = None
    """Memory across all of the user's workloads, or `Unlimited`."""
    pids: CountLimit | None = None
    """Processes and threads across all of the user's workloads, or `Unlimited`."""


class ResourcePolicy(Model):
    """CPU, memory, /dev/shm and process limits."""

    per_workload: PerWorkloadResources | None = None
    """Defaults and maxima for one container or pod."""
    per_user: AggregateResources | None = None
    """Caps on the sum over all of the user's workloads."""


class IdleSignals(Model):
    """What counts as idle; a workload is idle only when every signal says so."""

    gpu_utilization_below_percent: Annotated[int, Field(ge=0, le=100)] | None = None
    """GPU utilisation under which a full GPU counts as idle (MIG slices report none; for them idle means no compute processes)."""
    cpu_below_percent: Annotated[int, Field(ge=0, le=100)] | None = None
    """CPU use under which the workload counts as idle."""
    network_below_bytes: Quantity | None = None
    """Network traffic per check under which the workload counts as idle (for example `1Mi`)."""
    consecutive_checks: Annotated[int, Field(ge=1, le=1000)] | None = None
    """Consecutive idle checks before the idle timer runs."""


class LifecycleOverride(Model):
    """Lifecycle values for one workload type, replacing the subject's own."""

    type: WorkloadType
    """The workload type: `devcontainer`, `compose`, `docker`, `job`, `pod` or `unknown`."""
    max_runtime: DurationLimit | None = None
    """Longest a workload of this type may run, or `Unlimited`."""
    idle_timeout: DurationLimit | None = None
    """How long a workload of this type may stay idle, or `Unlimited` to exempt it."""
    stop_grace_period: DurationLimit | None = None
    """Time between SIGTERM and SIGKILL when the workload is stopped."""


class LifecyclePolicy(Model):
    """Idle reclaim and runtime limits for GPU workloads; CPU-only workloads are never reaped."""

    max_runtime: DurationLimit | None = None
    """Longest a GPU workload may run (for example `24h`), or `Unlimited`."""
    idle_timeout: DurationLimit | None = None
    """How long a GPU workload may stay idle before it is stopped (for example `30m`), or `Unlimited`."""
    idle: IdleSignals | None = None
    """The signals that decide whether a workload is idle."""
    startup_grace: DurationLimit | None = None
    """Time after a start during which a workload is never idle."""
    stop_grace_period: DurationLimit | None = None
    """Time between SIGTERM and SIGKILL when a workload is stopped."""
    hold_after_stop: DurationLimit | None = None
    """How long a stopped container keeps its GPUs before they are released."""
    remove_stopped_after: DurationLimit | None = None
    """How long a stopped container is kept before it is removed."""
    keep_alive_max: DurationLimit | None = None
    """Longest a keep-alive annotation is honoured."""
    high_demand_threshold_percent: Annotated[int, Field(ge=1, le=100)] | None = None
    """Share of allocated GPUs at which the high-demand factor applies."""
    high_demand_idle_percent: Annotated[int, Field(ge=1, le=100)] | None = None
    """Under high demand the idle timeout is scaled to this percentage (50 halves it)."""
    by_workload_type: (
        Annotated[
            list[LifecycleOverride],
            Field(
                max_length=6,
                json_schema_extra={
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["type"],
                },
            ),
        ]
        | None
    ) = None
    """Values per workload type (devcontainers exempt from idle reaping, for example)."""


class GPURateLimitSpec(Model):
    """Limits and rates for the listed subjects."""

    subjects: Annotated[
        list[Subject],
        Field(
            min_length=1,
            max_length=256,
            json_schema_extra={
                "x-kubernetes-validations": [
                    {
                        "rule": "self.all(s, self.exists_one(t, t.kind == s.kind && t.name == s.name))",
                        "message": "subjects must not repeat",
                    }
                ]
            },
        ),
    ]
    """Users and groups these limits apply to; at least one."""
    priority: Annotated[int, Field(ge=0, le=10000)] = 0
    """Order among Group limits for the same user: higher priority is applied later and wins. Ties are broken by name and reported."""
    description: Text | None = None
    """What these limits are for, for people reading `kubectl get`."""
    gpu: GPUPolicy | None = None
    """GPU allowance and shape."""
    grants: GrantPolicy | None = None
    """How the subjects' GPUGrant requests are approved and bounded."""
    budget: BudgetPolicy | None = None
    """GPU time per rolling window."""
    rates: RatePolicy | None = None
    """Workload and request rates."""
    resources: ResourcePolicy | None = None
    """CPU, memory, /dev/shm and process limits."""
    lifecycle: LifecyclePolicy | None = None
    """Idle and runtime limits."""


class GPURateLimitStatus(Model):
    """What the operator found when it last read this object."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The `metadata.generation` this status describes."""
    conditions: Conditions | None = None
    """`Ready`, and `PriorityConflict` when another Group limit shares a user and this priority."""
    subjects: Annotated[str, Field(max_length=1024)] | None = None
    """The subjects as one line (`Group:student, User:alice`) for `kubectl get`."""
    matched_users: Annotated[int, Field(ge=0)] | None = None
    """How many users these limits currently apply to."""
