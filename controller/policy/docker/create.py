"""`POST /containers/create` of a user: judged field by field on the canonical body. Pure.

The body arrives canonical (`gojson.decode` with `schemas.CREATE`): every
field under its exact name, once. Each field is free, must be zero, or is
checked here (`hostconfig` lists which). What a user may reach on the host is
an allow-list: bind mounts only under their bind roots (never at, under or
above a protected path), devices only from the admins' list, capabilities
only from theirs, named volumes and networks only their own, other
containers only their own (pinned by ID), and GPUs only as the gateway
chooses them. A container that mounts host paths runs as its caller's UID
and GID with `no-new-privileges`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from controller.api import names
from controller.api.ratelimit import WorkloadType
from controller.policy.docker.facts import (
    Caller,
    Facts,
    Needs,
    Network,
    PathFacts,
    Refusal,
    Rules,
)
from controller.policy.docker.hostconfig import (
    FLAGS,
    NULL_ONLY_HOST,
    WHY,
    ZERO_ENDPOINT,
    ZERO_HOST,
    is_zero,
)
from controller.policy.effective import EffectiveLimits
from controller.policy.gpuchoice import GpuRequest, NoDevices, parse_request
from controller.policy.resources import ContainerLimits, apply_create
from controller.policy.units import parse_count

NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
"""Docker's rule for container, volume and network names."""
_TOKEN = re.compile(r"[^a-zA-Z0-9_.-]+")
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
HOST_DEVICES = {(1, 1): "/dev/mem", (1, 2): "/dev/kmem", (1, 4): "/dev/port"}
HOST_DEVICE_MAJORS = {202: "CPU MSRs", 203: "CPUID"}
_GPU_PATH = re.compile(r"(^|/)nvidia[^/]*(/|$)")
SAFE_SYSCTLS = frozenset(
    {
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    }
)
"""Sysctls namespaced per container (with every `net.*` and `fs.mqueue.*` one)."""
LOG_DRIVERS = frozenset({"", "json-file", "local", "none"})
"""Log drivers that write on the host only (others send logs across the network as root)."""
LOG_OPTIONS = frozenset(
    {"max-size", "max-file", "compress", "mode", "max-buffer-size", "labels", "env", "tag"}
)
PROPAGATIONS = frozenset({"", "private", "rprivate", "slave", "rslave"})
"""Bind propagation that cannot carry the container's mounts back to the host."""
BIND_OPTIONS = frozenset(
    {"ro", "rw", "nocopy", "consistent", "cached", "delegated", *PROPAGATIONS - {""}}
)
"""`-v src:dst:OPTS` a user may give (`z`/`Z` relabel the host's files, `shared` leaks mounts)."""


@dataclass
class CreatePlan:
    """An allowed create: the body to send (before GPUs and signature) and what it asks for."""

    body: dict[str, Any]
    name: str
    gpu: GpuRequest | None
    workload_type: WorkloadType
    host_mounts: bool
    labels: dict[str, str] = field(default_factory=dict)
    volumes: tuple[str, ...] = ()
    """Named volumes to create (stamped with the caller) before the container."""


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _mode_target(mode: Any) -> str | None:
    """X of `container:X` in NetworkMode, PidMode, IpcMode."""
    text = str(mode or "")
    return text.split(":", 1)[1] if text.startswith("container:") else None


def _split_bind(bind: str) -> tuple[str | None, str, str]:
    """(source or None for an anonymous volume, destination, options) of a `Binds` entry."""
    parts = bind.split(":")
    if len(parts) == 1:
        return None, parts[0], ""
    if len(parts) == 2:
        return parts[0], parts[1], ""
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    raise ValueError(bind)


