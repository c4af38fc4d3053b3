"""`kubectl ds01 import ds01`: DS01's `resource-limits.yaml` as GPURateLimits and accounts.

DS01 keeps one YAML: `defaults` (the base of every group), `default_group`
(where users no group lists go), `groups` (each group's differences, with
`members` or a `<group>.members` file), `user_overrides`, `container_types`
and `policies`. It maps onto:

- GPURateLimit `ds01-defaults`: `defaults`, `policies` (high demand) and
  `container_types` (`lifecycle.byWorkloadType`), for every group (priority 1);
- GPURateLimit `ds01-<group>` per group (priority 10): its own settings
  overlay the defaults field by field, as in DS01;
- GPURateLimit `ds01-user-<name>` per user override (a User limit: on top of
  the user's group, not replacing it: DS01 lost the group's values there);
- an account per member: DS01 put a user in the first group listing them, so
  each account gets that one group; users only in `user_overrides` get
  `default_group`.

DS01 wrote "no limit" as null: it becomes `Unlimited`. Keys with no
counterpart are listed in `notes`, never silently dropped. Pure: the caller
reads the files.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import yaml
from pydantic import ValidationError

from controller.api.ratelimit import GPURateLimitSpec
from controller.api.values import LINUX_USER
from controller.policy.units import format_duration

PREFIX = "ds01-"
DEFAULTS_NAME = "ds01-defaults"
UNLIMITED = "Unlimited"
WORKLOAD_TYPES = ("devcontainer", "compose", "docker", "unknown")
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*$")
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]?)[iI]?[bB]?\s*$")
_PERCENT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*$")
_LINUX_LOGIN = re.compile(LINUX_USER.pattern)
_SECTIONS = (
    "defaults",
    "default_group",
    "groups",
    "user_overrides",
    "gpu_allocation",
    "policies",
    "container_types",
)
_UNIT_SECONDS = {"": 3600, "h": 3600, "m": 60, "s": 1, "d": 86400}


class DS01FileError(ValueError):
    """DS01's file cannot be read as such; the message names the key."""


@dataclass(frozen=True)
class AccountPlan:
    user: str
    group: str
    linux_user: str | None


@dataclass(frozen=True)
class ImportPlan:
    limits: dict[str, dict[str, Any]]
    """GPURateLimit name -> spec (wire form), validated against the API model."""
    accounts: list[AccountPlan]
    notes: list[str] = field(default_factory=list)


def duration(value: Any, where: str) -> str:
    """DS01's ``0.5h``, ``24h``, ``30m``, a number of hours (``*_h`` keys) or null."""
    if value is None:
        return UNLIMITED
    match = _DURATION.match(str(value))
    if not match:
        raise DS01FileError(f"{where}: {value!r} is not a duration such as 24h or 0.5h")
    seconds = round(float(match[1]) * _UNIT_SECONDS[match[2]])
    return format_duration(timedelta(seconds=seconds))


def size(value: Any, where: str) -> str:
    """DS01's ``32g`` (Docker's binary units) as a Kubernetes quantity ``32Gi``."""
    match = _SIZE.match(str(value))
    if not match:
        raise DS01FileError(f"{where}: {value!r} is not a size such as 32g")
    unit = match[2].upper()
    number = match[1].rstrip("0").rstrip(".") if "." in match[1] else match[1]
    return f"{number}{unit}i" if unit else number


def _count(value: Any, where: str) -> int | str:
    if value is None:
        return UNLIMITED
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise DS01FileError(f"{where}: {value!r} is not a count or null")
    return int(value)


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    node = tree
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise DS01FileError(f"{where}: {value!r} is not true or false")
    return value


def _cpus(value: Any, where: str) -> str:
    if value is None:
        return UNLIMITED
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise DS01FileError(f"{where}: {value!r} is not a number of CPUs")
    return str(value)


def _size_limit(value: Any, where: str) -> str:
    return UNLIMITED if value is None else size(value, where)


