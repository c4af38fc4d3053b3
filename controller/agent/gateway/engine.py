"""The gateway's own questions to the engine: which containers exist, whose they are.

Ownership is never remembered by the gateway: it is read back from the
container's labels, which the gateway signed when it created the container
(`controller.agent.trust`). A restarted gateway therefore knows everything it
knew before, and a label a user wrote (or copied) proves nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from controller.agent.docker import parse_time
from controller.agent.gateway.http import (
    HEAD_LIMIT,
    Head,
    HttpError,
    read_body,
    read_head,
    response_framing,
)
from controller.agent.trust import verify
from controller.api import names
from controller.policy.docker.facts import Network, Volume

RESPONSE_LIMIT = 256 << 20
"""Largest answer the gateway reads whole (a listing of every container on a busy host)."""
IDLE_CONNECTIONS = 16

HOLDING_STATES = frozenset({"created", "running", "paused", "restarting", "removing"})
"""States in which a container keeps its GPUs without question."""


class EngineError(RuntimeError):
    """The engine could not be asked (gone, or answered with something that is not HTTP)."""


@dataclass(frozen=True)
class Owned:
    """A container as the gateway judges it."""

    id: str
    name: str
    owner: str | None
    """From labels the gateway signed; None for containers nobody (but admins) owns."""
    devices: tuple[str, ...]
    state: str
    host_mounts: bool = False
    """Whether it bind-mounts host paths (known from an inspect, not from a listing)."""
    finished_at: datetime | None = None
    labels: Mapping[str, str] | None = None
    mapped: tuple[Mapping[str, str], ...] = ()
    """`HostConfig.Devices` as the engine holds them (from an inspect)."""
    bind_sources: tuple[str, ...] = ()
    """Host paths it bind-mounts (from an inspect)."""


def canonical_name(names: list[str]) -> str:
    """A listing's `Names` hold the name and, for links, `/other/alias`; the name has one slash."""
    for name in names:
        if name.count("/") <= 1:
            return name.lstrip("/")
    return names[0].lstrip("/") if names else ""


class Engine:
    """Requests to the engine's socket over a few kept-alive connections."""

    def __init__(self, socket_path: str, key: bytes) -> None:
        self.socket_path = socket_path
        self.key = key
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_unix_connection(self.socket_path, limit=HEAD_LIMIT)
        except OSError as error:
            raise EngineError(f"docker engine at {self.socket_path}: {error}") from error

    async def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One request; (status, body). Raises EngineError when the engine cannot be asked."""
        for attempt in (0, 1):
            reused = bool(self._idle) and attempt == 0
            reader, writer = self._idle.pop() if reused else await self.connect()
            head = Head((method, path, "HTTP/1.1"), [("Host", "docker")])
            if body is not None:
                head.headers += [
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(body))),
                ]
            try:
                writer.write(head.encode() + (body or b""))
                response = await read_head(reader)
                if response is None:
                    raise HttpError("the engine closed the connection")
                framing, length = response_framing(response, method)
                data = await read_body(reader, framing, length, RESPONSE_LIMIT)
            except (OSError, HttpError, asyncio.IncompleteReadError) as error:
                writer.close()
                if reused:
                    continue  # a kept-alive connection the engine had closed: try a new one
                raise EngineError(f"{method} {path}: {error}") from error
            if framing == "close" or response.wants_close() or len(self._idle) >= IDLE_CONNECTIONS:
                writer.close()
            else:
                self._idle.append((reader, writer))
            return response.status, data
        raise EngineError(f"{method} {path}: no answer")

    async def json(self, method: str, path: str, payload: object = None) -> tuple[int, Any]:
        body = json.dumps(payload).encode() if payload is not None else None
        status, data = await self.call(method, path, body)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, None

    def _owner(self, name: str, labels: Mapping[str, str]) -> tuple[str | None, tuple[str, ...]]:
        stamp = verify(self.key, name, labels)
        return (stamp.owner, stamp.devices) if stamp is not None else (None, ())

    async def container(self, ref: str) -> Owned | None:
        """The container ``ref`` (ID, ID prefix or name) names; None when there is none."""
        status, data = await self.json("GET", f"/containers/{quote(ref, safe='')}/json")
        if status == 404 or not isinstance(data, dict):
            return None
        if status >= 400:
            raise EngineError(f"inspect {ref}: {status}")
        name = str(data.get("Name", "")).lstrip("/")
        labels = dict((data.get("Config") or {}).get("Labels") or {})
        owner, devices = self._owner(name, labels)
        state = data.get("State") or {}
        return Owned(
            id=str(data["Id"]),
            name=name,
            owner=owner,
            devices=devices,
            state=str(state.get("Status", "")),
            host_mounts=any(m.get("Type") == "bind" for m in data.get("Mounts") or ()),
            finished_at=parse_time(str(state.get("FinishedAt") or "")),
            labels=labels,
            mapped=tuple(
                {str(k): str(v) for k, v in d.items()}
                for d in (data.get("HostConfig") or {}).get("Devices") or ()
                if isinstance(d, dict)
            ),
            bind_sources=tuple(
                str(m.get("Source") or "")
                for m in data.get("Mounts") or ()
                if m.get("Type") == "bind"
            ),
        )

    async def containers(self) -> list[Owned]:
        """Every container (stopped ones too), with owner and devices from its labels."""
        status, data = await self.json("GET", "/containers/json?all=1")
        if status >= 400 or not isinstance(data, list):
            raise EngineError(f"list containers: {status}")
        return [self.listed(entry) for entry in data if isinstance(entry, dict)]

    def listed(self, entry: Mapping[str, Any]) -> Owned:
        """One entry of `GET /containers/json`."""
        name = canonical_name(list(entry.get("Names") or []))
        labels = dict(entry.get("Labels") or {})
        owner, devices = self._owner(name, labels)
        return Owned(str(entry.get("Id", "")), name, owner, devices, str(entry.get("State", "")))

    async def volume(self, name: str) -> Volume:
        """The named volume as the engine knows it (owner from its label)."""
        status, data = await self.json("GET", f"/volumes/{quote(name, safe='')}")
        if status == 404 or not isinstance(data, dict):
            return Volume(name, exists=False)
        if status >= 400:
            raise EngineError(f"inspect volume {name}: {status}")
        labels = data.get("Labels") or {}
        return Volume(
            str(data.get("Name") or name),
            exists=True,
            owner=labels.get(names.OWNER),
            driver=str(data.get("Driver") or ""),
        )

    async def network(self, ref: str) -> Network | None:
        """The network ``ref`` (name, ID or ID prefix) names; None when there is none."""
        status, data = await self.json("GET", f"/networks/{quote(ref, safe='')}")
        if status == 404 or not isinstance(data, dict):
            return None
        if status >= 400:
            raise EngineError(f"inspect network {ref}: {status}")
        labels = data.get("Labels") or {}
        return Network(
            ref,
            str(data.get("Id") or ""),
            str(data.get("Name") or ""),
            str(data.get("Driver") or ""),
            labels.get(names.OWNER),
        )

    async def exec_container(self, exec_id: str) -> str | None:
        """The container an exec instance runs in; None when the exec does not exist."""
        status, data = await self.json("GET", f"/exec/{quote(exec_id, safe='')}/json")
        if status >= 400 or not isinstance(data, dict):
            return None
        return str(data.get("ContainerID") or "") or None

    def close(self) -> None:
        while self._idle:
            self._idle.pop()[1].close()
