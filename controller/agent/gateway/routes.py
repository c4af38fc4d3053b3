"""Which requests a user may make, and what the gateway does with each.

- `POST /containers/create`: vetted, counted, given GPUs and signed (`create.py`).
- Anything on one container (`/containers/{id}/...`, execs by ID, `commit`):
  only the caller's own; the request is pinned to the resolved ID so a name
  cannot be swapped between the check and the engine. `rename` is refused (the
  signature binds the name), `update` and `exec` are vetted, `start` of a GPU
  container whose devices went to someone else is refused.
- `GET /containers/json` and `docker events`: filtered to the caller's own
  containers; `POST /containers/prune`: the caller's own stopped containers.
- Builds without host networking or a cgroup parent; volumes without driver
  options (they can mount host paths), stamped with their creator; networks
  with the bridge driver only; swarm, plugins and their kin: admins only.
- Everything else (images, build sessions, system info, ping) is relayed as is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from controller.agent.gateway.create import create
from controller.agent.gateway.engine import Owned
from controller.agent.gateway.http import LAST_CHUNK, body_chunks, chunk, response_framing
from controller.agent.gateway.proxy import Call, Session
from controller.agent.trust import OWNER_LABEL
from controller.policy.gateway import LABEL_PREFIX, Refusal, vet_exec, vet_update

ADMIN_ONLY = frozenset({"plugins", "swarm", "services", "nodes", "secrets", "configs", "tasks"})
STOPPED = ("exited", "created", "dead")


async def dispatch(session: Session, call: Call) -> bool:
    """Handle one request; whether the connection stays open."""
    if call.too_old():
        refusal = Refusal(
            "api-version",
            f"API {call.prefix[1:]} is too old for this gateway; use 1.25 or newer",
            status=400,
        )
        return await session.refuse(call, refusal)
    parts = [unquote(p) for p in call.path.strip("/").split("/")] if call.path.strip("/") else []
    top = parts[0] if parts else ""
    if top in ADMIN_ONLY:
        return await session.refuse(
            call,
            Refusal(top, f"{top} are for admins on this host", event="auth.denied"),
        )
    if top == "containers" and len(parts) == 2 and call.method == "POST":
        if parts[1] == "create":
            return await create(session, call)
        if parts[1] == "prune":
            return await prune(session, call)
    if top == "containers" and len(parts) == 2 and parts[1] == "json" and call.method == "GET":
        return await list_containers(session, call)
    if top == "containers" and len(parts) >= 2:
        return await container_call(session, call, parts[1], parts[2:])
    if top == "exec" and len(parts) >= 2:
        return await exec_call(session, call, parts[1])
    if top == "commit":
        return await commit(session, call)
    if top == "build":
        return await build(session, call)
    if top in ("volumes", "networks") and parts[1:] == ["create"]:
        return await create_object(session, call, top)
    if top == "events":
        return await events(session, call)
    return await session.passthrough(call)


def _mine(session: Session, container: Owned) -> bool:
    return container.owner is not None and container.owner == session.identity.caller.owner


async def _not_yours(session: Session, call: Call, ref: str) -> bool:
    return await session.refuse(
        call,
        Refusal(
            "container",
            f"container {ref} is not yours: only its owner and admins may use it",
            event="auth.denied",
        ),
        container=ref,
    )


async def container_call(session: Session, call: Call, ref: str, rest: list[str]) -> bool:
    """A request on one container: the caller's own only, pinned to its ID."""
    container = await session.core.engine.container(ref)
    if container is None:
        return await session.passthrough(call)  # the engine says "No such container" itself
    if not _mine(session, container):
        return await _not_yours(session, call, ref)
    call.retarget(path="/containers/" + "/".join([container.id, *rest]))
    op = rest[0] if rest else ""
    if op == "rename":
        return await session.refuse(
            call,
            Refusal(
                "rename",
                "docker rename is not available: the gateway's signed labels bind the name; "
                "create a new container with --name",
            ),
            container=ref,
        )
    if op == "update" and call.method == "POST":
        return await _update(session, call, container)
    if op == "exec" and call.method == "POST":
        return await _exec(session, call, container)
    if op in ("start", "restart") and call.method == "POST":
        return await _start(session, call, container, op)
    if op == "archive" and call.method == "PUT" and container.host_mounts:
        return await session.refuse(
            call,
            Refusal(
                "cp",
                "docker cp into a container that mounts host paths is not available (files "
                "would arrive as root); copy into its host paths directly",
            ),
            container=ref,
        )
    return await session.passthrough(call)


async def _json_body(session: Session, call: Call) -> dict[str, Any] | None:
    raw = await session.read_request_body(call)
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def _update(session: Session, call: Call, container: Owned) -> bool:
    body = await _json_body(session, call)
    if body is None:
        return await session.reply(call, 400, {"message": "gateway: the update body is not JSON"})
    limits = session.core.limits_for(session.identity)
    vetted = vet_update(body, limits=limits, gpu_container=bool(container.devices))
    if isinstance(vetted, Refusal):
        return await session.refuse(call, vetted, container=container.name)
    return await session.passthrough(call, json.dumps(vetted).encode())


async def _exec(session: Session, call: Call, container: Owned) -> bool:
    body = await _json_body(session, call)
    if body is None:
        return await session.reply(call, 400, {"message": "gateway: the exec body is not JSON"})
    refused = vet_exec(body, caller=session.identity.caller, host_mounts=container.host_mounts)
    if refused is not None:
        return await session.refuse(call, refused, container=container.name)
    return await session.passthrough(call, json.dumps(body).encode())


