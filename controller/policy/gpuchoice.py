"""Which GPUs a Docker container gets when its creator asks for some (`--gpus`). Pure.

The Docker gateway decides this at create time, on the node, under one lock;
here is only the decision. The caller's entitlement comes from their effective
`GPURateLimit` (GPU-equivalents held at once, devices per container, whole
GPUs allowed, MIG profiles allowed) and from the node's `GPUNode.spec`:

- devices *reserved for the caller now* (a reserving grant) are theirs on top
  of their allowance, and are given first;
- devices reserved for someone else over the container's possible lifetime,
  devices the caller's revocations cover, unhealthy devices and devices
  another gateway container holds are never given: one workload per slot;
- otherwise first fit, through the same placement the operator uses for
  reservations (`controller.policy.allocation.place`: by index, NVLink sets
  for several whole GPUs); callers allowed whole GPUs get whole GPUs first,
  then MIG slices, larger profiles first (DS01's order).

Quota errors (cap, allowance, a device that is not the caller's to take) are
immediate and explicit; a shortage of free devices is a separate answer so the
gateway can say "nothing free" rather than "not allowed".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any, Literal

from controller.api.node import GPUNodeSpec
from controller.api.ratelimit import GPUPolicy
from controller.policy.allocation import Allocation, Ledger, Request, Slot, Window, place
from controller.policy.units import format_gpu_equivalents, parse_count, parse_gpu_equivalents

NODE = "this-node"
"""The gateway allocates on its own node only; `place` wants a node name."""


@dataclass(frozen=True)
class Device:
    """An allocatable slot as the gateway sees it: a whole GPU or a MIG slice."""

    uuid: str
    gpu_uuid: str
    index: int
    """The NVML index of its physical GPU."""
    mig_profile: str | None
    equivalents: Fraction
    placement: int = 0
    healthy: bool = True
    nvlink_peers: frozenset[int] = frozenset()


@dataclass(frozen=True)
class GpuRequest:
    """What `--gpus` asked for: a count (-1 for `all`) or explicit device IDs."""

    count: int
    ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Chosen:
    devices: tuple[Device, ...]
    from_reservation: tuple[str, ...] = ()
    """UUIDs given from the caller's own reservations (outside the allowance)."""


@dataclass(frozen=True)
class NoDevices:
    """Why no devices were given: `quota` (not allowed) or `capacity` (nothing free)."""

    kind: Literal["quota", "capacity", "invalid"]
    message: str


def parse_request(
    device_requests: Sequence[Mapping[str, Any]] | None,
) -> GpuRequest | NoDevices | None:
    """The GPU request in `HostConfig.DeviceRequests`; None when the container asks for none."""
    gpu_requests = []
    for entry in device_requests or ():
        driver = str(entry.get("Driver") or "")
        capabilities = {c for group in entry.get("Capabilities") or () for c in group or ()}
        if driver in ("", "nvidia") and ("gpu" in capabilities or driver == "nvidia"):
            gpu_requests.append(entry)
        else:
            return NoDevices(
                "invalid",
                f"--gpus / device requests: driver {driver or '(default)'!r} with capabilities "
                f"{sorted(capabilities)} is not available here; ask for GPUs with --gpus N",
            )
    if not gpu_requests:
        return None
    if len(gpu_requests) > 1:
        return NoDevices("invalid", "--gpus: give one GPU request per container")
    entry = gpu_requests[0]
    ids = tuple(str(i) for i in entry.get("DeviceIDs") or () if str(i))
    count = int(entry.get("Count") or 0)
    if ids and count:
        return NoDevices("invalid", "--gpus: give either a count or device IDs, not both")
    if not ids and count == 0:
        return None
    return GpuRequest(count=count, ids=ids)


def _reserved(spec: GPUNodeSpec, now: datetime, until: datetime) -> dict[str, set[str]]:
    """Device UUID -> users it is reserved for at some time in [now, until)."""
    out: dict[str, set[str]] = {}
    for hold in spec.reservations or ():
        starts = hold.from_ or now
        if starts < until and hold.until > now:
            out.setdefault(hold.device_uuid, set()).add(hold.user)
    return out


def _revoked(spec: GPUNodeSpec, user: str, device: Device, now: datetime) -> bool:
    for revocation in spec.revocations or ():
        if revocation.user != user or revocation.until <= now:
            continue
        covered = revocation.device_uuids
        if covered is None or device.uuid in covered or device.gpu_uuid in covered:
            return True
    return False


def _kind(profile: str | None) -> str:
    return "whole GPU" if profile is None else f"MIG {profile} slice"


