"""The four kinds as whole objects, and what `kubectl` shows of each."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import Field

from controller.api.base import API_VERSION, Model
from controller.api.crd import KindInfo, PrinterColumn
from controller.api.exemption import GPUExemptionSpec, GPUExemptionStatus
from controller.api.grant import GPUGrantSpec, GPUGrantStatus
from controller.api.node import GPUNodeSpec, GPUNodeStatus
from controller.api.ratelimit import GPURateLimitSpec, GPURateLimitStatus


class ObjectMeta(Model):
    """The parts of `metadata` the controller reads."""

    name: str
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    finalizers: list[str] = Field(default_factory=list)


SpecT = TypeVar("SpecT", bound=Model)
StatusT = TypeVar("StatusT", bound=Model)


class Resource(Model, Generic[SpecT, StatusT]):
    """A whole object of one of our kinds: apiVersion, kind, metadata, spec, status."""

    api_version: Annotated[str, Field(alias="apiVersion")] = API_VERSION
    metadata: ObjectMeta
    spec: SpecT
    status: StatusT | None = None


class GPURateLimit(Resource[GPURateLimitSpec, GPURateLimitStatus]):
    """Limits and rates for a set of users or groups."""

    kind: Literal["GPURateLimit"] = "GPURateLimit"


class GPUGrant(Resource[GPUGrantSpec, GPUGrantStatus]):
    """A time-bounded GPU allowance for one user."""

    kind: Literal["GPUGrant"] = "GPUGrant"


class GPUExemption(Resource[GPUExemptionSpec, GPUExemptionStatus]):
    """An expiring, audited exception to one kind of rule."""

    kind: Literal["GPUExemption"] = "GPUExemption"


class GPUNode(Resource[GPUNodeSpec, GPUNodeStatus]):
    """Desired and observed GPU state of one node."""

    kind: Literal["GPUNode"] = "GPUNode"


def parse(body: dict[str, Any]) -> GPURateLimit | GPUGrant | GPUExemption | GPUNode:
    """Parse an object read from the apiserver into its model."""
    models: dict[str, Any] = {
        "GPURateLimit": GPURateLimit,
        "GPUGrant": GPUGrant,
        "GPUExemption": GPUExemption,
        "GPUNode": GPUNode,
    }
    kind = body.get("kind")
    if kind not in models:
        raise ValueError(f"kind: {kind!r} is not one of {sorted(models)}")
    return models[kind].model_validate(body)  # type: ignore[no-any-return]


_READY = PrinterColumn(
    "Ready",
    '.status.conditions[?(@.type=="Ready")].status',
    description="Whether the object is fully reconciled",
)
_AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")

RATE_LIMIT = KindInfo(
    kind="GPURateLimit",
    plural="gpuratelimits",
    scope="Cluster",
    spec=GPURateLimitSpec,
    status=GPURateLimitStatus,
    description=(
        "GPURateLimit sets GPU allowance, budget, rates, resources and lifecycle limits for "
        "users and groups. A user's effective policy is built field by field: built-in "
        "defaults, then Group limits in ascending priority, then User limits."
    ),
    short_names=("grl", "gpurl"),
    columns=(
        PrinterColumn("Subjects", ".status.subjects", description="Users and groups it applies to"),
        PrinterColumn("Priority", ".spec.priority", "integer"),
        PrinterColumn("GPUs", ".spec.gpu.maxGPUEquivalents", description="GPU-equivalents"),
        PrinterColumn("Per-Workload", ".spec.gpu.maxDevicesPerWorkload"),
        PrinterColumn("Budget", ".spec.budget.gpuHours", description="GPU-hours per window"),
        PrinterColumn("Approval", ".spec.grants.approval"),
        PrinterColumn("Users", ".status.matchedUsers", "integer", priority=1),
        _READY,
        _AGE,
    ),
)

GRANT = KindInfo(
    kind="GPUGrant",
    plural="gpugrants",
    scope="Namespaced",
    spec=GPUGrantSpec,
    status=GPUGrantStatus,
    description=(
        "GPUGrant is a time-bounded GPU allowance for one user: what, when, why, who asked "
        "and who approved. It lives in the user's account namespace."
    ),
    short_names=("grant", "gg"),
    columns=(
        PrinterColumn("Subject", ".spec.subject.name"),
        PrinterColumn("GPUs", ".spec.gpus.count", "integer"),
        PrinterColumn("Profile", ".spec.gpus.migProfile", description="MIG profile"),
        PrinterColumn("Access", ".spec.access"),
        PrinterColumn("State", ".status.state"),
        PrinterColumn("Expires", ".status.window.end", description="When the grant ends"),
        PrinterColumn("Requested-By", ".spec.requestedBy", priority=1),
        PrinterColumn("Approved-By", ".spec.approval.approvedBy", priority=1),
        PrinterColumn("Reason", ".spec.reason", priority=1),
        _READY,
        _AGE,
    ),
)

EXEMPTION = KindInfo(
    kind="GPUExemption",
    plural="gpuexemptions",
    scope="Cluster",
    spec=GPUExemptionSpec,
    status=GPUExemptionStatus,
    description=(
        "GPUExemption is an expiring, audited exception for a user or group: from idle "
        "reaping, the runtime cap, rate limits, the budget, or the ban on host GPU use."
    ),
    short_names=("gex", "exemption"),
    columns=(
        PrinterColumn("Subject", ".spec.subject.name"),
        PrinterColumn("Exempt-From", ".spec.exemptFrom"),
        PrinterColumn("Category", ".spec.category"),
        PrinterColumn("State", ".status.state"),
        PrinterColumn("Expires", ".spec.expiresAt", description="Empty when permanent"),
        PrinterColumn("Reason", ".spec.reason", priority=1),
        _READY,
        _AGE,
    ),
)

NODE = KindInfo(
    kind="GPUNode",
    plural="gpunodes",
    scope="Cluster",
    spec=GPUNodeSpec,
    status=GPUNodeStatus,
    description=(
        "GPUNode is the contract between the operator, which writes spec (what the node "
        "enforces), and the node's agent, which writes status (inventory, workloads, "
        "violations). It is named after the node."
    ),
    short_names=("gn", "gpun"),
    columns=(
        PrinterColumn("Mode", ".spec.enforcement", description="Enforcement mode asked for"),
        PrinterColumn("In-Force", ".status.enforcement", description="Mode the agent applies"),
        PrinterColumn("GPUs", ".status.gpus", "integer"),
        PrinterColumn("Healthy", ".status.healthyDevices", "integer"),
        PrinterColumn("Applied", ".status.appliedGeneration", "integer"),
        PrinterColumn("Heartbeat", ".status.agent.heartbeatTime", "date"),
        _READY,
        _AGE,
    ),
)

ALL_KINDS = (RATE_LIMIT, GRANT, EXEMPTION, NODE)
