"""GPUNode: the contract between the operator and the agent of one GPU node.

The operator writes `spec` (what the node must enforce); the node's agent
writes `status` (what it has and sees) and nothing else. Every spec entry
carries its own expiry, so an agent cut off from the apiserver can still close
entries whose time has passed without revoking anything for lack of data.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from controller.api.base import Conditions, Model
from controller.api.values import (
    DEVICE_UUID,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    LINUX_USER,
    MIG_PROFILE,
    PRINCIPAL,
    ShortText,
    Text,
    Time,
    machine,
)

EnforcementMode = Literal["Enforce", "Audit", "Off"]
Health = Literal["Healthy", "Unhealthy", "Unknown"]
WorkloadKind = Literal["Pod", "Container", "HostProcess"]
OwnerSource = Literal[
    "Namespace", "GatewayLabel", "ContainerUID", "ProcessUID", "PodResources", "Unknown"
]
ViolationKind = Literal["Unattributed", "Unentitled", "OutsideAllocation"]


# Everything in a GPUNode is written by programs and sits in long lists, so
# strings are checked by plain patterns (see controller.api.values.machine).
_DeviceUUID = Annotated[str, machine(DEVICE_UUID)]
_Principal = Annotated[str, machine(PRINCIPAL)]
_LinuxUser = Annotated[str, machine(LINUX_USER)]
_MIGProfile = Annotated[str, machine(MIG_PROFILE)]
_ObjectName = Annotated[str, machine(DNS_SUBDOMAIN)]
_NamespaceName = Annotated[str, machine(DNS_LABEL)]


class ObjectReference(Model):
    """Points at the object an entry came from."""

    kind: Literal["GPUGrant", "GPUExemption", "GPURateLimit", "Namespace", "Operator"]
    """Kind of the source object."""
    name: _ObjectName
    """Name of the source object."""
    namespace: _NamespaceName | None = None
    """Namespace of the source object; empty for cluster-scoped kinds."""


class HostAccessEntry(Model):
    """A user allowed to use GPUs directly on this node, outside containers."""

    user: _Principal
    """The user's account name."""
    linux_user: _LinuxUser
    """The user's Linux login on this node."""
    device_uuids: (
        Annotated[
            list[_DeviceUUID],
            Field(max_length=64, json_schema_extra={"x-kubernetes-list-type": "set"}),
        ]
        | None
    ) = None
    """Devices the user may open on the host; all of the node's GPUs when left out (HostAccess exemptions)."""
    until: Time | None = None
    """When the access ends; permanent when left out (admin exemptions only)."""
    source: ObjectReference
    """The GPUGrant or GPUExemption that gave it."""


class Reservation(Model):
    """A device held for one user for a time."""

    device_uuid: _DeviceUUID
    """The GPU or MIG slice held."""
    user: _Principal
    """Who it is held for."""
    from_: Annotated[Time | None, Field(alias="from")] = None
    """When the hold begins; immediately when left out."""
    until: Time
    """When the hold ends."""
    source: ObjectReference
    """The GPUGrant that asked for it."""


class Revocation(Model):
    """GPU use that must end on this node."""

    user: _Principal
    """Whose use is revoked."""
    device_uuids: (
        Annotated[
            list[_DeviceUUID],
            Field(max_length=64, json_schema_extra={"x-kubernetes-list-type": "set"}),
        ]
        | None
    ) = None
    """Devices the revocation covers; all of the user's devices on the node when left out."""
    reason: Text
    """Why, for the warning the user receives."""
    effective_at: Time
    """When holders are ended (the grace period's end); new opens are denied from the revocation's start (a soft revocation's from this time)."""
    until: Time
    """When the entry may be dropped."""
    soft: bool = False
    """Warn only, never end processes."""
    source: ObjectReference
    """The object whose expiry or revocation caused it."""


class LifecycleExemptionEntry(Model):
    """A user whose GPU workloads on this node are not reaped for idleness or runtime."""

    user: _Principal
    """The user's account name (group exemptions are expanded to their members)."""
    linux_user: _LinuxUser | None = None
    """The user's Linux login, for containers the Docker gateway attributes by UID."""
    exempt_from: Annotated[
        list[Literal["IdleTimeout", "MaxRuntime"]],
        Field(min_length=1, max_length=2, json_schema_extra={"x-kubernetes-list-type": "set"}),
    ]
    """`IdleTimeout`, `MaxRuntime` or both."""
    until: Time | None = None
    """When the exemption ends; permanent when left out."""
    source: ObjectReference
    """The GPUExemption that gave it."""


