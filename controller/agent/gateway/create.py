"""`POST /containers/create` for users: read canonically, vet, count, allocate GPUs, sign, create.

The order matters: everything that can be decided without the lock (options,
paths, volumes, networks, resources) is decided first on the canonical body;
then, under the allocation lock, the workload count and the GPUs; then the
engine creates the container from the gateway's own body, with its signed
labels and the chosen device nodes, and only after its answer are the held
devices released from "pending" (by then they show in listings).
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
from controller.api import names
from controller.api.ratelimit import GPUPolicy
from controller.policy.docker import schemas
from controller.policy.docker.create import (
    CreatePlan,
    container_name,
    finish_create,
    needs,
    over_workloads,
    vet_create,
)
from controller.policy.docker.facts import Facts, Reference, Refusal, Rules
from controller.policy.effective import EffectiveLimits
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
        runtime=options.runtime,
        host_cpus=len(os.sched_getaffinity(0)),
        devices=tuple(os.path.realpath(p) for p in options.devices),
        capabilities=options.capabilities,
        min_host_port=options.min_host_port,
    )


async def facts(session: Session, body: Mapping[str, object]) -> Facts:
    """Everything the create body names, looked up on the host and in the engine."""
    wanted = needs(body)
    found = Facts.none()
    for path in wanted.binds:
        found.paths[path] = await asyncio.to_thread(hostfacts.path_facts, path, walk=False)
    for path in wanted.devices:
        found.paths[path] = await asyncio.to_thread(hostfacts.path_facts, path, walk=True)
    engine = session.core.engine
    for ref in wanted.references:
        container = await engine.container(ref)
        if container is not None:
            owned = container.owner == session.identity.caller.owner
            found.references[ref] = Reference(container.id, owned, container.host_mounts)
    for name in wanted.volumes:
        found.volumes[name] = await engine.volume(name)
    for ref in wanted.networks:
        network = await engine.network(ref)
        if network is not None:
            found.networks[ref] = network
    return found


def _horizon(limits: EffectiveLimits, plan: CreatePlan) -> timedelta:
    runtime = rules_for(limits.spec, plan.workload_type, frozenset()).max_runtime
    return runtime if runtime is not None else DEFAULT_HORIZON


async def _make_volumes(session: Session, plan: CreatePlan) -> Refusal | None:
    """Named volumes the container would create unlabelled: created first, as the caller's."""
    engine, owner = session.core.engine, session.identity.caller.owner
    for name in plan.volumes:
        status, _ = await engine.json(
            "POST", "/volumes/create", {"Name": name, "Labels": {names.OWNER: owner}}
        )
        volume = await engine.volume(name)
        if status >= 300 or volume.owner != owner:  # someone else's, created meanwhile
            return Refusal("--volume", f"--volume {name}: that volume is not yours")
    return None


async def create(session: Session, call: Call) -> bool:
    core, caller = session.core, session.identity.caller
    body = await session.read_json(call, schemas.CREATE)
    if isinstance(body, Refusal):
        return await session.refuse(call, body)
    name = container_name(call.found.param("name"), caller.owner, secrets.token_hex(5))
    if isinstance(name, Refusal):
        return await session.refuse(call, name)
    limits = core.limits_for(session.identity)
    now = datetime.now(UTC)
    plan = vet_create(
        body,
        name=name,
        caller=caller,
        limits=limits,
        rules=rules(session),
        facts=await facts(session, body),
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
        refused = await _make_volumes(session, plan)
        if refused is not None:
            return await session.refuse(call, refused, container=name)
        final = finish_create(
            plan,
            device_nodes=hostfacts.device_nodes(
                inventory, uuids, core.options.dev_root, core.options.host_dev_root
            )
            if inventory is not None and uuids
            else [],
            device_uuids=uuids,
            signed=sign(core.options.key, name, caller.owner, uuids),
        )
        call.with_params(name=name)
        response = await session.forward(call, json.dumps(final).encode())
        answer = await session.read_response(call, response, 1 << 20)
    finally:
        await core.allocator.release(token)
    if response.status == 201 and uuids:
        assert isinstance(result, Chosen)
        await core.record(
            "gpu.allocate",
            caller.owner,
            f"container {name} of {caller.owner} was given {', '.join(uuids)}",
            {
                "container": name,
                "devices": list(uuids),
                "fromReservation": list(result.from_reservation),
                "login": caller.login,
                "uid": caller.uid,
            },
            kind="Normal",
        )
    return await session.answer(call, response, answer)
