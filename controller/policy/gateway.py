"""What the Docker gateway lets a user ask of the engine. Pure.

On a Docker host whoever talks to the engine is root. The gateway stands in
front of it for users, and this module decides, for one request, whether it
stays inside a normal container (and inside the caller's policy) or escapes:

- options that hand the container the host are refused, each naming the
  `docker run` flag: `--privileged`, dangerous `--cap-add`, `--cgroup-parent`,
  GPU and other host-owning devices, `--device-cgroup-rule`, `NVIDIA_*`
  variables, runtimes other than runc, host namespaces, other users'
  containers' namespaces and volumes, unconfined security profiles, and bind
  mounts outside the caller's bind roots or of /proc, /sys, /dev and the
  engine's socket;
- a container that mounts host paths runs as its caller's UID with
  `no-new-privileges`: files it writes there are the caller's, never a
  setuid-root program the caller could run on the host;
- `gpu.ds01.io/*` labels are the gateway's (only the keep-alive request is
  the user's), and every container gets a name, since the signed labels bind it;
- per-container resources come from the effective policy (`resources.py`),
  GPUs from `gpuchoice.py`.

The gateway gathers the host facts first (`needs` says which: paths to
resolve and stat, containers to look up) and passes them in.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from controller.api.ratelimit import WorkloadType
from controller.policy.effective import EffectiveLimits
from controller.policy.gpuchoice import GpuRequest, NoDevices, parse_request
from controller.policy.resources import ContainerLimits, apply_create, check_update
from controller.policy.units import parse_count

LABEL_PREFIX = "gpu.ds01.io/"
KEEP_ALIVE_LABEL = f"{LABEL_PREFIX}keep-alive"
"""The one `gpu.ds01.io/` label a user sets: a bounded opt-out of idle reaping."""
TYPE_LABEL = f"{LABEL_PREFIX}workload-type"

DANGEROUS_CAPABILITIES = frozenset(
    {
        "ALL",
        "SYS_ADMIN",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_PTRACE",
        "SYS_BOOT",
        "SYS_TIME",
        "DAC_READ_SEARCH",
        "MAC_ADMIN",
        "MAC_OVERRIDE",
        "BPF",
        "PERFMON",
        "SYSLOG",
    }
)
"""Capabilities that reach past the container: the kernel, other processes, raw files."""

HOST_DEVICE_MAJORS = {1: "host memory (/dev/mem, /dev/kmem, /dev/port)", 202: "CPU MSRs"}
_GPU_PATH = re.compile(r"(^|/)nvidia[^/]*(/|$)")
_NAME = re.compile(r"[^a-zA-Z0-9_.-]+")
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")

PathKind = Literal["char", "block", "dir", "file", "socket", "missing", "other"]


@dataclass(frozen=True)
class Refusal:
    """A request the gateway will not pass on, in words the docker CLI prints."""

    option: str
    """The option at fault, as `docker` spells it (`--privileged`)."""
    message: str
    status: int = 403
    event: str = "container.refused"
    """The audit event type (`container.refused`, `gpu.reject`, `auth.denied`)."""


@dataclass(frozen=True)
class Caller:
    """Who is asking: their account (or login) and their Linux identity."""

    owner: str
    """The account user, or the login (or `uid-N`) for users without an account."""
    login: str | None
    uid: int
    gid: int
    gids: frozenset[int] = frozenset()
    """Every group the login belongs to."""


@dataclass(frozen=True)
class PathFacts:
    """A host path a request names, as the gateway found it on the host."""

    real: str
    """The path with every symlink resolved (what is passed on to the engine)."""
    kind: PathKind
    numbers: frozenset[tuple[int, int]] = frozenset()
    """Character devices at or under it (major, minor)."""
    block: bool = False
    """Whether a block device is at or under it."""


@dataclass(frozen=True)
class Reference:
    """A container another names (`--network container:X`, `--volumes-from X`, `--link X`)."""

    id: str
    owned: bool
    host_mounts: bool


@dataclass(frozen=True)
class Rules:
    """The gateway's settings, as they apply to one caller."""

    bind_roots: tuple[str, ...]
    """Resolved host directories the caller may bind (their home by default)."""
    protected: tuple[str, ...]
    """Paths never bound, nor any directory holding them (engine sockets, /proc, /sys, /dev)."""
    gpu_numbers: frozenset[tuple[int, int]]
    """Device numbers of GPUs, MIG capabilities and the NVIDIA control devices."""
    gpu_majors: frozenset[int]
    runtimes: frozenset[str] = frozenset({"runc"})
    host_cpus: int | None = None
    """CPUs the engine can give a container (defaults are cut to it)."""