class GPUNodeSpec(Model):
    """What this node's agent must enforce; written by the operator only."""

    enforcement: EnforcementMode = "Audit"
    """`Enforce` applies kernel rules and ends violations; `Audit` only reports what it would deny; `Off` does neither."""
    host_access: Annotated[list[HostAccessEntry], Field(max_length=1024)] | None = None
    """Users who may use GPUs on the host itself."""
    reservations: Annotated[list[Reservation], Field(max_length=1024)] | None = None
    """Devices held for users by reserving grants; the operator never writes two overlapping holds on one device."""
    revocations: Annotated[list[Revocation], Field(max_length=1024)] | None = None
    """GPU use to end, each after its grace period."""
    lifecycle_exemptions: (
        Annotated[list[LifecycleExemptionEntry], Field(max_length=1024)] | None
    ) = None
    """Users exempt from idle reaping or the runtime cap on this node."""


class DeviceNumbers(Model):
    """A character device's major and minor numbers."""

    major: Annotated[int, Field(ge=0, le=4095)]
    """Major number (`nvidia` is 195; `nvidia-uvm` and `nvidia-caps` are dynamic)."""
    minor: Annotated[int, Field(ge=0, le=1048575)]
    """Minor number."""


class MIGInstance(Model):
    """One MIG slice of a GPU."""

    uuid: _DeviceUUID
    """The slice's `MIG-` UUID."""
    profile: _MIGProfile
    """Its profile, for example `2g.20gb`."""
    slices: Annotated[int, Field(ge=1, le=8)]
    """Compute slices it spans."""
    placement_start: Annotated[int, Field(ge=0, le=7)]
    """First memory slice of its placement."""
    gpu_instance_id: Annotated[int, Field(ge=0, le=64)]
    """NVML GPU instance ID."""
    compute_instance_id: Annotated[int, Field(ge=0, le=64)]
    """NVML compute instance ID."""
    capability_device: DeviceNumbers | None = None
    """The `nvidia-caps` device that grants access to this slice."""
    health: Health = "Healthy"
    """Whether the slice can be allocated."""


class GPUDevice(Model):
    """One physical GPU and what NVML reports about it."""

    uuid: _DeviceUUID
    """The GPU's `GPU-` UUID."""
    index: Annotated[int, Field(ge=0, le=63)]
    """NVML index."""
    model: ShortText
    """Product name, for example `NVIDIA A100-SXM4-40GB`."""
    memory_mib: Annotated[int, Field(ge=0)]
    """Total memory in MiB."""
    device: DeviceNumbers
    """The `/dev/nvidiaN` device numbers."""
    pci_bus_id: Annotated[str, Field(max_length=32)] | None = None
    """PCI bus ID, for example `00000000:07:00.0`."""
    mig_enabled: bool = False
    """Whether MIG mode is on; a GPU in MIG mode is allocated only by its slices."""
    mig_total_slices: Annotated[int, Field(ge=0, le=8)] | None = None
    """Compute slices of the whole GPU (7 on A100 and H100, 4 on A30)."""
    mig_instances: Annotated[list[MIGInstance], Field(max_length=8)] | None = None
    """The slices, when MIG mode is on."""
    health: Health = "Healthy"
    """`Unhealthy` after a critical XID or when the GPU fell off the bus."""
    health_reason: ShortText | None = None
    """Why it is unhealthy."""
    utilization_percent: Annotated[int, Field(ge=0, le=100)] | None = None
    """GPU utilisation at the last scan (absent for MIG-mode GPUs: NVML reports none)."""
    memory_used_mib: Annotated[int, Field(ge=0)] | None = None
    """Memory in use at the last scan."""
    nvlink_peers: (
        Annotated[list[Annotated[int, Field(ge=0, le=63)]], Field(max_length=63)] | None
    ) = None
    """Indexes of GPUs connected to this one by NVLink."""


