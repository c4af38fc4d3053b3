"""The per-account policy object: what the operator publishes in each account namespace.

A ConfigMap named `ds01-policy`, written only by the operator (an admission
policy keeps users, who may edit other ConfigMaps, from touching it):

- `format`: the document format, ``ds01.policy/v1``;
- `policy.json`: an `AccountPolicy` document — the user's effective limits
  and where each came from, usage, budget, rates, alerts sent, grants,
  pending requests and why, exemptions, conditions;
- plain keys read by the `ds01-pod-limits` admission policy (CEL cannot read
  JSON): the per-workload device cap, the GPU resources the user may ask for
  and their GPU-equivalents, the allowance left, and why new pods or GPU pods
  are refused right now (budget used up, workload starts per hour reached).

The document is also the operator's memory for what must persist between
passes and restarts: budget buckets, recent workload starts, alerts sent.
Figures that grow with time (GPU-hours) are as of `budget.asOf`: add
``rate x (now - asOf)`` for the present. The object is rewritten only when
its content changes. A reader must check `format` and ignore unknown fields;
incompatible changes get a new format version.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, JsonValue

from controller.api.base import GROUP, Condition, Model

POLICY_FORMAT: Literal["ds01.policy/v1"] = "ds01.policy/v1"
POLICY_CONFIGMAP = "ds01-policy"
"""The published object in each account namespace (also the admission parameter)."""
QUOTA_NAME = "ds01"
"""The operator's ResourceQuota in each account namespace."""
LIMIT_RANGE_NAME = "ds01"
"""The operator's LimitRange in each account namespace."""
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "ds01-operator"
"""Objects carrying this label value are written by the operator only."""
COMPONENT_LABEL = f"{GROUP}/component"

KEY_FORMAT = "format"
KEY_DOCUMENT = "policy.json"
# Admission parameters (ValidatingAdmissionPolicy ds01-pod-limits reads them).
KEY_MAX_DEVICES = "maxDevicesPerWorkload"
KEY_MAX_DEVICES_SOURCE = "maxDevicesPerWorkloadSource"
KEY_GPU_RESOURCES = "gpuResources"
"""Comma-separated resource names after ``gpu.ds01.io/`` the user may ask for."""
KEY_GPU_RESOURCES_NOTE = "gpuResourcesNote"
KEY_EQUIVALENT_PREFIX = "gpuEquivalents."
"""``gpuEquivalents.<name after gpu.ds01.io/>``: GPU-equivalents of one device."""
KEY_GPU_ALLOWANCE = "gpuAllowance"
KEY_GPU_ALLOWANCE_SOURCE = "gpuAllowanceSource"
KEY_GPU_IN_USE = "gpuInUse"
KEY_GPU_REMAINING = "gpuRemaining"
KEY_GPU_BLOCKED = "gpuBlocked"
"""Why new GPU pods are refused now (empty: they are not)."""
KEY_PODS_BLOCKED = "podsBlocked"
"""Why new pods are refused now (empty: they are not)."""


class LimitEntry(Model):
    """One effective limit and the object it came from."""

    value: JsonValue
    """Its effective value."""
    source: str
    """`GPURateLimit/<name>` or `built-in defaults`."""


class Allowance(Model):
    """GPU-equivalents the user may hold at once."""

    base: str
    """`gpu.maxGPUEquivalents` of the effective policy, or `Unlimited`."""
    base_source: str
    """Where the base came from."""
    grants: str
    """GPU-equivalents added by active GPUGrants."""
    total: str
    """Base plus grants, or `Unlimited`."""
    in_use: str
    """GPU-equivalents requested by the user's pods that are not finished."""
    remaining: str
    """Total minus in use (never below 0), or `Unlimited`."""


class QuotaLine(Model):
    """One line of the ResourceQuota `ds01`, with its use by the pods."""

    resource: str
    """The quota line, for example `requests.gpu.ds01.io/gpu` or `pods`."""
    hard: str
    """The limit the operator set."""
    used: str
    """What the pods use of it."""
    gpu_equivalents_each: str | None = None
    """For GPU resources: GPU-equivalents of one device."""


class Usage(Model):
    """What the account uses now."""

    gpu_equivalents: str
    """Requested by the user's unfinished pods."""
    workloads: int
    """Unfinished pods."""
    cpu_limits: str
    """CPU limits of those pods together."""
    memory_limits: str
    """Memory limits of those pods together."""
    reported_gpu_equivalents: str
    """In use by any of the user's workloads on any node, as the node agents report."""


