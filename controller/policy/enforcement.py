"""What the kernel must allow on a node: device rules per cgroup, and which GPU use must end.

A device cgroup gates `open()`: a container or login session may open only the
GPU devices it is entitled to (the control devices always). Revocation is
more than a rule change, because a process that opened a device before the
rule keeps using it: the processes still holding a device they may no longer
use are warned, then ended when the grace period is over. A grace is for a
right that ended; use that was never granted (a device mapped in behind the
gateway's back, a process of a user without host access) is ended at once.

Pure: the agent gathers the facts (cgroups, holders from /proc, the GPUNode
spec) and applies the decision; here nothing reads a clock or a file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from controller.api.node import EnforcementMode, GPUNodeSpec, Revocation

Number = tuple[int, int]
"""A character device's (major, minor)."""

PlaceKind = Literal["container", "pod", "session", "other"]


@dataclass(frozen=True)
class SlotDevices:
    """The device nodes a slot needs: its GPU's node, and for a MIG slice its capability nodes."""

    uuid: str
    gpu_uuid: str
    numbers: frozenset[Number]


@dataclass(frozen=True)
class Place:
    """Somewhere processes run, with a device cgroup the agent may write."""

    path: str
    """The cgroup's path in the devices hierarchy."""
    kind: PlaceKind
    owner: str | None = None
    allocated: frozenset[str] = frozenset()
    """Slot UUIDs a container or pod was allocated."""
    uid: int | None = None
    """The user of a login session slice."""
    container_id: str | None = None


@dataclass(frozen=True)
class Holder:
    """A process with a GPU device open."""

    pid: int
    start_ticks: int
    number: Number
    place: Place
    owner: str | None


HolderKey = tuple[int, int, Number]
"""(pid, start ticks, device): one process's hold on one device."""


@dataclass(frozen=True)
class End:
    """GPU use to end: a process, or a whole container."""

    holder: Holder
    at: datetime
    """When to end it (the grace period's end)."""
    reason: str
    soft: bool = False
    """Warn only (soft revocation): never end."""
    never_granted: bool = False
    """Use no grant, reservation, allocation or host entry ever allowed: ended at once."""


@dataclass
class Decision:
    """Rules to write and use to end."""

    deny: dict[str, frozenset[Number]] = field(default_factory=dict)
    """Cgroup path -> GPU device numbers that must be denied there (the others allowed)."""
    ends: list[End] = field(default_factory=list)
    would_deny: dict[str, frozenset[Number]] = field(default_factory=dict)
    """What Audit mode would have denied."""
    entitled_holders: set[HolderKey] = field(default_factory=set)
    """Holders whose use is allowed now (the agent remembers them: if their right ends
    later without a revocation entry, they still get the grace)."""


def _live(revocation: Revocation, now: datetime) -> bool:
    return revocation.until > now


def _revoked(
    spec: GPUNodeSpec,
    owner: str | None,
    slot: str,
    gpu: str,
    now: datetime,
    *,
    effective_only: bool,
) -> Revocation | None:
    for revocation in spec.revocations or ():
        if revocation.user != owner or not _live(revocation, now):
            continue
        if effective_only and revocation.effective_at > now:
            continue
        covered = (
            revocation.device_uuids is None
            or slot in revocation.device_uuids
            or (gpu in revocation.device_uuids)
        )
        if covered:
            return revocation
    return None


def host_slots(
    spec: GPUNodeSpec, user: str | None, slots: Iterable[SlotDevices], now: datetime
) -> frozenset[str]:
    """Slots a user may open on the host itself: active Host entries (all GPUs when unlisted)."""
    allowed: set[str] = set()
    for entry in spec.host_access or ():
        if entry.user != user or (entry.until is not None and entry.until <= now):
            continue
        for slot in slots:
            if (
                entry.device_uuids is None
                or slot.uuid in entry.device_uuids
                or (slot.gpu_uuid in entry.device_uuids)
            ):
                allowed.add(slot.uuid)
    return frozenset(allowed)


def reserved_for(spec: GPUNodeSpec, user: str | None, now: datetime) -> frozenset[str]:
    """Devices held for ``user`` right now by reserving grants."""
    return frozenset(
        r.device_uuid
        for r in spec.reservations or ()
        if r.user == user and (r.from_ is None or r.from_ <= now) and now < r.until
    )


def entitled(
    place: Place, spec: GPUNodeSpec, slots: Sequence[SlotDevices], now: datetime
) -> frozenset[str]:
    """The slots a place may open now, revocations that took effect removed.

    A container or pod may use what it was allocated (by the gateway or the device
    plugin) and what is reserved for its owner now; a login session what the
    owner's host access covers. A revocation closes a slot to new opens at once
    (`_closes`); its holders are ended when it takes effect (`decide`).
    """
    if place.kind in ("container", "pod"):
        candidates = place.allocated | reserved_for(spec, place.owner, now)
    elif place.kind == "session":
        candidates = host_slots(spec, place.owner, slots, now)
    else:
        candidates = frozenset()
    by_uuid = {s.uuid: s for s in slots}
    return frozenset(
        uuid
        for uuid in candidates
        if uuid in by_uuid and not _closes(spec, place.owner, by_uuid[uuid], now)
    )


def _closes(spec: GPUNodeSpec, owner: str | None, slot: SlotDevices, now: datetime) -> bool:
    """Whether a revocation closes the slot to new opens now.

    A hard revocation closes it at once, even during its grace: the grace is for the
    processes already holding the device to finish, not for new work. A soft one
    (warn only) closes it only once it takes effect.
    """
    revocation = _revoked(spec, owner, slot.uuid, slot.gpu_uuid, now, effective_only=False)
    return revocation is not None and (not revocation.soft or revocation.effective_at <= now)


