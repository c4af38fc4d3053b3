"""The agent's answer to the runtime wrapper: which GPU devices a container may open.

`ds01-runc` (`controller.agent.ociwrapper`), Docker's default runtime on a DS01
host, asks here on every `runc create` before the container's first process exists:
"container <id>, run as <uid>, mapping these device numbers: what may it open?" The
answer comes from the same pure entitlement the enforcement passes apply later
(`policy.enforcement.creation_numbers`): what the gateway signed, what a grant
reserves for the owner, minus revocations in force. The wrapper writes it into the
bundle's device rules, so there is no window between start and the agent's rule.

Two files in ``directory`` (root-only, mode 0700):

- `agent.sock` (0600): one JSON line in, one JSON line out per connection;
- `gpu-devices.json`: every GPU device number and the enforcement mode, kept
  current, for the wrapper to fail closed with when the agent does not answer.

The container is looked up in the engine's listing (`DockerClient.identity`),
never inspected: dockerd holds the container's lock while the runtime creates it.
"""

from __future__ import annotations

import json
import os
import socketserver
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from controller.agent.agent import Agent
from controller.agent.docker import DockerClient, DockerError
from controller.agent.enforcer import Notify, slot_devices
from controller.agent.inventory import Inventory
from controller.agent.scan import read_passwd
from controller.agent.trust import verify
from controller.policy.attribution import SYSTEM_NAMESPACES
from controller.policy.enforcement import Number, Place, creation_numbers

log = structlog.get_logger("ds01.agent.runtime")

SOCKET = "agent.sock"
TABLE = "gpu-devices.json"
LOOKUP_TIMEOUT_S = 1.5
"""How long the engine's listing may take: well inside the wrapper's own timeout."""


class RequestError(ValueError):
    """A question the gate cannot read."""


PodRef = tuple[str, str]
"""(namespace, name) of the pod a CRI container belongs to."""


def read_pod(body: Mapping[str, Any]) -> PodRef | None:
    """The pod the CRI front named (containerd's annotations), or None."""
    pod = body.get("pod")
    if pod is None:
        return None
    if not isinstance(pod, Mapping) or not all(
        isinstance(pod.get(k), str) and pod.get(k) for k in ("namespace", "name")
    ):
        raise RequestError("pod: must name the pod's namespace and name")
    return str(pod["namespace"]), str(pod["name"])


def read_request(body: Mapping[str, Any]) -> tuple[str, int | None, list[Number]]:
    """(container id, uid, mapped character device numbers) from the wrapper's question."""
    container = body.get("container")
    if not isinstance(container, str) or not container:
        raise RequestError("container: must be the container's id")
    uid = body.get("uid")
    if uid is not None and (isinstance(uid, bool) or not isinstance(uid, int) or uid < 0):
        raise RequestError(f"uid: must be a non-negative integer or null, not {uid!r}")
    mapped = body.get("mapped") or []
    if not isinstance(mapped, list) or not all(
        isinstance(n, list) and len(n) == 2 and all(type(x) is int for x in n) for n in mapped
    ):
        raise RequestError("mapped: must be a list of [major, minor] pairs")
    return container, uid, [(n[0], n[1]) for n in mapped]


def gpu_numbers(inventory: Inventory) -> frozenset[Number]:
    """Every GPU device number: GPUs, MIG capability nodes, control devices."""
    numbers = {n for slot in slot_devices(inventory) for n in slot.numbers}
    numbers |= {(d.major, d.minor) for d in inventory.control}
    return frozenset(numbers)


