"""What the gateway does with each allowed request (the allow-list is `policy.docker.routes`).

- `create`: vetted, counted, given GPUs and signed (`create.py`).
- One container (`/containers/{id}/...`, execs by ID, `commit`): only the
  caller's own; the request is pinned to the resolved ID so a name cannot be
  swapped between the check and the engine. `rename` is refused (the signature
  binds the name), `update` and `exec` are vetted, `start` re-checks what the
  engine will resolve again (devices, bind sources) and refuses a GPU
  container whose devices went to someone else.
- Listings (`ps`, `events`, `network ls`, `volume ls`, `system df`) show the
  caller's own objects (and the engine's shared `bridge`/`none` networks);
  prunes remove the caller's own only.
- Volumes and networks carry their creator as owner; only they use, inspect,
  connect or remove them.
- Images are shared by everyone on the host and relayed; builds without host
  networking, cgroup parents or remote contexts.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from controller.agent.gateway import hostfacts
from controller.agent.gateway.create import create, rules
from controller.agent.gateway.engine import Owned
from controller.agent.gateway.http import LAST_CHUNK, body_chunks, chunk, response_framing
from controller.agent.gateway.proxy import Call, Session
from controller.api import names
from controller.policy.docker import schemas
from controller.policy.docker.create import check_bind
from controller.policy.docker.facts import Network, Refusal
from controller.policy.docker.objects import (
    BUILD_NETWORKS,
    recheck_devices,
    vet_build,
    vet_exec,
    vet_network_connect,
    vet_network_create,
    vet_pull,
    vet_update,
    vet_volume_create,
)
from controller.policy.docker.routes import canonical

STOPPED = ("exited", "created", "dead")
LISTING_LIMIT = 256 << 20

Handler = Callable[[Session, Call], Awaitable[bool]]


async def dispatch(session: Session, call: Call) -> bool:
    """Handle one routed request; whether the connection stays open."""
    return await HANDLERS[call.found.route.handler](session, call)


def _mine(session: Session, container: Owned) -> bool:
    return container.owner is not None and container.owner == session.identity.caller.owner


async def _not_yours(session: Session, call: Call, what: str, ref: str) -> bool:
    return await session.refuse(
        call,
        Refusal(
            what,
            f"{what} {ref} is not yours: only its owner and admins may use it",
            event="auth.denied",
        ),
        **{what: ref},
    )


async def _no_such(session: Session, call: Call, what: str, ref: str) -> bool:
    return await session.reply(call, 404, {"message": f"No such {what}: {ref}"})


async def _own_container(session: Session, call: Call, ref: str) -> Owned | bool:
    """The caller's container ``ref`` (inspected), or the answer already sent."""
    container = await session.core.engine.container(ref)
    if container is None:
        return await _no_such(session, call, "container", ref)
    if not _mine(session, container):
        return await _not_yours(session, call, "container", ref)
    return container


async def relay(session: Session, call: Call) -> bool:
    if call.found.route.body == "json-auth":
        body = await session.read_json(call, schemas.AUTH)
        if isinstance(body, Refusal):
            return await session.refuse(call, body)
        return await session.passthrough(call, json.dumps(body).encode())
    return await session.passthrough(call)


async def container(session: Session, call: Call) -> bool:
    """A request on one container: the caller's own only, pinned to its ID."""
    found = await _own_container(session, call, call.found.names["c"])
    if not isinstance(found, Owned):
        return found
    call.retarget(canonical(call.found, c=found.id))
    return await session.passthrough(call)


async def remove_container(session: Session, call: Call) -> bool:
    if call.found.param("link") not in (None, "", "0", "false"):
        return await session.refuse(
            call, Refusal("--link", "docker rm --link: removing links is not available")
        )
    return await container(session, call)


async def rename(session: Session, call: Call) -> bool:
    return await session.refuse(
        call,
        Refusal(
            "rename",
            "docker rename is not available: the gateway's signed labels bind the name; "
            "create a new container with --name",
        ),
        container=call.found.names["c"],
    )


