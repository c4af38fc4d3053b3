"""A small Docker Engine API client over its unix socket: just what the agent reads.

The agent needs container identity (ID, name, labels, state), the GPU devices a
container was given (device requests and mapped device nodes) and, later, the
event stream. The official Python SDK would pull in much more than that for a
handful of GET requests.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote


class DockerError(RuntimeError):
    """The engine could not be reached or answered with an error."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


@dataclass(frozen=True)
class Container:
    """The facts the agent uses about one container."""

    id: str
    name: str
    labels: dict[str, str]
    state: str
    user: str = ""
    """`Config.User` as given at creation (may be empty, a name or a UID)."""
    device_ids: tuple[str, ...] = ()
    """GPU IDs from `HostConfig.DeviceRequests` (UUIDs or indexes, as requested)."""
    device_paths: tuple[str, ...] = ()
    """Host paths of `HostConfig.Devices` mappings."""
    gpu_request_all: bool = False
    """A device request for all GPUs (`--gpus all`)."""
    started_at: datetime | None = None
    env: tuple[str, ...] = field(default=())
    pid: int = 0
    """The main process while running (0 when stopped)."""
    running: bool = False


class DockerClient:
    """Talks to one engine socket. Every call opens its own connection (thread-safe)."""

    def __init__(self, socket_path: str, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _get(self, path: str) -> Any:
        connection = _UnixConnection(self.socket_path, self.timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
        except OSError as error:
            raise DockerError(f"docker engine at {self.socket_path}: {error}") from error
        finally:
            connection.close()
        if response.status >= 400:
            raise DockerError(f"GET {path}: {response.status} {body[:200]!r}")
        return json.loads(body)

    def ping(self) -> bool:
        try:
            connection = _UnixConnection(self.socket_path, self.timeout)
            connection.request("GET", "/_ping")
            return connection.getresponse().status == 200
        except OSError:
            return False

    def container_ids(self, running_only: bool = False) -> list[str]:
        """IDs of containers (all of them, or only the running ones)."""
        query = "" if running_only else "?all=1"
        return [c["Id"] for c in self._get(f"/containers/json{query}")]

    def identity(self, container_id: str) -> tuple[str, dict[str, str]] | None:
        """(name, labels) of a container from the engine's listing; None when it is unknown.

        The listing, unlike inspect, reads the engine's in-memory index and does not
        wait for the container's lock, which a start holds while the runtime creates
        the container: the runtime wrapper's question is answered from here.
        """
        filters = quote(json.dumps({"id": [container_id]}))
        for entry in self._get(f"/containers/json?all=1&filters={filters}"):
            if entry.get("Id") == container_id:
                names = entry.get("Names") or [""]
                return str(names[0]).lstrip("/"), dict(entry.get("Labels") or {})
        return None

    def stop(self, container_id: str, grace_s: int) -> None:
        """Stop a container: SIGTERM, then SIGKILL after ``grace_s`` (the engine does both)."""
        connection = _UnixConnection(self.socket_path, self.timeout + grace_s)
        try:
            connection.request("POST", f"/containers/{quote(container_id)}/stop?t={grace_s}")
            response = connection.getresponse()
            body = response.read()
        except OSError as error:
            raise DockerError(f"stop {container_id[:12]}: {error}") from error
        finally:
            connection.close()
        if response.status not in (204, 304, 404):
            raise DockerError(f"stop {container_id[:12]}: {response.status} {body[:200]!r}")

    def events(self, since: float | None = None) -> Iterator[dict[str, Any]]:
        """Container events as they happen (start, restart, die ...); ends when the engine does."""
        query = '?filters={"type":["container"]}'
        if since is not None:
            query += f"&since={since:.3f}"
        connection = _UnixConnection(self.socket_path, timeout=None)  # type: ignore[arg-type]
        try:
            connection.request("GET", f"/events{quote(query, safe='?=&')}")
            response = connection.getresponse()
            while True:
                line = response.readline()
                if not line:
                    return
                yield json.loads(line)
        except OSError as error:
            raise DockerError(f"events: {error}") from error
        finally:
            connection.close()

    def inspect(self, container_id: str) -> Container | None:
        """One container's facts, or None when it no longer exists."""
        try:
            data = self._get(f"/containers/{quote(container_id)}/json")
        except DockerError as error:
            if " 404 " in str(error):
                return None
            raise
        return parse_container(data)


def parse_container(data: dict[str, Any]) -> Container:
    """The agent's view of a `GET /containers/{id}/json` answer."""
    config = data.get("Config") or {}
    host = data.get("HostConfig") or {}
    state = data.get("State") or {}
    ids: list[str] = []
    request_all = False
    for request in host.get("DeviceRequests") or []:
        capabilities = [c for group in request.get("Capabilities") or [] for c in group]
        if "gpu" not in capabilities and request.get("Driver") != "nvidia":
            continue
        if request.get("Count") == -1:
            request_all = True
        ids += request.get("DeviceIDs") or []
    started = state.get("StartedAt") or ""
    return Container(
        id=data["Id"],
        name=str(data.get("Name", "")).lstrip("/"),
        labels=dict(config.get("Labels") or {}),
        state=str(state.get("Status", "")),
        user=str(config.get("User") or ""),
        device_ids=tuple(ids),
        device_paths=tuple(d.get("PathOnHost", "") for d in host.get("Devices") or []),
        gpu_request_all=request_all,
        started_at=parse_time(started),
        env=tuple(config.get("Env") or ()),
        pid=int(state.get("Pid") or 0),
        running=bool(state.get("Running")),
    )


def parse_time(text: str) -> datetime | None:
    """A Docker timestamp (RFC 3339 with nanoseconds) as a datetime; None for Go's zero time."""
    if not text or text.startswith("0001-"):
        return None
    # Docker writes nanoseconds; Python takes microseconds.
    head, _, tail = text.partition(".")
    fraction = "".join(ch for ch in tail if ch.isdigit())[:6]
    zone = tail[len("".join(ch for ch in tail if ch.isdigit())) :] or "Z"
    return datetime.fromisoformat(f"{head}.{fraction or '0'}{zone.replace('Z', '+00:00')}")