@dataclass(frozen=True)
class Needs:
    """What the gateway must look up before deciding a create."""

    binds: tuple[str, ...] = ()
    """Host paths bound in (resolved, not walked)."""
    devices: tuple[str, ...] = ()
    """Host paths mapped as devices (resolved, and walked when a directory)."""
    references: tuple[str, ...] = ()
    """Containers named by other options."""


@dataclass
class CreatePlan:
    """An allowed create: the body to send (before GPUs and signature) and what it asks for."""

    body: dict[str, Any]
    name: str
    gpu: GpuRequest | None
    workload_type: WorkloadType
    host_mounts: bool
    labels: dict[str, str] = field(default_factory=dict)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _bind_parts(bind: str) -> tuple[str, str]:
    """(source, rest) of a `Binds` entry `source:dest[:options]`."""
    source, _, rest = bind.partition(":")
    return source, rest


def _mode_target(mode: Any) -> str | None:
    """X of `container:X` in NetworkMode, PidMode, IpcMode."""
    text = str(mode or "")
    return text.split(":", 1)[1] if text.startswith("container:") else None


def _references(host: Mapping[str, Any]) -> list[str]:
    names = [_mode_target(host.get(k)) for k in ("NetworkMode", "PidMode", "IpcMode")]
    names += [str(v).split(":", 1)[0] for v in _list(host.get("VolumesFrom"))]
    names += [str(v).split(":", 1)[0].lstrip("/") for v in _list(host.get("Links"))]
    return [n for n in names if n]


def needs(body: Mapping[str, Any]) -> Needs:
    """The host paths and containers a create body names."""
    host = _dict(body.get("HostConfig"))
    devices = [
        str(d.get("PathOnHost") or "") for d in _list(host.get("Devices")) if isinstance(d, dict)
    ]
    binds = [_bind_parts(str(b))[0] for b in _list(host.get("Binds"))]
    binds += [
        str(m.get("Source") or "")
        for m in _list(host.get("Mounts"))
        if isinstance(m, dict) and m.get("Type") == "bind"
    ]
    return Needs(
        binds=tuple(dict.fromkeys(p for p in binds if p.startswith("/"))),
        devices=tuple(dict.fromkeys(p for p in devices if p)),
        references=tuple(dict.fromkeys(_references(host))),
    )


def workload_type(name: str, labels: Mapping[str, str]) -> WorkloadType:
    """DS01's container types: VS Code devcontainers, compose services, raw `docker run`."""
    if name.startswith("vsc-") or any(k.startswith("devcontainer.") for k in labels):
        return "devcontainer"
    if any(k.startswith("com.docker.compose.") for k in labels):
        return "compose"
    return "docker"


def container_name(requested: str | None, owner: str, token: str) -> str:
    """The name to create under: the caller's, or `<owner>-<token>` (a signature binds it)."""
    if requested:
        return requested.lstrip("/")
    stem = _NAME.sub("-", owner).strip("-.")[:40] or "ds01"
    return f"{stem}-{token}"


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _check_bind(option: str, given: str, facts: PathFacts | None, rules: Rules) -> Refusal | None:
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


def _check_device(
    entry: Mapping[str, Any], facts: PathFacts | None, rules: Rules
) -> Refusal | None:
    given = str(entry.get("PathOnHost") or "")
    real = facts.real if facts is not None else given
    numbers = facts.numbers if facts is not None else frozenset()
    if (
        _GPU_PATH.search(given)
        or _GPU_PATH.search(real)
        or numbers & rules.gpu_numbers
        or any(major in rules.gpu_majors for major, _ in numbers)
    ):
        return Refusal(
            "--device",
            f"--device {given}: GPU devices are given by the gateway; ask with --gpus N",
            event="gpu.reject",
        )
    if facts is not None and facts.block:
        return Refusal("--device", f"--device {given}: block devices are not allowed")
    for major, what in HOST_DEVICE_MAJORS.items():
        if any(m == major for m, _ in numbers):
            return Refusal("--device", f"--device {given}: {what} is not allowed")
    return None