def allowed_numbers(
    slots: Sequence[SlotDevices], entitled_slots: frozenset[str]
) -> frozenset[Number]:
    return frozenset(n for s in slots if s.uuid in entitled_slots for n in s.numbers)


def creation_numbers(
    place: Place,
    *,
    spec: GPUNodeSpec,
    mode: EnforcementMode,
    slots: Sequence[SlotDevices],
    control: frozenset[Number],
    now: datetime,
) -> frozenset[Number] | None:
    """The GPU device numbers a container being created may open; None when nothing is
    closed (Audit or Off mode).

    Its entitled slots' numbers, and the control devices (`nvidiactl`, `nvidia-uvm`)
    when it is entitled to any GPU: a container with no GPU needs no driver either.
    """
    if mode != "Enforce":
        return None
    allowed = allowed_numbers(slots, entitled(place, spec, slots, now))
    return allowed | control if allowed else allowed


def ever_granted(
    holder: Holder, spec: GPUNodeSpec, slots: Iterable[SlotDevices], now: datetime
) -> bool:
    """Whether the spec shows a right to this use that has since ended (or not yet begun
    to end): an allocation, a reservation that began, or a host entry, expired or not.

    Revocations are judged before this (they carry their own deadline).
    """
    place = holder.place
    for slot in slots:
        if holder.number not in slot.numbers:
            continue
        ids = {slot.uuid, slot.gpu_uuid}
        if place.kind in ("container", "pod"):
            if slot.uuid in place.allocated:
                return True
            if any(
                r.user == holder.owner
                and r.device_uuid in ids
                and (r.from_ is None or r.from_ <= now)
                for r in spec.reservations or ()
            ):
                return True
        elif any(
            entry.user == holder.owner
            and (entry.device_uuids is None or ids & set(entry.device_uuids))
            for entry in spec.host_access or ()
        ):
            return True
    return False


def _revocation_of(
    holder: Holder,
    serving: Sequence[SlotDevices],
    entitled_slots: frozenset[str],
    spec: GPUNodeSpec,
    now: datetime,
) -> Revocation | None:
    """The revocation that ends this hold, if any; ``serving``: the slots using its device.

    Several slots can share one device node (MIG slices all open their parent
    GPU's node). A hold the place is still entitled to through some slot is
    ended only when every such slot is revoked: revoking one slice must not
    warn or end the holder of its sibling on the shared node (the revoked
    slice's own process is caught by its capability node, which nobody shares).
    """
    justifying = [s for s in serving if s.uuid in entitled_slots]
    found = [
        _revoked(spec, holder.owner, s.uuid, s.gpu_uuid, now, effective_only=False)
        for s in justifying or serving
    ]
    if justifying:
        return found[0] if all(found) else None
    return next((r for r in found if r is not None), None)


def decide(
    *,
    spec: GPUNodeSpec,
    mode: EnforcementMode,
    slots: Sequence[SlotDevices],
    places: Sequence[Place],
    holders: Sequence[Holder],
    first_seen: Mapping[HolderKey, datetime],
    grace: timedelta,
    now: datetime,
    was_entitled: Set[HolderKey] = frozenset(),
) -> Decision:
    """Device rules for every place, and the holders that must go (and when).

    A revocation ends its holders at its own `effectiveAt`. Use whose right ended
    without one (an expired host entry or reservation; ``was_entitled``: holders seen
    allowed before) ends ``grace`` after ``first_seen`` says it was first seen
    unentitled. Use that was never granted ends now.
    """
    gpu_numbers = frozenset(n for s in slots for n in s.numbers)
    decision = Decision()
    for place in places:
        if place.kind == "other":
            continue
        deny = gpu_numbers - allowed_numbers(slots, entitled(place, spec, slots, now))
        if mode == "Enforce":
            decision.deny[place.path] = deny
        elif mode == "Audit":
            decision.would_deny[place.path] = deny
    entitled_by_place = {
        place: entitled(place, spec, slots, now) for place in {h.place for h in holders}
    }
    allowed_by_holder = {
        holder: holder.number in allowed_numbers(slots, entitled_by_place[holder.place])
        for holder in holders
        if holder.number in gpu_numbers
    }
    decision.entitled_holders = {
        (h.pid, h.start_ticks, h.number) for h, allowed in allowed_by_holder.items() if allowed
    }
    if mode != "Enforce":
        return decision
    by_number: dict[Number, list[SlotDevices]] = {}
    for slot in slots:
        for number in slot.numbers:
            by_number.setdefault(number, []).append(slot)
    for holder, allowed_now in allowed_by_holder.items():
        # A revocation covering this use, in force or still in its grace period, sets the
        # deadline and the softness: the holder is warned now and ended at `effectiveAt`.
        revocation = _revocation_of(
            holder, by_number[holder.number], entitled_by_place[holder.place], spec, now
        )
        if revocation is not None and (not allowed_now or revocation.effective_at > now):
            decision.ends.append(
                End(holder, revocation.effective_at, revocation.reason, soft=revocation.soft)
            )
        elif not allowed_now:
            key = (holder.pid, holder.start_ticks, holder.number)
            what = {
                "container": "its container was not allocated this GPU",
                "pod": "its pod was not allocated this GPU",
                "session": "its user has no host access to this GPU on this node",
                "other": "it runs outside any cgroup allowed to use GPUs",
            }[holder.place.kind]
            if key in was_entitled or ever_granted(holder, spec, by_number[holder.number], now):
                decision.ends.append(End(holder, first_seen.get(key, now) + grace, what))
            else:
                decision.ends.append(End(holder, now, f"never granted: {what}", never_granted=True))
    return decision