async def copy_in(session: Session, call: Call) -> bool:
    found = await _own_container(session, call, call.found.names["c"])
    if not isinstance(found, Owned):
        return found
    if found.host_mounts:
        return await session.refuse(
            call,
            Refusal(
                "cp",
                "docker cp into a container that mounts host paths is not available (files "
                "would arrive as root); copy into its host paths directly",
            ),
            container=found.name,
        )
    call.retarget(canonical(call.found, c=found.id))
    return await session.passthrough(call)


async def update(session: Session, call: Call) -> bool:
    found = await _own_container(session, call, call.found.names["c"])
    if not isinstance(found, Owned):
        return found
    body = await session.read_json(call, schemas.UPDATE)
    if isinstance(body, Refusal):
        return await session.refuse(call, body)
    limits = session.core.limits_for(session.identity)
    vetted = vet_update(body, limits=limits, gpu_container=bool(found.devices))
    if isinstance(vetted, Refusal):
        return await session.refuse(call, vetted, container=found.name)
    call.retarget(canonical(call.found, c=found.id))
    return await session.passthrough(call, json.dumps(vetted).encode())


async def exec_create(session: Session, call: Call) -> bool:
    found = await _own_container(session, call, call.found.names["c"])
    if not isinstance(found, Owned):
        return found
    body = await session.read_json(call, schemas.EXEC)
    if isinstance(body, Refusal):
        return await session.refuse(call, body)
    vetted = vet_exec(body, caller=session.identity.caller, host_mounts=found.host_mounts)
    if isinstance(vetted, Refusal):
        return await session.refuse(call, vetted, container=found.name)
    call.retarget(canonical(call.found, c=found.id))
    return await session.passthrough(call, json.dumps(vetted).encode())


async def _own_exec(session: Session, call: Call) -> bool | None:
    """None when the exec runs in the caller's container; else the answer already sent."""
    exec_id = call.found.names["e"]
    owner_id = await session.core.engine.exec_container(exec_id)
    if owner_id is None:
        return await _no_such(session, call, "exec instance", exec_id)
    found = await session.core.engine.container(owner_id)
    if found is None or not _mine(session, found):
        return await _not_yours(session, call, "exec", exec_id)
    return None


async def exec_use(session: Session, call: Call) -> bool:
    answered = await _own_exec(session, call)
    if answered is not None:
        return answered
    return await session.passthrough(call)


async def exec_start(session: Session, call: Call) -> bool:
    answered = await _own_exec(session, call)
    if answered is not None:
        return answered
    body = await session.read_json(call, schemas.EXEC_START)
    if isinstance(body, Refusal):
        return await session.refuse(call, body)
    return await session.passthrough(call, json.dumps(body).encode())


async def start(session: Session, call: Call) -> bool:
    """`start`/`restart`: the engine resolves devices and bind sources again, so they are judged
    again."""
    found = await _own_container(session, call, call.found.names["c"])
    if not isinstance(found, Owned):
        return found
    if call.found.route.body == "empty":
        raw = await session.read_request_body(call)
        if raw.strip() not in (b"", b"{}", b"null"):
            return await session.refuse(
                call,
                Refusal("start", "a start request may not carry a configuration", status=400),
                container=found.name,
            )
    refused = await _recheck(session, found)
    if refused is not None:
        return await session.refuse(call, refused, container=found.name)
    taken = await session.core.allocator.taken(found)
    if taken:
        return await session.refuse(
            call,
            Refusal(
                "--gpus",
                f"container {found.name} cannot start: its GPUs "
                f"{', '.join(sorted(taken))} were given to another container after it stopped; "
                "remove it and create a new one",
                status=409,
                event="gpu.reject",
            ),
            container=found.name,
        )
    call.retarget(canonical(call.found, c=found.id))
    return await session.passthrough(call, b"" if call.found.route.body == "empty" else None)