def _check_modes(host: Mapping[str, Any], refs: Mapping[str, Reference]) -> Refusal | None:
    flags = {
        "NetworkMode": "--network",
        "PidMode": "--pid",
        "IpcMode": "--ipc",
        "UTSMode": "--uts",
        "UsernsMode": "--userns",
        "CgroupnsMode": "--cgroupns",
    }
    for key, flag in flags.items():
        mode = str(host.get(key) or "")
        if mode == "host" and key != "CgroupnsMode":
            return Refusal(flag, f"{flag} host: containers may not share the host's namespaces")
        target = _mode_target(mode)
        if target is not None:
            ref = refs.get(target)
            if ref is not None and not ref.owned:
                return Refusal(flag, f"{flag} {mode}: that container is not yours")
    for key, flag in (("VolumesFrom", "--volumes-from"), ("Links", "--link")):
        for value in _list(host.get(key)):
            target = str(value).split(":", 1)[0].lstrip("/")
            ref = refs.get(target)
            if ref is not None and not ref.owned:
                return Refusal(flag, f"{flag} {value}: that container is not yours")
    return None


def _check_security(host: Mapping[str, Any]) -> Refusal | None:
    if host.get("Privileged"):
        return Refusal(
            "--privileged", "--privileged is not allowed: it gives the container the host"
        )
    for cap in _list(host.get("CapAdd")):
        name = str(cap).upper().removeprefix("CAP_")
        if name in DANGEROUS_CAPABILITIES:
            return Refusal(
                "--cap-add",
                f"--cap-add {cap}: this capability reaches past the container and is not allowed",
            )
    if host.get("CgroupParent"):
        return Refusal(
            "--cgroup-parent",
            f"--cgroup-parent {host['CgroupParent']}: containers stay in the engine's cgroups",
        )
    if _list(host.get("DeviceCgroupRules")):
        return Refusal(
            "--device-cgroup-rule", "--device-cgroup-rule: device access is decided by the gateway"
        )
    for option in _list(host.get("SecurityOpt")):
        text = str(option).replace(":", "=", 1)
        key, _, value = text.partition("=")
        if (
            key in ("seccomp", "apparmor")
            or (key == "systempaths" and value == "unconfined")
            or (key == "label" and value == "disable")
        ):
            return Refusal(
                "--security-opt",
                f"--security-opt {option}: containers keep the engine's default confinement",
            )
    for key in ("MaskedPaths", "ReadonlyPaths"):
        if host.get(key) is not None:
            return Refusal(
                "--security-opt", f"{key}: containers keep the engine's default masked paths"
            )
    if _int(host.get("OomScoreAdj")) < 0:
        return Refusal(
            "--oom-score-adj",
            "--oom-score-adj: a negative value would shield it from the OOM killer",
        )
    if host.get("VolumeDriver") not in (None, "", "local"):
        return Refusal("--volume-driver", "--volume-driver: only the local driver is available")
    return None


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _check_runtime(host: Mapping[str, Any], rules: Rules) -> Refusal | None:
    runtime = str(host.get("Runtime") or "")
    if runtime and runtime not in rules.runtimes:
        return Refusal(
            "--runtime",
            f"--runtime {runtime}: only {', '.join(sorted(rules.runtimes))} is allowed; ask for "
            "GPUs with --gpus N (the gateway maps the devices)",
        )
    return None


def _check_env(config: Mapping[str, Any]) -> Refusal | None:
    for entry in _list(config.get("Env")):
        name = str(entry).split("=", 1)[0]
        if name.upper().startswith("NVIDIA_"):
            return Refusal(
                "--env",
                f"--env {name}: NVIDIA_* variables are set by the gateway; ask for GPUs with "
                "--gpus N",
                event="gpu.reject",
            )
    return None