@dataclass(frozen=True)
class Entitlement:
    """The caller's limits as numbers, with where each came from (for messages)."""

    allowance: Fraction | None
    cap: int | None
    full_gpus: bool
    profiles: frozenset[str] | None
    source_of: Callable[[str], str]

    @staticmethod
    def of(gpu: GPUPolicy, source_of: Callable[[str], str]) -> Entitlement:
        return Entitlement(
            allowance=parse_gpu_equivalents(gpu.max_gpu_equivalents)
            if gpu.max_gpu_equivalents is not None
            else None,
            cap=parse_count(gpu.max_devices_per_workload)
            if gpu.max_devices_per_workload is not None
            else None,
            full_gpus=gpu.allow_full_gpus is not False,
            profiles=frozenset(gpu.allowed_mig_profiles)
            if gpu.allowed_mig_profiles is not None
            else None,
            source_of=source_of,
        )

    def allows(self, profile: str | None) -> bool:
        if profile is None:
            return self.full_gpus
        return self.profiles is None or profile in self.profiles


def choose(
    request: GpuRequest,
    *,
    user: str,
    entitlement: Entitlement,
    devices: Sequence[Device],
    held: Mapping[str, str],
    spec: GPUNodeSpec,
    now: datetime,
    horizon: timedelta,
) -> Chosen | NoDevices:
    """The devices for one new container of ``user``; see the module docstring.

    ``held`` maps every device already given to a gateway container (any owner,
    any state that keeps it) to its holder. ``horizon`` is how long the
    container may run: a device reserved for someone else within it is not given.
    """
    reserved = _reserved(spec, now, now + horizon)
    mine_now = {
        h.device_uuid
        for h in spec.reservations or ()
        if h.user == user and (h.from_ or now) <= now < h.until
    }
    used = sum(
        (d.equivalents for d in devices if held.get(d.uuid) == user and d.uuid not in mine_now),
        Fraction(0),
    )
    if request.count < 0:
        cap = "as many as you may" if entitlement.cap is None else f"at most {entitlement.cap}"
        return NoDevices(
            "invalid", f"--gpus all is not available here: ask for a number (--gpus N, {cap})"
        )
    wanted = len(request.ids) or request.count
    if entitlement.cap is not None and wanted > entitlement.cap:
        return NoDevices(
            "quota",
            f"--gpus: this container asks for {wanted} devices; at most {entitlement.cap} per "
            f"container ({entitlement.source_of('gpu.maxDevicesPerWorkload')})",
        )

    def unavailable(device: Device) -> NoDevices | None:
        # A device that is down or taken is a matter of capacity (try again later);
        # one held for someone else or revoked is not the caller's to take (quota).
        if not device.healthy:
            return NoDevices("capacity", f"{device.uuid} is unhealthy")
        holder = held.get(device.uuid)
        if holder is not None:
            whose = "another of your containers" if holder == user else "another container"
            return NoDevices("capacity", f"{device.uuid} is in use by {whose}")
        others = reserved.get(device.uuid, set()) - {user}
        if others:
            return NoDevices("quota", f"{device.uuid} is reserved for someone else")
        if _revoked(spec, user, device, now):
            return NoDevices("quota", f"your access to {device.uuid} was revoked")
        return None

    if request.ids:
        return _explicit(
            request.ids,
            entitlement=entitlement,
            devices=devices,
            unavailable=unavailable,
            mine_now=mine_now,
            used=used,
        )
    free = [d for d in devices if unavailable(d) is None]
    return _first_fit(
        request.count,
        entitlement=entitlement,
        free=free,
        mine_now=mine_now,
        used=used,
        now=now,
        horizon=horizon,
    )


def _over_allowance(
    entitlement: Entitlement, used: Fraction, cost: Fraction, what: str
) -> NoDevices | None:
    if entitlement.allowance is None or used + cost <= entitlement.allowance:
        return None
    return NoDevices(
        "quota",
        f"--gpus: you hold {format_gpu_equivalents(used)} of your "
        f"{format_gpu_equivalents(entitlement.allowance)} GPU-equivalents "
        f"({entitlement.source_of('gpu.maxGPUEquivalents')}); {what} needs "
        f"{format_gpu_equivalents(cost)} more",
    )