def _networks(host: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    mode = str(host.get("NetworkMode") or "")
    names = (
        []
        if mode in ("", "default", "bridge", "none", "host") or mode.startswith("container:")
        else [mode]
    )
    endpoints = _d(_d(config.get("NetworkingConfig")).get("EndpointsConfig"))
    names += [n for n in endpoints if n not in ("", "default", "bridge", "none", "host")]
    return names


def needs(body: Mapping[str, Any]) -> Needs:
    """The host paths, containers, volumes and networks a canonical create body names."""
    host = _d(body.get("HostConfig"))
    devices = [str(_d(d).get("PathOnHost") or "") for d in _l(host.get("Devices"))]
    binds: list[str] = []
    volumes: list[str] = []
    for bind in _l(host.get("Binds")):
        try:
            source, _, _ = _split_bind(str(bind))
        except ValueError:
            continue
        if source is None:
            continue
        (binds if source.startswith("/") else volumes).append(source)
    for mount in _l(host.get("Mounts")):
        kind, source = _d(mount).get("Type"), str(_d(mount).get("Source") or "")
        if kind == "bind":
            binds.append(source)
        elif kind == "volume" and source:
            volumes.append(source)
    refs = [_mode_target(host.get(k)) for k in ("NetworkMode", "PidMode", "IpcMode")]
    refs += [str(v).split(":", 1)[0] for v in _l(host.get("VolumesFrom"))]
    refs += [str(v).split(":", 1)[0].lstrip("/") for v in _l(host.get("Links"))]
    return Needs(
        binds=tuple(dict.fromkeys(p for p in binds if p.startswith("/"))),
        devices=tuple(dict.fromkeys(p for p in devices if p)),
        references=tuple(dict.fromkeys(r for r in refs if r)),
        volumes=tuple(dict.fromkeys(volumes)),
        networks=tuple(dict.fromkeys(_networks(host, body))),
    )


def workload_type(name: str, labels: Mapping[str, str]) -> WorkloadType:
    """DS01's container types: VS Code devcontainers, compose services, raw `docker run`."""
    if name.startswith("vsc-") or any(k.startswith("devcontainer.") for k in labels):
        return "devcontainer"
    if any(k.startswith("com.docker.compose.") for k in labels):
        return "compose"
    return "docker"


def container_name(requested: str | None, owner: str, token: str) -> str | Refusal:
    """The name to create under: the caller's, or `<owner>-<token>` (a signature binds it)."""
    if requested:
        name = requested.removeprefix("/")
        if not NAME.match(name):
            return Refusal(
                "--name", f"--name {requested}: use letters, digits, '_', '.' and '-'", status=400
            )
        return name
    stem = _TOKEN.sub("-", owner).strip("-.")[:40] or "ds01"
    return f"{stem}-{token}"


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_bind(option: str, given: str, facts: PathFacts | None, rules: Rules) -> Refusal | None:
    real = facts.real if facts is not None else given
    for protected in rules.protected:
        if _within(real, protected) or _within(protected, real):
            return Refusal(
                option,
                f"{option} {given}: host path {real} is or holds {protected}, which containers "
                "may not mount",
            )
    if not any(_within(real, root) for root in rules.bind_roots):
        roots = ", ".join(rules.bind_roots) or "none"
        return Refusal(
            option,
            f"{option} {given}: you may bind only paths under your bind roots ({roots}); "
            "use a named volume for anything else",
        )
    return None


def _gpu_device(given: str, facts: PathFacts | None, rules: Rules) -> bool:
    numbers = facts.numbers if facts is not None else frozenset()
    return bool(
        _GPU_PATH.search(given)
        or (facts is not None and _GPU_PATH.search(facts.real))
        or numbers & rules.gpu_numbers
        or any(major in rules.gpu_majors for major, _ in numbers)
    )


def check_device(entry: Mapping[str, Any], facts: PathFacts | None, rules: Rules) -> Refusal | None:
    """A user's `--device`: only a character device on the admins' list, reached safely."""
    given = str(entry.get("PathOnHost") or "")
    if _gpu_device(given, facts, rules):
        return Refusal(
            "--device",
            f"--device {given}: GPU devices are given by the gateway; ask with --gpus N",
            event="gpu.reject",
        )
    if facts is not None:
        for number in facts.numbers:
            what = HOST_DEVICES.get(number) or HOST_DEVICE_MAJORS.get(number[0])
            if what is not None:
                return Refusal("--device", f"--device {given}: {what} is not allowed")
    if facts is None or facts.real not in rules.devices:
        allowed = ", ".join(rules.devices) or "none"
        return Refusal(
            "--device",
            f"--device {given}: only devices the admins allow may be mapped (allowed here: "
            f"{allowed}); ask for GPUs with --gpus N",
        )
    if facts.kind != "char" or facts.block:
        return Refusal("--device", f"--device {given}: {facts.real} is not a character device")
    if facts.writable:
        return Refusal(
            "--device",
            f"--device {given}: {facts.real} is reached through a place users can change",
        )
    permissions = str(entry.get("CgroupPermissions") or "rwm")
    if not set(permissions) <= set("rwm"):
        return Refusal("--device", f"--device {given}: permissions {permissions!r} are not rwm")
    return None


def _check_zero(host: Mapping[str, Any], endpoints: Mapping[str, Any]) -> Refusal | None:
    for key in sorted(ZERO_HOST):
        if not is_zero(host.get(key)):
            flag = FLAGS.get(key, key)
            why = WHY.get(key, "it reaches past the container")
            return Refusal(flag, f"{flag} (HostConfig.{key}) is not allowed: {why}")
    for key in sorted(NULL_ONLY_HOST):
        if host.get(key) is not None:
            return Refusal(FLAGS[key], f"HostConfig.{key} is not allowed: {WHY[key]}")
    for network, endpoint in endpoints.items():
        for key in ZERO_ENDPOINT:
            if not is_zero(_d(endpoint).get(key)):
                return Refusal(
                    "--network",
                    f"NetworkingConfig.EndpointsConfig[{network!r}].{key}: driver options are "
                    "not allowed",
                )
    return None


def _check_capabilities(host: Mapping[str, Any], rules: Rules) -> Refusal | None:
    for cap in _l(host.get("CapAdd")):
        name = str(cap).upper().removeprefix("CAP_")
        if name not in rules.capabilities:
            allowed = ", ".join(sorted(rules.capabilities)) or "none"
            return Refusal(
                "--cap-add",
                f"--cap-add {cap}: only these capabilities may be added here: {allowed}",
            )
    return None


def _check_security_opts(host: dict[str, Any]) -> Refusal | None:
    for option in _l(host.get("SecurityOpt")):
        text = str(option)
        if text in ("no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"):
            continue
        return Refusal(
            "--security-opt",
            f"--security-opt {text}: containers keep the engine's default confinement (only "
            "no-new-privileges may be added)",
        )
    return None


def _check_simple(host: Mapping[str, Any], rules: Rules) -> Refusal | None:
    """The scalar options: each either within its allowed values or refused by flag."""
    if int(host.get("OomScoreAdj") or 0) < 0:
        return Refusal("--oom-score-adj", "--oom-score-adj: a negative value shields it from OOM")
    if str(host.get("VolumeDriver") or "") not in ("", "local"):
        return Refusal("--volume-driver", "--volume-driver: only the local driver is available")
    log = _d(host.get("LogConfig"))
    if str(log.get("Type") or "") not in LOG_DRIVERS:
        return Refusal(
            "--log-driver",
            f"--log-driver {log.get('Type')}: only {', '.join(sorted(LOG_DRIVERS - {''}))} "
            "are available to users",
        )
    for key in _d(log.get("Config")):
        if key not in LOG_OPTIONS:
            return Refusal("--log-opt", f"--log-opt {key}: not available to users")
    for key in _d(host.get("StorageOpt")):
        if key != "size":
            return Refusal("--storage-opt", f"--storage-opt {key}: only size may be set")
    for key in _d(host.get("Sysctls")):
        if not (key.startswith(("net.", "fs.mqueue.")) or key in SAFE_SYSCTLS):
            return Refusal("--sysctl", f"--sysctl {key}: only namespaced sysctls may be set")
    if str(host.get("Isolation") or "") not in ("", "default"):
        return Refusal("--isolation", "--isolation: only the default isolation is available")
    runtime = str(host.get("Runtime") or "")
    if runtime and runtime not in rules.runtimes:
        return Refusal(
            "--runtime",
            f"--runtime {runtime}: only {', '.join(sorted(rules.runtimes))} is allowed; ask for "
            "GPUs with --gpus N (the gateway maps the devices)",
        )
    restart = str(_d(host.get("RestartPolicy")).get("Name") or "")
    if restart not in ("", "no", "always", "on-failure", "unless-stopped"):
        return Refusal("--restart", f"--restart {restart}: not a restart policy")
    return None


def _check_env(config: Mapping[str, Any]) -> Refusal | None:
    for entry in _l(config.get("Env")):
        name = str(entry).split("=", 1)[0]
        if name.upper().startswith("NVIDIA_"):
            return Refusal(
                "--env",
                f"--env {name}: NVIDIA_* variables are set by the gateway; ask for GPUs with "
                "--gpus N",
                event="gpu.reject",
            )
    return None


def _check_namespaces(host: dict[str, Any], facts: Facts) -> Refusal | None:
    """Host namespaces never; another container's only when it is the caller's (by ID)."""
    allowed = {
        "PidMode": ("--pid", ("",)),
        "IpcMode": ("--ipc", ("", "none", "private", "shareable")),
        "UTSMode": ("--uts", ("",)),
        "UsernsMode": ("--userns", ("",)),
        "CgroupnsMode": ("--cgroupns", ("", "private")),
        "NetworkMode": ("--network", None),
    }
    for key, (flag, values) in allowed.items():
        mode = str(host.get(key) or "")
        target = _mode_target(mode)
        if target is not None and key in ("PidMode", "IpcMode", "NetworkMode"):
            ref = facts.references.get(target)
            if ref is None:
                return Refusal(flag, f"{flag} {mode}: no such container", status=404)
            if not ref.owned:
                return Refusal(flag, f"{flag} {mode}: that container is not yours")
            host[key] = f"container:{ref.id}"
        elif mode == "host":
            return Refusal(flag, f"{flag} host: containers may not share the host's namespaces")
        elif values is not None and mode not in values:
            return Refusal(flag, f"{flag} {mode}: not available to users")
    for key, flag in (("VolumesFrom", "--volumes-from"), ("Links", "--link")):
        pinned = []
        for value in _l(host.get(key)):
            target, sep, rest = str(value).partition(":")
            ref = facts.references.get(target.lstrip("/"))
            if ref is None:
                return Refusal(flag, f"{flag} {value}: no such container", status=404)
            if not ref.owned:
                return Refusal(flag, f"{flag} {value}: that container is not yours")
            alias = rest or target.lstrip("/")
            pinned.append(f"{ref.id}{sep}{rest}" if key == "VolumesFrom" else f"{ref.id}:{alias}")
        if host.get(key):
            host[key] = pinned
    return None


def _network_refusal(network: Network | None, name: str, caller: Caller) -> Refusal | None:
    if network is None:
        return Refusal("--network", f"--network {name}: no such network", status=404)
    if network.driver == "host" or network.name == "host":
        return Refusal(
            "--network", f"--network {name}: containers may not share the host's network"
        )
    if network.predefined or network.owner == caller.owner:
        return None
    return Refusal("--network", f"--network {name}: that network is not yours", event="auth.denied")


def _check_networks(
    config: dict[str, Any], host: dict[str, Any], facts: Facts, caller: Caller
) -> Refusal | None:
    """User-defined networks only the caller's own, pinned by ID; never the host's."""
    mode = str(host.get("NetworkMode") or "")
    pinned: dict[str, str] = {}
    if (
        mode
        and mode not in ("default", "bridge", "none", "host")
        and not mode.startswith("container:")
    ):
        network = facts.networks.get(mode)
        refused = _network_refusal(network, mode, caller)
        if refused is not None:
            return refused
        assert network is not None
        pinned[mode] = network.id
        host["NetworkMode"] = network.id
    networking = _d(config.get("NetworkingConfig"))
    endpoints = _d(networking.get("EndpointsConfig"))
    for name in list(endpoints):
        if name in ("", "default", "bridge", "none"):
            continue
        if name == "host":
            return Refusal(
                "--network", "--network host: containers may not share the host's network"
            )
        network = facts.networks.get(name)
        refused = _network_refusal(network, name, caller)
        if refused is not None:
            return refused
        assert network is not None
        pinned[name] = network.id
    if endpoints and pinned:
        networking["EndpointsConfig"] = {pinned.get(k, k): v for k, v in endpoints.items()}
    return None


def _check_ports(host: Mapping[str, Any], rules: Rules) -> Refusal | None:
    for port, bindings in _d(host.get("PortBindings")).items():
        for binding in _l(bindings):
            text = str(_d(binding).get("HostPort") or "")
            if not text:
                continue  # the engine picks an ephemeral port
            low, _, high = text.partition("-")
            if not low.isdigit() or (high and not high.isdigit()):
                return Refusal("--publish", f"--publish {text}:{port}: not a port number")
            if int(low) < rules.min_host_port:
                return Refusal(
                    "--publish",
                    f"--publish {text}:{port}: host ports below {rules.min_host_port} are "
                    "reserved for the system; publish on a higher port",
                )
    return None


def _check_binds(
    host: dict[str, Any], facts: Facts, rules: Rules, caller: Caller
) -> tuple[Refusal | None, bool, list[str]]:
    """`-v`: host paths within the bind roots (passed on resolved), named volumes the caller's."""
    host_mounts = False
    binds, create = [], []
    for bind in _l(host.get("Binds")):
        try:
            source, dest, options = _split_bind(str(bind))
        except ValueError:
            return Refusal("--volume", f"--volume {bind}: not SOURCE:DEST[:OPTIONS]"), False, []
        for option in filter(None, options.split(",")):
            if option not in BIND_OPTIONS:
                return (
                    Refusal("--volume", f"--volume {bind}: option {option!r} is not allowed"),
                    False,
                    [],
                )
        if source is None:
            binds.append(str(bind))
        elif source.startswith("/"):
            path = facts.paths.get(source)
            refused = check_bind("--volume", source, path, rules)
            if refused is not None:
                return refused, False, []
            host_mounts = True
            binds.append(":".join(filter(None, [path.real if path else source, dest, options])))
        else:
            refused, missing = _check_volume("--volume", source, facts, caller)
            if refused is not None:
                return refused, False, []
            create += missing
            binds.append(str(bind))
    if host.get("Binds") is not None:
        host["Binds"] = binds
    return None, host_mounts, create


def _check_volume(
    option: str, name: str, facts: Facts, caller: Caller
) -> tuple[Refusal | None, list[str]]:
    if not NAME.match(name):
        return Refusal(option, f"{option} {name}: not a volume name"), []
    volume = facts.volumes.get(name)
    if volume is None or not volume.exists:
        return None, [name]
    if volume.owner != caller.owner:
        return Refusal(
            option, f"{option} {name}: that volume is not yours", event="auth.denied"
        ), []
    return None, []


def _mount_options(mount: Mapping[str, Any], kind: str, source: str) -> Refusal | None:
    """What a `--mount` may not carry: other types' options, host-reaching bind options."""
    for key in ("ImageOptions", "ClusterOptions"):
        if not is_zero(mount.get(key)):
            return Refusal("--mount", f"--mount: {key} is not allowed")
    bind = _d(mount.get("BindOptions"))
    if bind and kind != "bind":
        return Refusal("--mount", "--mount: bind options on a non-bind mount")
    if bind.get("CreateMountpoint"):
        return Refusal("--mount", "--mount bind-create-src: host directories are not created")
    if str(bind.get("Propagation") or "") not in PROPAGATIONS:
        return Refusal(
            "--mount",
            f"--mount bind-propagation={bind.get('Propagation')}: not allowed (mounts would "
            "reach the host)",
        )
    volume_options = _d(mount.get("VolumeOptions"))
    if volume_options and kind != "volume":
        return Refusal("--mount", "--mount: volume options on a non-volume mount")
    if not is_zero(volume_options.get("DriverConfig")):
        return Refusal(
            "--mount",
            f"--mount volume {source or '(anonymous)'}: volume driver options are not allowed "
            "(they can mount host paths)",
        )
    if kind not in ("bind", "volume", "tmpfs"):
        return Refusal("--mount", f"--mount type={kind or '(none)'} is not allowed")
    return None


def _check_mounts(
    host: dict[str, Any], facts: Facts, rules: Rules, caller: Caller
) -> tuple[Refusal | None, bool, list[str]]:
    """`--mount`: binds and volumes as for `-v`, tmpfs; no other type, no host-reaching option."""
    host_mounts = False
    create: list[str] = []
    for mount in _l(host.get("Mounts")):
        kind = str(_d(mount).get("Type") or "")
        source = str(mount.get("Source") or "")
        refused = _mount_options(mount, kind, source)
        if refused is None and kind == "bind":
            path = facts.paths.get(source)
            refused = check_bind("--mount", source, path, rules)
            host_mounts = True
            mount["Source"] = path.real if path else source
        elif refused is None and kind == "volume" and source:
            refused, missing = _check_volume("--mount", source, facts, caller)
            create += missing
        if refused is not None:
            return refused, False, []
    return None, host_mounts, create


def check_user(user: str, caller: Caller, option: str) -> tuple[Refusal | None, str]:
    """With host mounts: the caller's numeric UID, and their GID or one of their groups."""
    uid, _, gid = user.partition(":")
    if not user:
        return None, f"{caller.uid}:{caller.gid}"
    if uid != str(caller.uid) or (
        gid and (not gid.isdigit() or int(gid) not in caller.gids | {caller.gid})
    ):
        return (
            Refusal(
                "--user",
                f"{option} {user}: a container that mounts host paths runs as you "
                f"({caller.uid}:{caller.gid}); give your numeric UID (and one of your GIDs) or "
                "leave --user out",
            ),
            user,
        )
    return None, f"{uid}:{gid or caller.gid}"


def _host_mount_identity(
    config: dict[str, Any], host: dict[str, Any], caller: Caller
) -> Refusal | None:
    """Host mounts: run as the caller, with no way to gain privileges inside."""
    refused, user = check_user(str(config.get("User") or ""), caller, "--user")
    if refused is not None:
        return refused
    config["User"] = user
    for group in _l(host.get("GroupAdd")):
        text = str(group)
        if not text.isdigit() or int(text) not in caller.gids | {caller.gid}:
            return Refusal(
                "--group-add",
                f"--group-add {group}: with host mounts only your own groups (numeric) are allowed",
            )
    options = [o for o in _l(host.get("SecurityOpt")) if not str(o).startswith("no-new-privileges")]
    host["SecurityOpt"] = [*options, "no-new-privileges"]
    return None


def _labels(config: Mapping[str, Any], now: datetime) -> tuple[dict[str, str], Refusal | None]:
    """The user's labels without `gpu.ds01.io/*` (keep-alive kept when it is a time)."""
    kept: dict[str, str] = {}
    for key, value in _d(config.get("Labels")).items():
        if not str(key).startswith(names.PREFIX):
            kept[str(key)] = str(value)
        elif key == names.KEEP_ALIVE:
            if not _TIME.match(str(value)):
                return kept, Refusal(
                    "--label",
                    f"--label {names.KEEP_ALIVE}={value}: give an RFC 3339 time such as "
                    f"{now.replace(microsecond=0).isoformat()}",
                )
            kept[str(key)] = str(value)
    return kept, None


def _check_devices(host: Mapping[str, Any], facts: Facts, rules: Rules) -> Refusal | None:
    """Each `--device` checked, and passed on as the resolved path."""
    for entry in _l(host.get("Devices")):
        path = str(_d(entry).get("PathOnHost") or "")
        refused = check_device(_d(entry), facts.paths.get(path), rules)
        if refused is not None:
            return refused
        entry["PathOnHost"] = facts.paths[path].real
    return None


def vet_create(
    body: Mapping[str, Any],
    *,
    name: str,
    caller: Caller,
    limits: EffectiveLimits,
    rules: Rules,
    facts: Facts,
    now: datetime,
) -> CreatePlan | Refusal:
    """Judge one canonical create body of a user; the body to send, or why not."""
    config = copy.deepcopy(dict(body))
    host = _d(config.get("HostConfig"))
    config["HostConfig"] = host
    endpoints = _d(_d(config.get("NetworkingConfig")).get("EndpointsConfig"))
    refused = (
        _check_zero(host, endpoints)
        or _check_capabilities(host, rules)
        or _check_security_opts(host)
        or _check_simple(host, rules)
        or _check_env(config)
        or _check_namespaces(host, facts)
        or _check_networks(config, host, facts, caller)
        or _check_ports(host, rules)
    )
    if refused is not None:
        return refused
    refused = _check_devices(host, facts, rules)
    if refused is not None:
        return refused
    refused, bound, volumes = _check_binds(host, facts, rules, caller)
    if refused is not None:
        return refused
    refused, mounted, more = _check_mounts(host, facts, rules, caller)
    if refused is not None:
        return refused
    host_mounts = bound or mounted
    for value in _l(host.get("VolumesFrom")):  # --volumes-from inherits the source's host mounts
        ref = next((r for r in facts.references.values() if value.startswith(r.id)), None)
        host_mounts = host_mounts or (ref is not None and ref.host_mounts)
    if host_mounts:
        refused = _host_mount_identity(config, host, caller)
        if refused is not None:
            return refused
    gpu = parse_request(_l(host.get("DeviceRequests")))
    if isinstance(gpu, NoDevices):
        return Refusal("--gpus", gpu.message, event="gpu.reject")
    policy = limits.spec.resources.per_workload if limits.spec.resources else None
    message = apply_create(host, ContainerLimits.of(policy, limits.source_of), rules.host_cpus)
    if message is not None:
        return Refusal(message.split(" ", 1)[0], message)
    restart = str(_d(host.get("RestartPolicy")).get("Name") or "")
    if gpu is not None and restart in ("always", "unless-stopped"):
        return Refusal(
            "--restart",
            f"--restart {restart}: a GPU container restarts only through the gateway "
            "(its GPUs are released after it stops); use on-failure or no",
        )
    labels, refused = _labels(config, now)
    if refused is not None:
        return refused
    kind = workload_type(name, labels)
    labels[names.WORKLOAD_TYPE] = kind
    host.pop("DeviceRequests", None)
    if rules.runtime:
        host["Runtime"] = rules.runtime
    return CreatePlan(
        config, name, gpu, kind, host_mounts, labels, tuple(dict.fromkeys(volumes + more))
    )


def finish_create(
    plan: CreatePlan,
    *,
    device_nodes: Sequence[tuple[str, str]],
    device_uuids: Sequence[str],
    signed: Mapping[str, str],
) -> dict[str, Any]:
    """The body to send: GPU device nodes mapped, the gateway's labels and NVIDIA variables set.

    ``device_nodes`` are (host path, path in the container) of the chosen
    devices and the control devices; ``signed`` the owner, devices and
    signature labels. `NVIDIA_VISIBLE_DEVICES` is the gateway's: the chosen
    UUIDs (an NVIDIA runtime, if the host has one, then mounts the driver for
    exactly those) or `void` (it exposes nothing, whatever the image says).
    """
    body = copy.deepcopy(plan.body)
    host = body["HostConfig"]
    if device_nodes:
        host["Devices"] = [
            *_l(host.get("Devices")),
            *(
                {"PathOnHost": h, "PathInContainer": c, "CgroupPermissions": "rwm"}
                for h, c in device_nodes
            ),
        ]
    env = [e for e in _l(body.get("Env")) if not str(e).upper().startswith("NVIDIA_")]
    env.append(f"NVIDIA_VISIBLE_DEVICES={','.join(device_uuids) if device_uuids else 'void'}")
    body["Env"] = env
    body["Labels"] = {**plan.labels, **signed}
    return body


def over_workloads(count: int, limits: EffectiveLimits) -> Refusal | None:
    """Refuse a create when the caller already has `rates.maxWorkloads` containers (stopped too)."""
    rates = limits.spec.rates
    limit = parse_count(rates.max_workloads) if rates and rates.max_workloads is not None else None
    if limit is None or count < limit:
        return None
    return Refusal(
        "create",
        f"you have {count} containers (stopped ones count too) and may have {limit} "
        f"({limits.source_of('rates.maxWorkloads')}); remove one with docker rm",
        status=409,
        event="quota.max_workloads",
    )