def _check_mounts(
    host: dict[str, Any], paths: Mapping[str, PathFacts], rules: Rules
) -> tuple[Refusal | None, bool]:
    """Check binds and mounts, rewriting host sources to their resolved paths."""
    host_mounts = False
    binds = []
    for bind in _list(host.get("Binds")):
        source, rest = _bind_parts(str(bind))
        if source.startswith("/"):
            refused = _check_bind("--volume", source, paths.get(source), rules)
            if refused is not None:
                return refused, host_mounts
            host_mounts = True
            facts = paths.get(source)
            binds.append(f"{facts.real if facts else source}:{rest}")
        else:
            binds.append(str(bind))
    if "Binds" in host and host["Binds"] is not None:
        host["Binds"] = binds
    for mount in _list(host.get("Mounts")):
        if not isinstance(mount, dict):
            continue
        kind = mount.get("Type")
        source = str(mount.get("Source") or "")
        if kind == "bind":
            refused = _check_bind("--mount", source, paths.get(source), rules)
            if refused is not None:
                return refused, host_mounts
            host_mounts = True
            facts = paths.get(source)
            mount["Source"] = facts.real if facts else source
        elif kind == "volume":
            driver = _dict(_dict(mount.get("VolumeOptions")).get("DriverConfig"))
            if driver.get("Name") not in (None, "", "local") or _dict(driver.get("Options")):
                return Refusal(
                    "--mount",
                    f"--mount volume {source or '(anonymous)'}: volume driver options are not "
                    "allowed (they can mount host paths)",
                ), host_mounts
        elif kind not in ("tmpfs", None):
            return Refusal("--mount", f"--mount type={kind} is not allowed"), host_mounts
    return None, host_mounts


def _check_user(config: dict[str, Any], host: dict[str, Any], caller: Caller) -> Refusal | None:
    """Host mounts: run as the caller, with no way to gain privileges inside."""
    user = str(config.get("User") or "")
    if user:
        uid, _, gid = user.partition(":")
        if uid != str(caller.uid) or (
            gid and (not gid.isdigit() or int(gid) not in caller.gids | {caller.gid})
        ):
            return Refusal(
                "--user",
                f"--user {user}: a container that mounts host paths runs as you "
                f"({caller.uid}:{caller.gid}); give your numeric UID or leave --user out",
            )
    else:
        config["User"] = f"{caller.uid}:{caller.gid}"
    for group in _list(host.get("GroupAdd")):
        text = str(group)
        if not text.isdigit() or int(text) not in caller.gids | {caller.gid}:
            return Refusal(
                "--group-add",
                f"--group-add {group}: with host mounts only your own groups (numeric) are allowed",
            )
    options = [
        o for o in _list(host.get("SecurityOpt")) if not str(o).startswith("no-new-privileges")
    ]
    host["SecurityOpt"] = [*options, "no-new-privileges"]
    return None


def _labels(config: Mapping[str, Any], now: datetime) -> tuple[dict[str, str], Refusal | None]:
    """The user's labels without `gpu.ds01.io/*` (keep-alive kept when it is a time)."""
    kept: dict[str, str] = {}
    for key, value in _dict(config.get("Labels")).items():
        if not str(key).startswith(LABEL_PREFIX):
            kept[str(key)] = str(value)
        elif key == KEEP_ALIVE_LABEL:
            if not _TIME.match(str(value)):
                return kept, Refusal(
                    "--label",
                    f"--label {KEEP_ALIVE_LABEL}={value}: give an RFC 3339 time such as "
                    f"{now.replace(microsecond=0).isoformat()}",
                )
            kept[str(key)] = str(value)
    return kept, None


def _check_options(
    config: dict[str, Any],
    host: dict[str, Any],
    *,
    rules: Rules,
    paths: Mapping[str, PathFacts],
    references: Mapping[str, Reference],
) -> Refusal | None:
    """Everything that would let the container escape, in the order a user meets them."""
    refused = (
        _check_security(host)
        or _check_runtime(host, rules)
        or _check_env(config)
        or _check_modes(host, references)
    )
    if refused is not None:
        return refused
    for entry in _list(host.get("Devices")):
        if isinstance(entry, dict):
            refused = _check_device(entry, paths.get(str(entry.get("PathOnHost") or "")), rules)
            if refused is not None:
                return refused
    return None