class GPUProcess(Model):
    """A process using a GPU."""

    pid: Annotated[int, Field(ge=1)]
    """Process ID in the host's PID namespace."""
    device_uuid: _DeviceUUID
    """The GPU or slice it uses."""
    memory_used_mib: Annotated[int, Field(ge=0)] | None = None
    """Memory it holds on that device."""


class WorkloadReport(Model):
    """A workload using GPUs on this node, attributed to an owner."""

    kind: WorkloadKind
    """`Pod`, `Container` or `HostProcess`."""
    name: ShortText
    """Pod name, container name or process command."""
    namespace: _NamespaceName | None = None
    """The pod's namespace (its owner's account)."""
    container_id: Annotated[str, Field(max_length=128)] | None = None
    """Container ID, for containers and pods."""
    owner: _Principal | None = None
    """The user it belongs to; absent when it could not be attributed."""
    owner_source: OwnerSource
    """How the owner was determined."""
    devices: Annotated[list[_DeviceUUID], Field(max_length=64)]
    """Devices it uses."""
    allocated: Annotated[list[_DeviceUUID], Field(max_length=64)] | None = None
    """Devices it was allocated (device plugin, PodResources or the Docker gateway)."""
    processes: Annotated[list[GPUProcess], Field(max_length=256)] | None = None
    """Its GPU processes."""
    started_at: Time | None = None
    """When it was first seen using a GPU."""


class Violation(Model):
    """GPU use that breaks policy."""

    kind: ViolationKind
    """`Unattributed` (no owner), `Unentitled` (owner has no right to it) or `OutsideAllocation` (a device the workload was not given)."""
    device_uuid: _DeviceUUID
    """The device used."""
    pid: Annotated[int, Field(ge=1)] | None = None
    """The process, when one was found."""
    owner: _Principal | None = None
    """The owner, when known."""
    message: Text
    """What was seen and what the agent did."""
    since: Time
    """When it was first seen."""


class AuditAnchor(Model):
    """The latest signed checkpoint of the agent's audit trail, kept outside the node."""

    seq: Annotated[int, Field(ge=1)]
    """The last record the checkpoint covers."""
    chain: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", max_length=64)]
    """That record's SHA-256: `ds01 audit verify --node` checks the trail reaches it unchanged."""


class AgentInfo(Model):
    """The agent reporting this status."""

    version: Annotated[str, Field(max_length=64)]
    """Agent version."""
    heartbeat_time: Time
    """When the agent last wrote status."""
    driver_version: Annotated[str, Field(max_length=64)] | None = None
    """NVIDIA driver version NVML reports."""
    cgroup_version: Literal["v1", "v2"] | None = None
    """The cgroup hierarchy device rules are enforced in."""
    audit_anchor: AuditAnchor | None = None
    """The latest signed checkpoint of the agent's audit trail (set when it has a key)."""


class GPUNodeStatus(Model):
    """What this node has and sees; written by its agent only."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The `metadata.generation` of the spec the agent has applied."""
    applied_generation: Annotated[int, Field(ge=0)] | None = None
    """The spec generation whose rules are in force on the node."""
    enforcement: EnforcementMode | None = None
    """The mode actually in force (`Audit` until the agent has a policy)."""
    agent: AgentInfo | None = None
    """Agent version and heartbeat."""
    conditions: Conditions | None = None
    """`AgentReady`, `InventoryCurrent` and (with enforcement) `PolicyApplied`."""
    gpus: Annotated[int, Field(ge=0, le=64)] | None = None
    """Number of physical GPUs."""
    healthy_devices: Annotated[int, Field(ge=0, le=1024)] | None = None
    """Allocatable devices (whole GPUs and MIG slices) that are healthy."""
    devices: Annotated[list[GPUDevice], Field(max_length=64)] | None = None
    """The inventory."""
    workloads: Annotated[list[WorkloadReport], Field(max_length=1024)] | None = None
    """GPU workloads and their owners."""
    violations: Annotated[list[Violation], Field(max_length=1024)] | None = None
    """GPU use that breaks policy."""
    workload_count: Annotated[int, Field(ge=0)] | None = None
    """All GPU workloads seen; more than `workloads` lists when that list was cut at its bound."""
    violation_count: Annotated[int, Field(ge=0)] | None = None
    """All violations seen; more than `violations` lists when that list was cut at its bound."""