async def _recheck(session: Session, found: Owned) -> Refusal | None:
    inventory = session.core.source.inventory()
    options = session.core.options

    def seen(path: str) -> str:  # the host's path where the agent sees it (a pod: /host/dev)
        return hostfacts.agent_path(path, options.dev_root, options.host_dev_root)

    gpu_nodes: dict[str, frozenset[tuple[int, int]]] = {}
    if inventory is not None and found.devices:
        for host_path, _ in hostfacts.device_nodes(
            inventory, found.devices, options.dev_root, options.host_dev_root
        ):
            gpu_nodes[host_path] = frozenset(
                (n.major, n.minor)
                for s in inventory.slots()
                for n in [*s.devices, *inventory.control]
                if n.path == seen(host_path)
            )
    paths = [str(d.get("PathOnHost") or "") for d in found.mapped]
    facts = {
        p: await asyncio.to_thread(hostfacts.path_facts, seen(p), walk=True)
        for p in dict.fromkeys(paths)
    }
    judged = rules(session)
    refused = recheck_devices(found.mapped, facts=facts, rules=judged, gpu_nodes=gpu_nodes)
    if refused is not None:
        return refused
    for source in found.bind_sources:
        path = await asyncio.to_thread(hostfacts.path_facts, source, walk=False)
        refused = check_bind("--volume", source, path, judged)
        if refused is None and path.linked:
            refused = Refusal("--volume", f"--volume {source}: now leads elsewhere (a symlink)")
        if refused is not None:
            return Refusal("start", f"this container cannot start: {refused.message}", status=409)
    return None


async def commit(session: Session, call: Call) -> bool:
    ref = call.found.param("container") or ""
    found = await _own_container(session, call, ref)
    if not isinstance(found, Owned):
        return found
    body = await session.read_json(call, schemas.CONFIG)
    if isinstance(body, Refusal):
        return await session.refuse(call, body)
    call.with_params(container=found.id)
    return await session.passthrough(call, json.dumps(body).encode() if body else b"")


async def build(session: Session, call: Call) -> bool:
    network = call.found.param("networkmode") or ""
    own = False
    if network not in BUILD_NETWORKS and network != "host" and not network.startswith("container:"):
        found = await session.core.engine.network(network)
        own = found is not None and found.owner == session.identity.caller.owner
    refused = vet_build(call.found.params, own_network=own)
    if refused is not None:
        return await session.refuse(call, refused)
    return await session.passthrough(call)


async def pull(session: Session, call: Call) -> bool:
    refused = vet_pull(call.found.params)
    if refused is not None:
        return await session.refuse(call, refused)
    return await session.passthrough(call)


# -- listings -------------------------------------------------------------------


async def _filtered(session: Session, call: Call, keep: Callable[[Any], Any]) -> bool:
    """Forward, read the answer whole, keep what ``keep`` returns (None: unchanged)."""
    response = await session.forward(call)
    data = await session.read_response(call, response, LISTING_LIMIT)
    if response.status == 200:
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = None
        if parsed is not None:
            data = json.dumps(keep(parsed)).encode()
    return await session.answer(call, response, data)


async def list_containers(session: Session, call: Call) -> bool:
    """`docker ps`: the engine's answer, less every container that is not the caller's."""
    engine = session.core.engine

    def keep(entries: Any) -> Any:
        if not isinstance(entries, list):
            return []
        return [e for e in entries if isinstance(e, dict) and _mine(session, engine.listed(e))]

    return await _filtered(session, call, keep)


def _owned_label(session: Session, labels: Any) -> bool:
    return isinstance(labels, dict) and labels.get(names.OWNER) == session.identity.caller.owner


def _visible_network(session: Session, entry: Mapping[str, Any]) -> bool:
    network = Network(
        "", str(entry.get("Id") or ""), str(entry.get("Name") or ""), str(entry.get("Driver") or "")
    )
    return network.predefined or _owned_label(session, entry.get("Labels"))


async def list_networks(session: Session, call: Call) -> bool:
    def keep(entries: Any) -> Any:
        if not isinstance(entries, list):
            return []
        out = []
        for entry in entries:
            if isinstance(entry, dict) and _visible_network(session, entry):
                out.append({**entry, "Containers": {}})
        return out

    return await _filtered(session, call, keep)


async def list_volumes(session: Session, call: Call) -> bool:
    def keep(answer: Any) -> Any:
        if not isinstance(answer, dict):
            return {"Volumes": [], "Warnings": None}
        volumes = [
            v
            for v in answer.get("Volumes") or ()
            if isinstance(v, dict) and _owned_label(session, v.get("Labels"))
        ]
        return {**answer, "Volumes": volumes}

    return await _filtered(session, call, keep)