def vet_create(
    body: Mapping[str, Any],
    *,
    name: str,
    caller: Caller,
    limits: EffectiveLimits,
    rules: Rules,
    paths: Mapping[str, PathFacts],
    references: Mapping[str, Reference],
    now: datetime,
) -> CreatePlan | Refusal:
    """Check one `POST /containers/create` of a user; the rewritten body, or why not."""
    config = copy.deepcopy(dict(body))
    host = config.get("HostConfig")
    if not isinstance(host, dict):
        host = config["HostConfig"] = {}
    refused = _check_options(config, host, rules=rules, paths=paths, references=references)
    if refused is not None:
        return refused
    refused, host_mounts = _check_mounts(host, paths, rules)
    if refused is not None:
        return refused
    for target in _volume_sources(host):  # --volumes-from inherits the source's host mounts
        ref = references.get(target)
        host_mounts = host_mounts or (ref is not None and ref.host_mounts)
    _pin_references(host, references)
    if host_mounts:
        refused = _check_user(config, host, caller)
        if refused is not None:
            return refused
    gpu = parse_request(_list(host.get("DeviceRequests")))
    if isinstance(gpu, NoDevices):
        return Refusal("--gpus", gpu.message, event="gpu.reject")
    policy = limits.spec.resources.per_workload if limits.spec.resources else None
    message = apply_create(host, ContainerLimits.of(policy, limits.source_of), rules.host_cpus)
    if message is not None:
        return Refusal(message.split(" ", 1)[0], message)
    restart = str(_dict(host.get("RestartPolicy")).get("Name") or "")
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
    labels[TYPE_LABEL] = kind
    host.pop("DeviceRequests", None)
    return CreatePlan(config, name, gpu, kind, host_mounts, labels)


def _volume_sources(host: Mapping[str, Any]) -> set[str]:
    return {str(v).split(":", 1)[0] for v in _list(host.get("VolumesFrom"))}


def _pin_references(host: dict[str, Any], references: Mapping[str, Reference]) -> None:
    """Name referenced containers by ID, so a rename or re-creation cannot swap them."""
    for key in ("NetworkMode", "PidMode", "IpcMode"):
        target = _mode_target(host.get(key))
        if target is not None and target in references:
            host[key] = f"container:{references[target].id}"
    volumes = []
    for value in _list(host.get("VolumesFrom")):
        target, sep, mode = str(value).partition(":")
        ref = references.get(target)
        volumes.append(f"{ref.id}{sep}{mode}" if ref else str(value))
    if host.get("VolumesFrom"):
        host["VolumesFrom"] = volumes


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
        mapped = _list(host.get("Devices"))
        mapped += [
            {"PathOnHost": h, "PathInContainer": c, "CgroupPermissions": "rwm"}
            for h, c in device_nodes
        ]
        host["Devices"] = mapped
    env = [e for e in _list(body.get("Env")) if not str(e).upper().startswith("NVIDIA_")]
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


def vet_update(
    body: Mapping[str, Any], *, limits: EffectiveLimits, gpu_container: bool
) -> dict[str, Any] | Refusal:
    """Check a `POST /containers/{id}/update`: resources within the maxima, nothing else added."""
    out = copy.deepcopy(dict(body))
    for key, flag in (
        ("Devices", "--device"),
        ("DeviceCgroupRules", "--device-cgroup-rule"),
        ("DeviceRequests", "--gpus"),
    ):
        if _list(out.get(key)):
            return Refusal(flag, f"{flag}: devices cannot be changed by an update")
    restart = str(_dict(out.get("RestartPolicy")).get("Name") or "")
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


def vet_exec(body: Mapping[str, Any], *, caller: Caller, host_mounts: bool) -> Refusal | None:
    """Check a `POST /containers/{id}/exec`: not privileged, not root where host paths are."""
    if body.get("Privileged"):
        return Refusal("--privileged", "docker exec --privileged is not allowed")
    user = str(body.get("User") or "")
    if host_mounts and user and user.partition(":")[0] != str(caller.uid):
        return Refusal(
            "--user",
            f"docker exec --user {user}: this container mounts host paths and runs only as you "
            f"({caller.uid})",
        )
    return None
