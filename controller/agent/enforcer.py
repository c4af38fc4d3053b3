"""Turning the GPUNode spec into kernel state, and ending GPU use that lost its right.

One pass: find the places (containers, pod containers, login-session slices),
the GPU device holders (/proc fds), ask `policy.enforcement.decide`, write the
device rules, warn the holders that must go, and end those whose grace is over
(a container is stopped through the engine with its type's SIGTERM grace; any
other process gets SIGTERM, then SIGKILL if it outlives `kill_grace`).

Passes run on every spec change (watch), every container event (the runtime
re-creates a container's rules when it restarts) and periodically, because
something else (systemd, an admin) may have rewritten the rules meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import structlog

from controller.agent.cgroups import DeviceCgroups
from controller.agent.docker import Container, DockerClient, DockerError
from controller.agent.holders import holders as find_holders
from controller.agent.inventory import Inventory
from controller.agent.procfs import ProcReader, placement
from controller.agent.scan import allocated
from controller.agent.trust import verify
from controller.api.node import EnforcementMode, GPUNodeSpec
from controller.policy.attribution import SYSTEM_NAMESPACES, is_system
from controller.policy.enforcement import Decision, End, Holder, Number, Place, SlotDevices, decide

log = structlog.get_logger("ds01.agent.enforce")

Notify = Callable[[str, str | None, str, str, dict[str, object]], None]
"""(event type, user, message, Event type Normal|Warning, details)."""


def slot_devices(inventory: Inventory) -> list[SlotDevices]:
    """Every slot's device numbers: the GPU node, plus capability nodes for a MIG slice."""
    return [
        SlotDevices(s.uuid, s.gpu.uuid, frozenset((d.major, d.minor) for d in s.devices))
        for s in inventory.slots()
    ]


@dataclass
class Views:
    """What enforcement reads besides the kernel: identities and allocations."""

    logins: Mapping[int, str]
    accounts_by_login: Mapping[str, str]
    accounts_by_namespace: Mapping[str, str]
    pods: Mapping[str, tuple[str, str]]
    pod_devices: Mapping[tuple[str, str], frozenset[str]]
    pod_devices_current: bool = True
    """False when the kubelet did not answer this pass (`pod_devices` is an older answer)."""


@dataclass
class Outcome:
    """What one pass did."""

    decision: Decision
    written: int = 0
    warned: list[End] = field(default_factory=list)
    ended: list[End] = field(default_factory=list)