async def disk_usage(session: Session, call: Call) -> bool:
    """`docker system df`: images and build cache (shared) and the caller's own containers
    and volumes."""
    engine = session.core.engine

    def keep(answer: Any) -> Any:
        if not isinstance(answer, dict):
            return {}
        out = dict(answer)
        out["Containers"] = [
            c
            for c in answer.get("Containers") or ()
            if isinstance(c, dict) and _mine(session, engine.listed(c))
        ]
        out["Volumes"] = [
            v
            for v in answer.get("Volumes") or ()
            if isinstance(v, dict) and _owned_label(session, v.get("Labels"))
        ]
        return out

    return await _filtered(session, call, keep)


class _EventJudge:
    """Whose each event is: containers by their signed labels, volumes and networks by their
    owners (looked up once per name and remembered, so a removal is judged like the create)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.owners: dict[tuple[str, str], str | None] = {}

    async def _owner(self, kind: str, ref: str) -> str | None:
        key = (kind, ref)
        if key not in self.owners:
            engine = self.session.core.engine
            if kind == "volume":
                self.owners[key] = (await engine.volume(ref)).owner
            else:
                network = await engine.network(ref)
                self.owners[key] = network.owner if network is not None else None
        return self.owners[key]

    async def visible(self, event: Mapping[str, Any]) -> bool:
        kind = event.get("Type", "container")
        actor = event.get("Actor") or {}
        attributes = dict(actor.get("Attributes") or {})
        caller = self.session.identity.caller.owner
        if kind == "container":
            name = str(attributes.get("name", ""))
            listed = self.session.core.engine.listed({"Names": [name], "Labels": attributes})
            return _mine(self.session, listed)
        if kind == "network" and attributes.get("name") in ("bridge", "none"):
            return "container" not in attributes
        if kind in ("volume", "network"):
            return await self._owner(kind, str(actor.get("ID") or "")) == caller
        return kind in ("image", "daemon", "builder")


async def events(session: Session, call: Call) -> bool:
    """`docker events`: only what concerns the caller's objects (and shared images), live."""
    response = await session.forward(call)
    if response.status != 200:
        return await session.relay(call, response)
    framing, length = response_framing(response, call.method)
    response.drop_header("Content-Length")
    response.set_header("Transfer-Encoding", "chunked")
    await session.send(response.encode())
    reader, _ = await session.upstream()
    judge = _EventJudge(session)
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
            if isinstance(event, dict) and await judge.visible(event):
                out += line + b"\n"
        if out:
            await session.send(chunk(out))
    await session.send(LAST_CHUNK)
    return framing != "close" and not call.wants_close()


# -- prunes: the caller's own objects only ------------------------------------------


async def prune_containers(session: Session, call: Call) -> bool:
    await session.drain_request_body(call)
    engine = session.core.engine
    deleted = []
    for found in await engine.containers():
        if _mine(session, found) and found.state in STOPPED:
            status, _ = await engine.call("DELETE", f"/containers/{found.id}")
            if status < 300:
                deleted.append(found.id)
    return await session.reply(call, 200, {"ContainersDeleted": deleted, "SpaceReclaimed": 0})


async def prune_volumes(session: Session, call: Call) -> bool:
    """`docker volume prune`: the caller's volumes that no container uses."""
    await session.drain_request_body(call)
    engine = session.core.engine
    status, listed = await engine.json("GET", "/volumes")
    deleted = []
    for volume in (listed or {}).get("Volumes") or () if status == 200 else ():
        if isinstance(volume, dict) and _owned_label(session, volume.get("Labels")):
            name = str(volume.get("Name") or "")
            gone, _ = await engine.call("DELETE", f"/volumes/{name}")
            if gone < 300:
                deleted.append(name)
    return await session.reply(call, 200, {"VolumesDeleted": deleted, "SpaceReclaimed": 0})


async def prune_networks(session: Session, call: Call) -> bool:
    """`docker network prune`: the caller's networks that no container uses."""
    await session.drain_request_body(call)
    engine = session.core.engine
    status, listed = await engine.json("GET", "/networks")
    deleted = []
    for network in listed or () if status == 200 else ():
        if isinstance(network, dict) and _owned_label(session, network.get("Labels")):
            gone, _ = await engine.call("DELETE", f"/networks/{network.get('Id')}")
            if gone < 300:
                deleted.append(str(network.get("Name") or ""))
    return await session.reply(call, 200, {"NetworksDeleted": deleted})


