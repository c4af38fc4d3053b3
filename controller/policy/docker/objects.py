"""Everything but a container's create: updates, execs, starts, volumes, networks, builds. Pure.

Each function takes the canonical body (or the route's parameters) and the
facts the gateway looked up, and returns the body to forward or a Refusal.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from controller.api import names
from controller.policy.docker.create import NAME, check_device, check_user
from controller.policy.docker.facts import (
    Caller,
    Network,
    PathFacts,
    Refusal,
    Rules,
)
from controller.policy.docker.hostconfig import FLAGS, ZERO_HOST, is_zero
from controller.policy.effective import EffectiveLimits
from controller.policy.resources import ContainerLimits, check_update


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def vet_update(
    body: Mapping[str, Any], *, limits: EffectiveLimits, gpu_container: bool
) -> dict[str, Any] | Refusal:
    """`docker update`: resources within the maxima; nothing that reaches the host."""
    out = copy.deepcopy(dict(body))
    for key in sorted(ZERO_HOST & out.keys()):
        if not is_zero(out[key]):
            return Refusal(FLAGS.get(key, key), f"{FLAGS.get(key, key)}: not allowed in an update")
    for key, flag in (("Devices", "--device"), ("DeviceRequests", "--gpus")):
        if out.get(key):
            return Refusal(flag, f"{flag}: devices cannot be changed by an update")
    restart = str(_d(out.get("RestartPolicy")).get("Name") or "")
    if restart not in ("", "no", "always", "on-failure", "unless-stopped"):
        return Refusal("--restart", f"--restart {restart}: not a restart policy")
    if gpu_container and restart in ("always", "unless-stopped"):
        return Refusal(
            "--restart",
            f"--restart {restart}: a GPU container restarts only through the gateway",
        )
    policy = limits.spec.resources.per_workload if limits.spec.resources else None
    message = check_update(out, ContainerLimits.of(policy, limits.source_of))
    if message is not None:
        return Refusal(message.split(" ", 1)[0], message)
    return out


def vet_exec(
    body: Mapping[str, Any], *, caller: Caller, host_mounts: bool
) -> dict[str, Any] | Refusal:
    """`docker exec`: never privileged; as the caller (UID and GID) where host paths are."""
    out = copy.deepcopy(dict(body))
    if out.get("Privileged"):
        return Refusal("--privileged", "docker exec --privileged is not allowed")
    for entry in out.get("Env") or ():
        if str(entry).split("=", 1)[0].upper().startswith("NVIDIA_"):
            return Refusal("--env", "docker exec --env NVIDIA_*: set by the gateway only")
    if host_mounts:
        user = str(out.get("User") or "")
        if user:
            refused, canonical = check_user(user, caller, "docker exec --user")
            if refused is not None:
                return refused
            out["User"] = canonical
    return out


def recheck_devices(
    devices: Sequence[Mapping[str, Any]],
    *,
    facts: Mapping[str, PathFacts],
    rules: Rules,
    gpu_nodes: Mapping[str, frozenset[tuple[int, int]]],
) -> Refusal | None:
    """At `start`: the engine resolves device paths again, so they are judged again.

    ``gpu_nodes`` are the device nodes the gateway mapped for the container's
    own GPUs (path -> the numbers they must still have); every other device
    must still pass the create-time rule. A path that went through a symlink
    or a place users can change, or whose numbers changed, is refused.
    """
    for entry in devices:
        path = str(entry.get("PathOnHost") or "")
        found = facts.get(path)
        if path in gpu_nodes:
            if (
                found is None
                or found.kind != "char"
                or found.linked
                or found.numbers != gpu_nodes[path]
            ):
                return Refusal(
                    "start",
                    f"device {path} of this container is no longer the GPU it was given; "
                    "remove the container and create a new one",
                    status=409,
                    event="gpu.reject",
                )
            continue
        refused = check_device(entry, found, rules)
        if refused is None and found is not None and found.linked:
            refused = Refusal("start", f"device {path} now leads elsewhere (a symlink)")
        if refused is not None:
            return Refusal(
                "start",
                f"this container cannot start: {refused.message}",
                status=409,
                event=refused.event,
            )
    return None


def _stamp(labels: Any, caller: Caller) -> dict[str, str]:
    kept = {str(k): str(v) for k, v in _d(labels).items() if not str(k).startswith(names.PREFIX)}
    kept[names.OWNER] = caller.owner
    return kept


def vet_volume_create(body: Mapping[str, Any], *, caller: Caller) -> dict[str, Any] | Refusal:
    """`docker volume create`: the local driver without options, stamped with its creator."""
    out = copy.deepcopy(dict(body))
    name = str(out.get("Name") or "")
    if name and not NAME.match(name):
        return Refusal("volume", f"docker volume create {name}: not a volume name", status=400)
    if str(out.get("Driver") or "") not in ("", "local") or out.get("DriverOpts"):
        return Refusal(
            "--opt",
            "docker volume create: drivers and driver options are not allowed (they can mount "
            "host paths); create a plain volume",
        )
    if not is_zero(out.get("ClusterVolumeSpec")):
        return Refusal("--type", "docker volume create: cluster volumes are not available")
    out["Labels"] = _stamp(out.get("Labels"), caller)
    return out


def vet_network_create(body: Mapping[str, Any], *, caller: Caller) -> dict[str, Any] | Refusal:
    """`docker network create`: a plain bridge network, addresses chosen by the engine."""
    out = copy.deepcopy(dict(body))
    name = str(out.get("Name") or "")
    if not NAME.match(name):
        return Refusal("network", f"docker network create {name}: not a network name", status=400)
    if str(out.get("Driver") or "") not in ("", "bridge"):
        return Refusal(
            "--driver",
            f"docker network create --driver {out.get('Driver')}: only bridge is allowed",
        )
    for key, flag in (
        ("Options", "--opt"),
        ("ConfigFrom", "--config-from"),
        ("Ingress", "--ingress"),
        ("ConfigOnly", "--config-only"),
    ):
        if not is_zero(out.get(key)):
            return Refusal(flag, f"docker network create {flag}: not available to users")
    if str(out.get("Scope") or "") not in ("", "local"):
        return Refusal("--scope", "docker network create --scope: only local networks")
    ipam = _d(out.get("IPAM"))
    if str(ipam.get("Driver") or "") not in ("", "default") or ipam.get("Options"):
        return Refusal("--ipam-driver", "docker network create: only the default IPAM driver")
    if ipam.get("Config"):
        return Refusal(
            "--subnet",
            "docker network create --subnet/--gateway/--ip-range: addresses are chosen by the "
            "engine (a chosen subnet could shadow the lab's own networks); ask an admin",
        )
    out["Labels"] = _stamp(out.get("Labels"), caller)
    return out


def vet_network_connect(
    body: Mapping[str, Any], *, network: Network, container_owned: bool | None, caller: Caller
) -> dict[str, Any] | Refusal:
    """`docker network connect|disconnect`: the caller's container, the caller's network."""
    if network.driver == "host" or network.name == "host":
        return Refusal("--network", "the host's network is not available to containers")
    if not (network.predefined or network.owner == caller.owner):
        return Refusal("network", f"network {network.name} is not yours", event="auth.denied")
    if container_owned is None:
        return Refusal("container", f"no such container {body.get('Container')}", status=404)
    if not container_owned:
        return Refusal(
            "container", f"container {body.get('Container')} is not yours", event="auth.denied"
        )
    out = copy.deepcopy(dict(body))
    if not is_zero(_d(out.get("EndpointConfig")).get("DriverOpts")):
        return Refusal("--driver-opt", "docker network connect --driver-opt: not allowed")
    return out


BUILD_NETWORKS = ("", "default", "bridge", "none")


def vet_build(params: Mapping[str, tuple[str, ...]], *, own_network: bool) -> Refusal | None:
    """`docker build`: build steps run in ordinary containers on an ordinary network."""
    network = (params.get("networkmode") or ("",))[0]
    if network == "host" or network.startswith("container:"):
        return Refusal(
            "--network",
            f"docker build --network {network}: build steps may not share the host's or "
            "another container's network",
        )
    if network not in BUILD_NETWORKS and not own_network:
        return Refusal("--network", f"docker build --network {network}: not your network")
    if (params.get("cgroupparent") or ("",))[0]:
        return Refusal("--cgroup-parent", "docker build --cgroup-parent is not allowed")
    if (params.get("remote") or ("",))[0]:
        return Refusal(
            "remote",
            "docker build from a remote URL or Git repository is not available (the engine "
            "would fetch it as root); build from a local context",
        )
    if (params.get("isolation") or ("",))[0] not in ("", "default"):
        return Refusal("--isolation", "docker build --isolation: only the default")
    return None


def vet_pull(params: Mapping[str, tuple[str, ...]]) -> Refusal | None:
    """`docker pull` / `docker import`: images from registries, or imported from the request."""
    source = (params.get("fromSrc") or ("",))[0]
    if source not in ("", "-"):
        return Refusal(
            "import",
            "docker import from a URL is not available (the engine would fetch it as root); "
            "download it and import the file",
        )
    return None
