"""`POST /containers/create` for users: vet, count, allocate GPUs, sign, create.

The order matters: everything that can be decided without the lock (options,
paths, resources) is decided first; then, under the allocation lock, the
workload count and the GPUs; then the engine creates the container with the
gateway's signed labels and the chosen device nodes, and only after its answer
are the held devices released from "pending" (by then they show in listings).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from controller.agent.gateway import hostfacts
from controller.agent.gateway.allocator import Tally
from controller.agent.gateway.proxy import Call, Session
from controller.agent.trust import sign
from controller.api.ratelimit import GPUPolicy
from controller.policy.effective import EffectiveLimits
from controller.policy.gateway import (
    CreatePlan,
    PathFacts,
    Reference,
    Refusal,
    Rules,
    container_name,
    finish_create,
    needs,
    over_workloads,
    vet_create,
)
from controller.policy.gpuchoice import Chosen, Entitlement, NoDevices, choose
from controller.policy.lifecycle import rules_for

DEFAULT_HORIZON = timedelta(days=7)
"""How far ahead others' reservations are avoided when the runtime is unlimited."""


def rules(session: Session) -> Rules:
    core, identity = session.core, session.identity
    options = core.options
    inventory = core.source.inventory()
    sockets = {options.engine_socket, str(options.socket)}
    protected = [*options.protected, *sockets, *(os.path.realpath(p) for p in sockets)]
    return Rules(
        bind_roots=hostfacts.bind_roots(options.bind_roots, identity.caller.login, identity.home),
        protected=tuple(dict.fromkeys(protected)),
        gpu_numbers=hostfacts.gpu_numbers(inventory),
        gpu_majors=hostfacts.gpu_majors(inventory),
        runtimes=options.runtimes,
        host_cpus=len(os.sched_getaffinity(0)),
    )


async def _facts(
    session: Session, body: Mapping[str, object]
) -> tuple[dict[str, PathFacts], dict[str, Reference]]:
    wanted = needs(body)
    paths: dict[str, PathFacts] = {}
    for path in wanted.binds:
        paths[path] = await asyncio.to_thread(hostfacts.path_facts, path, walk=False)
    for path in wanted.devices:
        paths[path] = await asyncio.to_thread(hostfacts.path_facts, path, walk=True)
    references: dict[str, Reference] = {}
    for ref in wanted.references:
        found = await session.core.engine.container(ref)
        if found is not None:
            owned = found.owner == session.identity.caller.owner
            references[ref] = Reference(found.id, owned, found.host_mounts)
    return paths, references


def _horizon(limits: EffectiveLimits, plan: CreatePlan) -> timedelta:
    runtime = rules_for(limits.spec, plan.workload_type, frozenset()).max_runtime
    return runtime if runtime is not None else DEFAULT_HORIZON


async def create(session: Session, call: Call) -> bool:
    core, caller = session.core, session.identity.caller
    raw = await session.read_request_body(call)
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return await session.reply(call, 400, {"message": "gateway: the create body is not JSON"})
    params = call.params()
    name = container_name(params.get("name"), caller.owner, secrets.token_hex(5))
    paths, references = await _facts(session, body)
    limits = core.limits_for(session.identity)
    now = datetime.now(UTC)
    plan = vet_create(
        body,
        name=name,
        caller=caller,
        limits=limits,
        rules=rules(session),
        paths=paths,
        references=references,
        now=now,
    )
    if isinstance(plan, Refusal):
        return await session.refuse(call, plan, container=name)
    inventory = core.source.inventory()
    spec = core.source.spec()
    devices = hostfacts.devices(inventory)
    entitlement = Entitlement.of(limits.spec.gpu or GPUPolicy(), limits.source_of)
    horizon = _horizon(limits, plan)

    def decide(tally: Tally) -> tuple[Refusal | Chosen | None, tuple[str, ...] | None]:
        refused = over_workloads(tally.count, limits)
        if refused is not None:
            return refused, None
        if plan.gpu is None:
            return None, ()
        chosen = choose(
            plan.gpu,
            user=caller.owner,
            entitlement=entitlement,
            devices=devices,
            held=tally.held,
            spec=spec,
            now=now,
            horizon=horizon,
        )
        if isinstance(chosen, NoDevices):
            status = 409 if chosen.kind == "capacity" else 403
            return Refusal("--gpus", chosen.message, status=status, event="gpu.reject"), None
        return chosen, tuple(d.uuid for d in chosen.devices)

    result, token = await core.allocator.admit(caller.owner, decide)
    if isinstance(result, Refusal) or token is None:
        assert isinstance(result, Refusal)
        return await session.refuse(call, result, container=name)
    uuids = tuple(d.uuid for d in result.devices) if isinstance(result, Chosen) else ()
    try:
        final = finish_create(
            plan,
            device_nodes=hostfacts.device_nodes(inventory, uuids, core.options.dev_root)
            if inventory is not None and uuids
            else [],
            device_uuids=uuids,
            signed=sign(core.options.key, name, caller.owner, uuids),
        )
        params["name"] = name
        call.retarget(params=params)
        response = await session.forward(call, json.dumps(final).encode())
        answer = await session.read_response(call, response, 1 << 20)
    finally:
        await core.allocator.release(token)
    if response.status == 201 and uuids:
        assert isinstance(result, Chosen)
        core.notify(
            "gpu.allocate",
            caller.owner,
            f"container {name} of {caller.owner} was given {', '.join(uuids)}",
            "Normal",
            {
                "container": name,
                "devices": list(uuids),
                "fromReservation": list(result.from_reservation),
                "login": caller.login,
                "uid": caller.uid,
            },
        )
    response.drop_header("Transfer-Encoding")
    response.set_header("Content-Length", str(len(answer)))
    await session.send(response.encode() + answer)
    return not (response.wants_close() or call.head.wants_close())