async def _start(session: Session, call: Call, container: Owned, op: str) -> bool:
    if op == "start":
        raw = await session.read_request_body(call)
        if raw.strip() not in (b"", b"{}", b"null"):
            return await session.refuse(
                call,
                Refusal("start", "a start request may not carry a configuration", status=400),
                container=container.name,
            )
    taken = await session.core.allocator.taken(container)
    if taken:
        return await session.refuse(
            call,
            Refusal(
                "--gpus",
                f"container {container.name} cannot {op}: its GPUs "
                f"{', '.join(sorted(taken))} were given to another container after it stopped; "
                "remove it and create a new one",
                status=409,
                event="gpu.reject",
            ),
            container=container.name,
        )
    return await session.passthrough(call, b"" if op == "start" else None)


async def exec_call(session: Session, call: Call, exec_id: str) -> bool:
    """`/exec/{id}/start|resize|json`: only for execs in the caller's own containers."""
    owner_id = await session.core.engine.exec_container(exec_id)
    if owner_id is None:
        return await session.passthrough(call)
    container = await session.core.engine.container(owner_id)
    if container is None or not _mine(session, container):
        return await _not_yours(session, call, exec_id)
    return await session.passthrough(call)


async def commit(session: Session, call: Call) -> bool:
    params = call.params()
    ref = params.get("container", "")
    container = await session.core.engine.container(ref) if ref else None
    if container is None:
        return await session.passthrough(call)
    if not _mine(session, container):
        return await _not_yours(session, call, ref)
    params["container"] = container.id
    call.retarget(params=params)
    return await session.passthrough(call)


async def build(session: Session, call: Call) -> bool:
    """Builds run in ordinary containers; only host networking and cgroup parents are refused."""
    params = call.params()
    if params.get("networkmode") == "host":
        refusal = Refusal("--network", "docker build --network host is not allowed")
        return await session.refuse(call, refusal)
    if params.get("cgroupparent"):
        refusal = Refusal("--cgroup-parent", "docker build --cgroup-parent is not allowed")
        return await session.refuse(call, refusal)
    return await session.passthrough(call)


async def create_object(session: Session, call: Call, kind: str) -> bool:
    """Volumes without driver options, networks with the bridge driver, both stamped."""
    body = await _json_body(session, call)
    if body is None:
        return await session.reply(call, 400, {"message": f"gateway: the {kind} body is not JSON"})
    driver = str(body.get("Driver") or "")
    if kind == "volumes" and (driver not in ("", "local") or body.get("DriverOpts")):
        return await session.refuse(
            call,
            Refusal(
                "--opt",
                "docker volume create: driver options are not allowed (they can mount host "
                "paths); create a plain volume",
            ),
        )
    if kind == "networks" and driver not in ("", "bridge"):
        return await session.refuse(
            call,
            Refusal("--driver", f"docker network create --driver {driver}: only bridge is allowed"),
        )
    labels = {
        str(k): str(v)
        for k, v in dict(body.get("Labels") or {}).items()
        if not str(k).startswith(LABEL_PREFIX)
    }
    labels[OWNER_LABEL] = session.identity.caller.owner
    body["Labels"] = labels
    return await session.passthrough(call, json.dumps(body).encode())


async def list_containers(session: Session, call: Call) -> bool:
    """`docker ps`: the engine's answer, less every container that is not the caller's."""
    response = await session.forward(call)
    data = await session.read_response(call, response, 256 << 20)
    if response.status == 200:
        try:
            entries = json.loads(data)
        except ValueError:
            entries = None
        if isinstance(entries, list):
            engine = session.core.engine
            mine = [e for e in entries if isinstance(e, dict) and _mine(session, engine.listed(e))]
            data = json.dumps(mine).encode()
    response.drop_header("Transfer-Encoding")
    response.set_header("Content-Length", str(len(data)))
    await session.send(response.encode() + data)
    return not (response.wants_close() or call.head.wants_close())


async def prune(session: Session, call: Call) -> bool:
    """`docker container prune`: remove the caller's own stopped containers only."""
    await session.drain_request_body(call)
    engine = session.core.engine
    deleted = []
    for container in await engine.containers():
        if _mine(session, container) and container.state in STOPPED:
            status, _ = await engine.call("DELETE", f"/containers/{container.id}")
            if status < 300:
                deleted.append(container.id)
    return await session.reply(call, 200, {"ContainersDeleted": deleted, "SpaceReclaimed": 0})


def _event_visible(session: Session, event: Mapping[str, Any]) -> bool:
    if event.get("Type", "container") != "container":
        return True
    attributes = dict((event.get("Actor") or {}).get("Attributes") or {})
    name = str(attributes.get("name", ""))
    return _mine(session, session.core.engine.listed({"Names": [name], "Labels": attributes}))


async def events(session: Session, call: Call) -> bool:
    """`docker events`: container events only for the caller's containers, as they happen."""
    response = await session.forward(call)
    if response.status != 200:
        return await session.relay(call, response)
    framing, length = response_framing(response, call.method)
    response.drop_header("Content-Length")
    response.set_header("Transfer-Encoding", "chunked")
    await session.send(response.encode())
    reader, _ = await session.upstream()
    pending = b""
    async for data in body_chunks(reader, framing, length):
        pending += data
        *lines, pending = pending.split(b"\n")
        out = b""
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and _event_visible(session, event):
                out += line + b"\n"
        if out:
            await session.send(chunk(out))
    await session.send(LAST_CHUNK)
    return framing != "close" and not call.head.wants_close()