@dataclass
class Enforcer:
    cgroups: DeviceCgroups
    proc: ProcReader
    proc_root: Path
    docker: DockerClient | None
    key: bytes | None
    notify: Notify
    grace: timedelta = timedelta(minutes=5)
    """Grace for GPU use whose right ended with no revocation entry (revocations carry their
    own; use that was never granted gets none)."""
    kill_grace: timedelta = timedelta(seconds=10)
    stop_grace_s: int = 60
    _first_seen: dict[tuple[int, int, Number], datetime] = field(default_factory=dict)
    _warned: set[tuple[int, int, Number]] = field(default_factory=set)
    _entitled_seen: set[tuple[int, int, Number]] = field(default_factory=set)
    """Holders seen allowed in an earlier pass: if their right ends, they get the grace."""
    _terms: dict[tuple[int, int], datetime] = field(default_factory=dict)
    _stopping: set[str] = field(default_factory=set)
    _containers: dict[str, Container | None] = field(default_factory=dict)
    gpu_containers: list[tuple[Container, str | None, frozenset[str]]] = field(default_factory=list)
    """Running containers with GPUs from the last pass: (container, owner, devices)."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _hands_off: list[str] = field(default_factory=list)
    """Cgroup paths of pods left alone this pass (system namespaces, not known yet)."""
    unknown_pods: bool = False
    """The last pass met a pod cgroup the pod list does not name: read it again."""

    # -- places ----------------------------------------------------------------

    def _docker_places(self, inventory: Inventory, views: Views) -> list[Place]:
        if self.docker is None:
            return []
        try:
            running = set(self.docker.container_ids(running_only=True))
        except DockerError as error:
            log.warning(
                "docker engine unavailable; keeping container rules as they are", error=str(error)
            )
            return []
        for gone in self._containers.keys() - running:
            del self._containers[gone]
        places = []
        seen: list[tuple[Container, str | None, frozenset[str]]] = []
        for container_id in sorted(running):
            container = self._containers.get(container_id)
            info = self.proc.process(container.pid) if container and container.pid else None
            if info is None:
                # New, or restarted since we looked (its main process changed): ask again.
                try:
                    container = self._containers[container_id] = self.docker.inspect(container_id)
                except DockerError:
                    continue
                if container is None or not container.pid:
                    continue
                info = self.proc.process(container.pid)
                if info is None:
                    continue
            assert container is not None  # info was found through it
            stamp = verify(self.key, container.name, container.labels)
            login = views.logins.get(info.uid)
            owner = (
                stamp.owner if stamp else (views.accounts_by_login.get(login) if login else None)
            )
            devices = allocated(
                container,
                inventory,
                stamp.devices if stamp else (),
                trusted_only=self.key is not None,
            )
            places.append(
                Place(
                    path=info.cgroup.path,
                    kind="container",
                    owner=owner,
                    allocated=devices,
                    container_id=container.id,
                )
            )
            if devices:
                seen.append((container, owner, devices))
        self.gpu_containers = seen
        return places

    def _pod_places(self, views: Views) -> list[Place]:
        """Pod containers with their owner and allocation.

        Two kinds are left alone, their rules as the runtime wrote them and their
        processes never ended (`_hands_off`): pods in system namespaces (the
        agent's own, a driver or monitoring DaemonSet; attribution leaves them out
        too), and pods this agent does not know yet. The pod list is refreshed on
        its own clock, so a pod the kubelet has just started is briefly unknown;
        judged as nobody's it would lose the GPU it was allocated and its process
        would be ended as never granted. The next pass knows it (`reread_views`).
        Likewise a pod the last PodResources answer does not name while the kubelet
        does not answer now: its allocation is unknown, not empty.
        """
        places: list[Place] = []
        hands_off: list[str] = []
        self._hands_off = hands_off
        self.unknown_pods = False
        root = self.cgroups.root / "kubepods"
        if not root.exists():
            return places
        for pod_dir in root.rglob("pod*"):
            if not pod_dir.is_dir():
                continue
            for container_dir in pod_dir.iterdir():
                if not container_dir.is_dir():
                    continue
                path = "/" + str(container_dir.relative_to(self.cgroups.root))
                where = placement(path)
                if where.pod_uid is None or where.container_id is None:
                    continue
                known = views.pods.get(where.pod_uid)
                if (
                    known is None
                    or known[0] in SYSTEM_NAMESPACES
                    or (not views.pod_devices_current and known not in views.pod_devices)
                ):
                    hands_off.append(path)
                    if known is None:
                        self.unknown_pods = True
                    continue
                namespace, name = known
                places.append(
                    Place(
                        path=path,
                        kind="pod",
                        owner=views.accounts_by_namespace.get(namespace),
                        allocated=views.pod_devices.get((namespace, name), frozenset()),
                    )
                )
        return places

    def _session_places(self, views: Views) -> list[Place]:
        places = []
        for path, uid in self.cgroups.sessions():
            login = views.logins.get(uid)
            places.append(
                Place(
                    path=path,
                    kind="session",
                    uid=uid,
                    owner=views.accounts_by_login.get(login) if login else None,
                )
            )
        return places

    def _place_of(
        self, pid: int, places: list[Place], views: Views
    ) -> tuple[Place, int, int] | None:
        info = self.proc.process(pid)
        if info is None:
            return None
        path = info.cgroup.path
        if any(path == p or path.startswith(p.rstrip("/") + "/") for p in self._hands_off):
            return None
        for place in places:
            if path == place.path or path.startswith(place.path.rstrip("/") + "/"):
                return place, info.start_ticks, info.uid
        if info.uid == 0 or is_system(info.comm, info.uid):
            return None  # root's and system daemons' processes: reported, not ended
        login = views.logins.get(info.uid)
        owner = views.accounts_by_login.get(login) if login else None
        return Place(path=path, kind="other", owner=owner, uid=info.uid), info.start_ticks, info.uid

    # -- one pass ----------------------------------------------------------------

    def run(
        self,
        spec: GPUNodeSpec,
        mode: EnforcementMode,
        inventory: Inventory,
        views: Views,
        now: datetime,
    ) -> Outcome:
        with self._lock:
            return self._run(spec, mode, inventory, views, now)

    def _run(
        self,
        spec: GPUNodeSpec,
        mode: EnforcementMode,
        inventory: Inventory,
        views: Views,
        now: datetime,
    ) -> Outcome:
        slots = slot_devices(inventory)
        numbers = frozenset(n for s in slots for n in s.numbers)
        places = (
            self._docker_places(inventory, views)
            + self._pod_places(views)
            + self._session_places(views)
        )
        held: list[Holder] = []
        seen: set[tuple[int, int, Number]] = set()
        for pid, devices in find_holders(self.proc_root, numbers).items():
            found = self._place_of(pid, places, views)
            if found is None:
                continue
            place, start, _ = found
            for number in devices:
                held.append(Holder(pid, start, number, place, place.owner))
                seen.add((pid, start, number))
        for key in self._first_seen.keys() - seen:
            del self._first_seen[key]
            self._warned.discard(key)
        decision = decide(
            spec=spec,
            mode=mode,
            slots=slots,
            places=places,
            holders=held,
            first_seen=self._first_seen,
            grace=self.grace,
            now=now,
            was_entitled=self._entitled_seen,
        )
        self._entitled_seen = (self._entitled_seen & seen) | decision.entitled_holders
        for end in decision.ends:
            self._first_seen.setdefault(
                (end.holder.pid, end.holder.start_ticks, end.holder.number), now
            )
        outcome = Outcome(decision)
        for path, deny in decision.deny.items():
            if self.cgroups.apply(path, sorted(deny), sorted(numbers - deny)):
                outcome.written += 1
        for end in decision.ends:
            self._handle(end, now, outcome)
        self._finish_terms(now)
        return outcome

    def _handle(self, end: End, now: datetime, outcome: Outcome) -> None:
        holder = end.holder
        key = (holder.pid, holder.start_ticks, holder.number)
        device = f"{holder.number[0]}:{holder.number[1]}"
        if end.never_granted:
            # No grace: there is no right that ended, so nothing to wind down.
            if key not in self._warned:
                self._warned.add(key)
                tell_terminals(
                    holder.place.uid if holder.place.kind != "container" else None,
                    f"GPU use by process {holder.pid} on device {device} ended: {end.reason}",
                )
            outcome.ended.append(end)
            self._end(end, now)
            return
        if key not in self._warned:
            self._warned.add(key)
            outcome.warned.append(end)
            left = max(0, int((end.at - now).total_seconds()))
            verb = (
                "will not be ended (soft revocation)" if end.soft else f"will be ended in {left} s"
            )
            message = (
                f"GPU access ended for process {holder.pid} ({holder.place.kind}) on device "
                f"{device}: {end.reason}; it {verb}"
            )
            self.notify(
                "access.revoke_warning",
                holder.owner,
                message,
                "Warning",
                {
                    "pid": holder.pid,
                    "device": device,
                    "at": end.at.isoformat(),
                    "place": holder.place.path,
                    "soft": end.soft,
                },
            )
            tell_terminals(holder.place.uid if holder.place.kind != "container" else None, message)
        if end.soft or now < end.at:
            return
        outcome.ended.append(end)
        self._end(end, now)

    def _end(self, end: End, now: datetime) -> None:
        holder = end.holder
        if holder.place.kind == "container" and holder.place.container_id and self.docker:
            self._stop_container(holder.place.container_id, end)
        else:
            self._terminate(holder.pid, holder.start_ticks, end, now)

    def _stop_container(self, container_id: str, end: End) -> None:
        if container_id in self._stopping:
            return
        self._stopping.add(container_id)
        docker = self.docker
        assert docker is not None

        def stop() -> None:
            try:
                docker.stop(container_id, self.stop_grace_s)
            except DockerError as error:
                log.warning(
                    "could not stop container", container=container_id[:12], error=str(error)
                )
            finally:
                self._stopping.discard(container_id)

        threading.Thread(target=stop, name=f"stop-{container_id[:12]}", daemon=True).start()
        self.notify(
            _ended_event(end),
            end.holder.owner,
            f"stopped container {container_id[:12]}: {end.reason}",
            "Warning",
            {"container": container_id, "reason": end.reason, "neverGranted": end.never_granted},
        )

    def _terminate(self, pid: int, start: int, end: End, now: datetime) -> None:
        if (pid, start) in self._terms:
            return
        if not _same(self.proc, pid, start):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        self._terms[(pid, start)] = now + self.kill_grace
        self.notify(
            _ended_event(end),
            end.holder.owner,
            f"ended process {pid} holding a GPU: {end.reason}",
            "Warning",
            {
                "pid": pid,
                "reason": end.reason,
                "signal": "SIGTERM",
                "neverGranted": end.never_granted,
            },
        )

    def _finish_terms(self, now: datetime) -> None:
        for (pid, start), deadline in list(self._terms.items()):
            if not _same(self.proc, pid, start):
                del self._terms[(pid, start)]
            elif now >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                del self._terms[(pid, start)]


def _ended_event(end: End) -> str:
    """`access.revoke` for a right that ended, `access.end_unentitled` for one never granted."""
    return "access.end_unentitled" if end.never_granted else "access.revoke"


def _same(proc: ProcReader, pid: int, start: int) -> bool:
    """Whether ``pid`` is still the process that started at ``start`` (not a reused pid)."""
    try:
        stat = Path(f"{proc.root}/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19]) == start and fields[0] != "Z"


def tell_terminals(uid: int | None, message: str, dev_pts: Path = Path("/dev/pts")) -> int:
    """Write ``message`` to the user's terminals, as DS01 did; best effort. How many got it."""
    if uid is None:
        return 0
    told = 0
    for tty in dev_pts.glob("[0-9]*"):
        try:
            if tty.stat().st_uid != uid:
                continue
            with open(tty, "w") as out:
                out.write(f"\r\n[ds01] {message}\r\n")
            told += 1
        except OSError:
            continue
    return told