class BudgetBucket(Model):
    """GPU-equivalent-hours used in one time bucket."""

    start: datetime
    end: datetime
    gpu_hours: float


class Budget(Model):
    """GPU time per rolling window."""

    gpu_hours: str
    """The budget per window (`budget.gpuHours`), or `Unlimited`."""
    window: str
    """The window (`budget.window`)."""
    source: str
    """Where the budget came from."""
    exempt: bool = False
    """A GPUExemption from Budget is in force: the budget is not enforced."""
    exhausted: bool = False
    """The budget is used up and enforced: new GPU pods are refused."""
    used_gpu_hours: float
    """GPU-equivalent-hours used inside the window, as of `asOf`."""
    remaining_gpu_hours: float | None = None
    """What is left as of `asOf`; absent when unlimited."""
    rate: float
    """GPU-equivalents in use at `asOf` (the hours grow at this rate)."""
    as_of: datetime | None = None
    """When the figures were computed."""
    restores_at: datetime | None = None
    """When exhausted: the earliest time the budget is back, if nothing more is used."""
    buckets: Annotated[list[BudgetBucket], Field(max_length=256)] = Field(default_factory=list)
    """The record of use inside the window (oldest first)."""


class WorkloadStart(Model):
    """A pod created in the account namespace."""

    at: datetime
    pod: str
    uid: str


class Rates(Model):
    """How often and how many."""

    workload_starts_per_hour: str
    """`rates.workloadStartsPerHour`, or `Unlimited`."""
    window: str
    """The rolling window the starts are counted over (an hour)."""
    source: str
    """Where the limit came from."""
    exempt: bool = False
    """A GPUExemption from RateLimits is in force."""
    limited: bool = False
    """The starts in the window reached the limit: no new pods until `nextStartAt`."""
    next_start_at: datetime | None = None
    """When limited: when the next start is allowed."""
    starts: Annotated[list[WorkloadStart], Field(max_length=512)] = Field(default_factory=list)
    """Starts inside the window (oldest first)."""
    max_workloads: str
    """`rates.maxWorkloads` (pods at once), or `Unlimited`."""
    workloads: int
    """Pods now (not finished)."""
    grant_requests_per_day: str
    """`rates.grantRequestsPerDay`, or `Unlimited`."""


class SentAlert(Model):
    """When a quota alert was last sent."""

    metric: Literal["gpu", "workloads", "memory"]
    level: int
    """80 or 100 (percent)."""
    sent_at: datetime


class GrantEntry(Model):
    """A GPUGrant of the user, in a line."""

    name: str
    state: str
    gpus: int
    mig_profile: str | None = None
    access: str
    gpu_equivalents: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    message: str = ""
    """Why it is in this state (for pending requests: what it waits for)."""


class ExemptionEntry(Model):
    """A GPUExemption in force for the user."""

    name: str
    exempt_from: list[str]
    category: str
    expires_at: datetime | None = None
    """Absent: permanent."""


class AccountPolicy(Model):
    """Everything a user may want to know about their limits, in one document."""

    format: Literal["ds01.policy/v1"] = POLICY_FORMAT
    user: str
    groups: list[str] = Field(default_factory=list)
    namespace: str
    applied: list[str] = Field(default_factory=list)
    """GPURateLimits applied, in order (later ones win, field by field)."""
    limits: dict[str, LimitEntry] = Field(default_factory=dict)
    """Every effective limit by its field path in a GPURateLimit spec (`gpu.maxGPUEquivalents`), with its source."""
    allowance: Allowance
    quota: list[QuotaLine] = Field(default_factory=list)
    """The ResourceQuota `ds01` the operator wrote, line by line."""
    usage: Usage
    budget: Budget
    rates: Rates
    alerts: list[SentAlert] = Field(default_factory=list)
    """The last quota alert of each measure and level."""
    grants: list[GrantEntry] = Field(default_factory=list)
    """Active and scheduled grants."""
    pending: list[GrantEntry] = Field(default_factory=list)
    """Requests not (yet) in force, and why."""
    exemptions: list[ExemptionEntry] = Field(default_factory=list)
    """Exemptions in force."""
    conditions: list[Condition] = Field(default_factory=list)
    """`Ready`, `BudgetExhausted`, `WorkloadStartsLimited`, `OverUse`."""