# -- volumes and networks -------------------------------------------------------------


async def create_volume(session: Session, call: Call) -> bool:
    body = await session.read_json(call, schemas.VOLUME_CREATE)
    if isinstance(body, Refusal):
        return await session.refuse(call, body)
    vetted = vet_volume_create(body, caller=session.identity.caller)
    if isinstance(vetted, Refusal):
        return await session.refuse(call, vetted)
    name = str(vetted.get("Name") or "")
    if name:
        existing = await session.core.engine.volume(name)
        if existing.exists and existing.owner != session.identity.caller.owner:
            return await _not_yours(session, call, "volume", name)
    return await session.passthrough(call, json.dumps(vetted).encode())


async def volume(session: Session, call: Call) -> bool:
    name = call.found.names["v"]
    found = await session.core.engine.volume(name)
    if not found.exists:
        return await _no_such(session, call, "volume", name)
    if found.owner != session.identity.caller.owner:
        return await _not_yours(session, call, "volume", name)
    call.retarget(canonical(call.found, v=found.name))
    return await session.passthrough(call)


async def create_network(session: Session, call: Call) -> bool:
    body = await session.read_json(call, schemas.NETWORK_CREATE)
    if isinstance(body, Refusal):
        return await session.refuse(call, body)
    vetted = vet_network_create(body, caller=session.identity.caller)
    if isinstance(vetted, Refusal):
        return await session.refuse(call, vetted)
    return await session.passthrough(call, json.dumps(vetted).encode())


async def _network(session: Session, call: Call) -> Network | bool:
    ref = call.found.names["n"]
    found = await session.core.engine.network(ref)
    if found is None:
        return await _no_such(session, call, "network", ref)
    return found


async def network(session: Session, call: Call) -> bool:
    """Inspect or remove a network: the caller's own; the shared ones read, their members hidden."""
    found = await _network(session, call)
    if not isinstance(found, Network):
        return found
    owned = found.owner == session.identity.caller.owner
    if not owned and not (found.predefined and call.method == "GET"):
        return await _not_yours(session, call, "network", found.name)
    call.retarget(canonical(call.found, n=found.id))
    if owned:
        return await session.passthrough(call)

    def keep(answer: Any) -> Any:
        return {**answer, "Containers": {}} if isinstance(answer, dict) else answer

    return await _filtered(session, call, keep)


async def network_connect(session: Session, call: Call) -> bool:
    found = await _network(session, call)
    if not isinstance(found, Network):
        return found
    body = await session.read_json(call, schemas.NETWORK_CONNECT)
    if isinstance(body, Refusal):
        return await session.refuse(call, body)
    ref = str(body.get("Container") or "")
    target = await session.core.engine.container(ref) if ref else None
    vetted = vet_network_connect(
        body,
        network=found,
        container_owned=None if target is None else _mine(session, target),
        caller=session.identity.caller,
    )
    if isinstance(vetted, Refusal):
        return await session.refuse(call, vetted)
    assert target is not None
    vetted["Container"] = target.id
    call.retarget(canonical(call.found, n=found.id))
    return await session.passthrough(call, json.dumps(vetted).encode())


HANDLERS: dict[str, Handler] = {
    "relay": relay,
    "events": events,
    "df": disk_usage,
    "list-containers": list_containers,
    "create": create,
    "prune-containers": prune_containers,
    "container": container,
    "start": start,
    "update": update,
    "rename": rename,
    "remove-container": remove_container,
    "copy-in": copy_in,
    "exec": exec_create,
    "exec-start": exec_start,
    "exec-use": exec_use,
    "build": build,
    "pull": pull,
    "commit": commit,
    "list-networks": list_networks,
    "create-network": create_network,
    "prune-networks": prune_networks,
    "network": network,
    "network-connect": network_connect,
    "list-volumes": list_volumes,
    "create-volume": create_volume,
    "prune-volumes": prune_volumes,
    "volume": volume,
}