_SIMPLE: dict[str, tuple[str, Callable[[Any, str], Any]]] = {
    "max_mig_per_container": ("gpu.maxDevicesPerWorkload", _count),
    "max_gpus_per_container": ("gpu.maxDevicesPerWorkload", _count),
    "allow_full_gpu": ("gpu.allowFullGPUs", _flag),
    "max_cpus": ("resources.perWorkload.cpu.max", _cpus),
    "memory": ("resources.perWorkload.memory.max", _size_limit),
    "shm_size": ("resources.perWorkload.shm.max", _size_limit),
    "pids_limit": ("resources.perWorkload.pids.max", _count),
    "max_containers_per_user": ("rates.maxWorkloads", _count),
    "max_runtime": ("lifecycle.maxRuntime", duration),
    "idle_timeout": ("lifecycle.idleTimeout", duration),
    "gpu_hold_after_stop": ("lifecycle.holdAfterStop", duration),
    "container_hold_after_stop": ("lifecycle.removeStoppedAfter", duration),
}
"""DS01 key (without a `_h` suffix: `idle_timeout_h: 2` is hours, as a bare number is)
-> spec path and conversion."""


def _settings(
    block: Mapping[str, Any], where: str, mig_per_gpu: int | None, notes: list[str]
) -> dict[str, Any]:
    """One DS01 settings block (defaults, a group, a user override) as a spec fragment."""
    tree: dict[str, Any] = {}
    for key, value in block.items():
        at = f"{where}.{key}"
        base = key.removesuffix("_h")
        if key == "members":
            continue
        if base in _SIMPLE:
            path, convert = _SIMPLE[base]
            _set(tree, path, convert(value, at))
        elif base == "max_mig_instances":
            count = _count(value, at)
            # DS01 counted a whole GPU as mig_instances_per_gpu "MIG-equivalents".
            if isinstance(count, int) and mig_per_gpu:
                count = _fraction(count, mig_per_gpu)
            _set(tree, "gpu.maxGPUEquivalents", count)
        elif key == "aggregate" and isinstance(value, Mapping):
            _aggregate(tree, value, at, notes)
        else:
            notes.append(f"{at}: not carried over (no counterpart in GPURateLimit)")
    return tree


def _fraction(count: int, per_gpu: int) -> int | str:
    whole, rest = divmod(count, per_gpu)
    return whole if rest == 0 else f"{count / per_gpu:.4f}".rstrip("0")


def _aggregate(
    tree: dict[str, Any], block: Mapping[str, Any], where: str, notes: list[str]
) -> None:
    for key, value in block.items():
        at = f"{where}.{key}"
        if key == "cpu_quota":
            match = _PERCENT.match(str(value))
            if not match:
                raise DS01FileError(f"{at}: {value!r} is not a systemd CPU quota such as 9600%")
            cpus = float(match[1]) / 100
            _set(tree, "resources.perUser.cpu", str(int(cpus)) if cpus.is_integer() else str(cpus))
        elif key == "memory_max":
            _set(tree, "resources.perUser.memory", size(value, at))
        elif key == "tasks_max":
            _set(tree, "resources.perUser.pids", _count(value, at))
        else:
            notes.append(f"{at}: not carried over (no counterpart in GPURateLimit)")