def _explicit(
    ids: Sequence[str],
    *,
    entitlement: Entitlement,
    devices: Sequence[Device],
    unavailable: Callable[[Device], NoDevices | None],
    mine_now: set[str],
    used: Fraction,
) -> Chosen | NoDevices:
    by_uuid = {d.uuid: d for d in devices}
    whole_by_index = {str(d.index): d for d in devices if d.mig_profile is None}
    # A GPU in MIG mode is not a device of its own: named by index or by UUID, it
    # gets the list of its slices rather than "no such GPU".
    slices_of: dict[str, list[str]] = {}
    for d in devices:
        if d.mig_profile is not None:
            slices_of.setdefault(str(d.index), []).append(d.uuid)
            slices_of.setdefault(d.gpu_uuid, []).append(d.uuid)
    chosen: list[Device] = []
    for ident in ids:
        device = by_uuid.get(ident) or whole_by_index.get(ident)
        if device is None and ident in slices_of:
            slices = ", ".join(slices_of[ident])
            return NoDevices(
                "invalid",
                f"--gpus device={ident}: GPU {ident} is in MIG mode; name one of its slices "
                f"({slices or 'none configured'})",
            )
        if device is None:
            return NoDevices("invalid", f"--gpus device={ident}: no such GPU on this node")
        if device in chosen:
            return NoDevices("invalid", f"--gpus device={ident}: named twice")
        why = unavailable(device)
        if why is not None:
            return NoDevices(why.kind, f"--gpus: {why.message}")
        if device.uuid not in mine_now and not entitlement.allows(device.mig_profile):
            return NoDevices("quota", f"--gpus device={ident}: {_not_allowed(device, entitlement)}")
        chosen.append(device)
    cost = sum((d.equivalents for d in chosen if d.uuid not in mine_now), Fraction(0))
    refused = _over_allowance(entitlement, used, cost, "this container")
    if refused is not None:
        return refused
    return Chosen(tuple(chosen), tuple(d.uuid for d in chosen if d.uuid in mine_now))


def _not_allowed(device: Device, entitlement: Entitlement) -> str:
    if device.mig_profile is None:
        return (
            f"whole GPUs are not allowed for you ({entitlement.source_of('gpu.allowFullGPUs')}); "
            "ask for MIG slices"
        )
    return (
        f"MIG profile {device.mig_profile} is not allowed for you "
        f"({entitlement.source_of('gpu.allowedMIGProfiles')})"
    )


def _first_fit(
    count: int,
    *,
    entitlement: Entitlement,
    free: Sequence[Device],
    mine_now: set[str],
    used: Fraction,
    now: datetime,
    horizon: timedelta,
) -> Chosen | NoDevices:
    kinds: list[str | None] = []
    for device in free:  # the caller's own reservations first, whatever their kind
        if device.uuid in mine_now and device.mig_profile not in kinds:
            kinds.append(device.mig_profile)
    if entitlement.full_gpus and None not in kinds:
        kinds.append(None)
    profiles = sorted(
        {d.mig_profile for d in free if d.mig_profile is not None},
        key=lambda p: (-_slices(p), p),
    )
    kinds += [p for p in profiles if p not in kinds and entitlement.allows(p)]
    quota: NoDevices | None = None
    by_uuid = {d.uuid: d for d in free}
    for kind in kinds:
        own = [d for d in free if d.uuid in mine_now and d.mig_profile == kind][:count]
        rest = count - len(own)
        picked: list[Device] = []
        if rest:
            if not entitlement.allows(kind):
                continue
            pool = [d for d in free if d.mig_profile == kind and d.uuid not in mine_now]
            placed = place(
                Request(key="new", count=rest, window=Window(now, now + horizon), mig_profile=kind),
                {NODE: [_slot(d) for d in pool]},
                {},
                Ledger(),
            )
            if not isinstance(placed, Allocation):
                continue
            picked = [by_uuid[u] for u in placed.uuids]
        cost = sum((d.equivalents for d in picked), Fraction(0))
        what = f"{count} x {_kind(kind)}"
        refused = _over_allowance(entitlement, used, cost, what)
        if refused is not None:
            quota = quota or refused
            continue
        return Chosen(tuple(own + picked), tuple(d.uuid for d in own))
    if quota is not None:
        return quota
    allowed = [_kind(k) for k in kinds] or ["no kind of GPU (check your GPURateLimit)"]
    return NoDevices(
        "capacity",
        f"--gpus {count}: not enough free devices on this node for you "
        f"(looked for {' or '.join(allowed)}); try again later or ask for fewer",
    )


def _slices(profile: str) -> int:
    head = profile.split("g.", 1)[0]
    return int(head) if head.isdigit() else 0


def _slot(device: Device) -> Slot:
    return Slot(
        node=NODE,
        uuid=device.uuid,
        gpu_index=device.index,
        mig_profile=device.mig_profile,
        placement=device.placement,
        healthy=device.healthy,
        nvlink_peers=device.nvlink_peers,
    )