class RuntimeGate:
    """Serves `agent.sock` and keeps `gpu-devices.json` current."""

    def __init__(
        self,
        directory: Path,
        agent: Agent,
        docker: DockerClient | None,
        key: bytes | None,
        notify: Notify,
    ) -> None:
        self.directory = directory
        self.agent = agent
        # Its own client: the lookup must give up well before the wrapper does.
        self.docker = DockerClient(docker.socket_path, timeout=LOOKUP_TIMEOUT_S) if docker else None
        self.key = key
        self.notify = notify
        self._published: tuple[str, frozenset[Number]] | None = None
        self._lock = threading.Lock()
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    # -- serving -------------------------------------------------------------------

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        path = self.directory / SOCKET
        path.unlink(missing_ok=True)
        gate = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = 10

            def handle(self) -> None:
                answer = gate.answer_line(self.rfile.readline(65536))
                self.wfile.write(json.dumps(answer).encode() + b"\n")

        umask = os.umask(0o177)
        try:
            server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        finally:
            os.umask(umask)
        server.daemon_threads = True
        self._server = server
        self.publish()
        self._thread = threading.Thread(
            target=server.serve_forever, name="runtime-gate", daemon=True
        )
        self._thread.start()
        log.info("answering the runtime wrapper", socket=str(path))

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            (self.directory / SOCKET).unlink(missing_ok=True)
            self._server = None

    # -- the table the wrapper falls back on -------------------------------------------

    def publish(self) -> None:
        """Write `gpu-devices.json` when the mode or the GPU numbers changed."""
        inventory = self._inventory()
        current = (self.agent.mode, gpu_numbers(inventory) if inventory else frozenset())
        with self._lock:
            if current == self._published:
                return
            body = {"mode": current[0], "numbers": sorted(current[1])}
            tmp = self.directory / (TABLE + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, json.dumps(body).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.directory / TABLE)
            self._published = current

    def _inventory(self) -> Inventory | None:
        if self.agent.inventory is not None:
            return self.agent.inventory
        try:
            return self.agent.source.inventory()
        except Exception:  # NVML away: the table keeps the last numbers
            return None

    # -- answering ------------------------------------------------------------------

    def answer_line(self, line: bytes) -> dict[str, Any]:
        try:
            body = json.loads(line)
            if not isinstance(body, dict):
                raise RequestError("the question must be a JSON object")
            return self.answer(*read_request(body), pod=read_pod(body))
        except (RequestError, json.JSONDecodeError) as error:
            return {"error": str(error)}
        except Exception as error:  # the wrapper then fails closed
            log.exception("cannot answer the runtime wrapper")
            return {"error": f"agent error: {error}"}

    def answer(
        self, container: str, uid: int | None, mapped: list[Number], pod: PodRef | None = None
    ) -> dict[str, Any]:
        """What ``container`` may open; `allowed` is null when nothing is closed (Audit, Off,
        or a pod in a system namespace, which the passes leave alone too)."""
        now = datetime.now(UTC)
        inventory = self._inventory()
        if inventory is None:
            return {"error": "no GPU inventory (NVML unavailable)"}
        self.publish()
        numbers = gpu_numbers(inventory)
        mode = self.agent.mode
        spec = self.agent.policy.spec if self.agent.policy is not None else None
        if spec is None or mode != "Enforce" or (pod is not None and pod[0] in SYSTEM_NAMESPACES):
            return {"mode": mode, "numbers": sorted(numbers), "allowed": None}
        if pod is not None:
            place, how = self._pod_place(container, pod)
        else:
            place, how = self._place(container, uid, mapped, inventory)
        slots = slot_devices(inventory)
        control = frozenset((d.major, d.minor) for d in inventory.control)
        allowed = creation_numbers(
            place, spec=spec, mode=mode, slots=slots, control=control, now=now
        )
        assert allowed is not None  # Enforce
        closed = sorted((set(mapped) & numbers) - allowed)
        if closed:
            devices = [f"{major}:{minor}" for major, minor in closed]
            self.notify(
                "access.closed_at_create",
                place.owner,
                f"container {container[:12]} mapped GPU devices {', '.join(devices)} it is not "
                "entitled to: closed before its first process ran",
                "Warning",
                {"container": container, "devices": devices, "owner_from": how},
            )
        return {
            "mode": mode,
            "numbers": sorted(numbers),
            "allowed": sorted(allowed),
            "owner": place.owner,
        }

    def _pod_place(self, container: str, pod: PodRef) -> tuple[Place, str]:
        """A pod's container as the passes see it: the account of its namespace, and the
        devices the kubelet allocated to the pod (PodResources; it allocates at
        admission, before any container of the pod is created)."""
        by_namespace, allocations = self.agent.allocations_now()
        return Place(
            path="",
            kind="pod",
            owner=by_namespace.get(pod[0]),
            allocated=allocations.get(pod, frozenset()),
            container_id=container,
        ), "pod namespace"

    def _place(
        self, container: str, uid: int | None, mapped: list[Number], inventory: Inventory
    ) -> tuple[Place, str]:
        """The container as the enforcement passes will see it: owner and allocation."""
        identity = None
        if self.docker is not None:
            try:
                identity = self.docker.identity(container)
            except DockerError as error:  # unknown: judged by its UID, like any unsigned one
                log.warning("engine listing failed", container=container[:12], error=str(error))
        stamp = verify(self.key, *identity) if identity is not None else None
        owner: str | None
        if stamp is not None:
            owner, how = stamp.owner, "gateway signature"
        else:
            login = read_passwd(self.agent.passwd).get(uid) if uid is not None else None
            by_login, _, _ = self.agent.accounts_view()
            owner, how = (by_login.get(login) if login else None), "process uid"
        known = {slot.uuid for slot in inventory.slots()}
        if stamp is not None:
            allocated = frozenset(d for d in stamp.devices if d in known)
        elif self.key is None:
            # No gateway on this host (DS01's model): a mapped GPU is its allocation.
            by_number = {(g.device.major, g.device.minor): g.uuid for g in inventory.gpus}
            allocated = frozenset(by_number[n] for n in mapped if n in by_number) & known
        else:
            allocated = frozenset()
        return Place(
            path="", kind="container", owner=owner, allocated=allocated, container_id=container
        ), how