def _common(doc: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    """`policies` and `container_types`: lifecycle settings every group shares."""
    tree: dict[str, Any] = {}
    policies = doc.get("policies") or {}
    for key, path in (
        ("high_demand_threshold", "lifecycle.highDemandThresholdPercent"),
        ("high_demand_idle_reduction", "lifecycle.highDemandIdlePercent"),
    ):
        if key in policies:
            _set(tree, path, round(float(policies[key]) * 100))
    for key in policies:
        if key not in ("high_demand_threshold", "high_demand_idle_reduction"):
            notes.append(f"policies.{key}: not carried over (no counterpart in GPURateLimit)")
    overrides = []
    for kind, block in (doc.get("container_types") or {}).items():
        at = f"container_types.{kind}"
        if kind not in WORKLOAD_TYPES:
            notes.append(
                f"{at}: not carried over (not a workload type: {', '.join(WORKLOAD_TYPES)})"
            )
            continue
        entry: dict[str, Any] = {"type": kind}
        for key, target in (("idle_timeout", "idleTimeout"), ("max_runtime", "maxRuntime")):
            if key in block:
                entry[target] = duration(block[key], f"{at}.{key}")
        if "default_mig_count" in block:
            notes.append(
                f"{at}.default_mig_count: not carried over (devices come from each request)"
            )
        overrides.append(entry)
    if overrides:
        _set(tree, "lifecycle.byWorkloadType", overrides)
    return tree


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def limit_name(text: str) -> str:
    return re.sub(r"[^a-z0-9.-]+", "-", text.lower()).strip("-.")[:200] or "x"


def _validated(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    try:
        return GPURateLimitSpec.model_validate(spec).to_wire()
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DS01FileError(f"GPURateLimit {name}: {where}: {first['msg']}") from None


def translate(
    doc: Mapping[str, Any],
    members: Mapping[str, Sequence[str]] | None = None,
    domain: str | None = None,
) -> ImportPlan:
    """The GPURateLimits and accounts DS01's file describes, with what was left out.

    ``members`` adds `<group>.members` lists to the file's own; ``domain``
    turns DS01 logins without one into user names (``alice`` -> ``alice@domain``).
    """
    if not isinstance(doc, Mapping) or not isinstance(doc.get("groups"), Mapping):
        raise DS01FileError("groups: DS01's resource-limits.yaml has a mapping of groups")
    notes: list[str] = [
        f"{key}: not carried over (no counterpart in GPURateLimit)"
        for key in doc
        if key not in _SECTIONS
    ]
    allocation = doc.get("gpu_allocation") or {}
    notes += [
        f"gpu_allocation.{key}: not carried over (the agents report the devices)"
        for key in allocation
        if key != "mig_instances_per_gpu"
    ]
    per_gpu = allocation.get("mig_instances_per_gpu")
    if per_gpu is not None and (not isinstance(per_gpu, int) or per_gpu < 1):
        raise DS01FileError(
            f"gpu_allocation.mig_instances_per_gpu: {per_gpu!r} is not a positive count"
        )
    groups: Mapping[str, Any] = doc["groups"]
    default_group = str(doc.get("default_group") or "student")
    group_names = list(groups) + ([default_group] if default_group not in groups else [])
    subjects = [{"kind": "Group", "name": g} for g in group_names]
    defaults = _merge(
        _settings(doc.get("defaults") or {}, "defaults", per_gpu, notes), _common(doc, notes)
    )
    limits = {
        DEFAULTS_NAME: _validated(
            DEFAULTS_NAME,
            {
                "subjects": subjects,
                "priority": 1,
                "description": "Imported from DS01: defaults, policies, container_types",
                **defaults,
            },
        )
    }
    for group, block in groups.items():
        name = PREFIX + limit_name(group)
        spec = _settings(block or {}, f"groups.{group}", per_gpu, notes)
        limits[name] = _validated(
            name,
            {
                "subjects": [{"kind": "Group", "name": group}],
                "priority": 10,
                "description": f"Imported from DS01: group {group}",
                **spec,
            },
        )
    placed: dict[str, str] = {}
    for group, block in groups.items():
        listed = list((block or {}).get("members") or []) + list((members or {}).get(group, []))
        for login in listed:
            placed.setdefault(str(login), group)  # DS01: the first group listing the user
    overrides = doc.get("user_overrides") or {}
    for login, block in overrides.items():
        user = _user(str(login), domain)
        name = f"{PREFIX}user-{limit_name(user)}"
        spec = _settings(block or {}, f"user_overrides.{login}", per_gpu, notes)
        limits[name] = _validated(
            name,
            {
                "subjects": [{"kind": "User", "name": user}],
                "priority": 10,
                "description": f"Imported from DS01: overrides for {login}",
                **spec,
            },
        )
        placed.setdefault(str(login), default_group)
    accounts = []
    for login, group in placed.items():
        user = _user(login, domain)
        linux = login if _LINUX_LOGIN.match(login) and len(login) <= 32 else None
        if linux is None:
            notes.append(
                f"{login}: no Linux login set (not a login name this system accepts); "
                f"set it with `kubectl ds01 onboard {user} --groups {group} --linux-user ...`"
            )
        accounts.append(AccountPlan(user, group, linux))
    return ImportPlan(limits, sorted(accounts, key=lambda a: a.user), notes)


def _user(login: str, domain: str | None) -> str:
    return f"{login}@{domain}" if domain and "@" not in login else login


@dataclass(frozen=True)
class Change:
    """What applying would do to one object."""

    what: str
    """`GPURateLimit/ds01-student`, `Namespace/u-kim`..."""
    action: str
    """`create`, `update` or `unchanged`."""
    diff: str = ""
    """A unified diff of the object's content (YAML), for create and update."""


def change(what: str, current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> Change:
    """Compare the stored content of an object with what the import wants."""
    before = [] if current is None else _yaml(current).splitlines(keepends=True)
    after = _yaml(desired).splitlines(keepends=True)
    if current is not None and before == after:
        return Change(what, "unchanged")
    text = "".join(difflib.unified_diff(before, after, f"{what} (cluster)", f"{what} (import)"))
    return Change(what, "create" if current is None else "update", text)


def _yaml(content: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(content), sort_keys=True, allow_unicode=True)
