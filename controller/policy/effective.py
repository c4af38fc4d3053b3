"""A user's effective limits: defaults, then Group limits by priority, then User limits.

The merge is field by field at the leaves: a GPURateLimit that sets only
`gpu.maxGPUEquivalents` changes only that, and everything else keeps what
lower layers gave. (DS01 replaced a user's whole group block with defaults +
override; we overlay on the group instead.) `lifecycle.byWorkloadType` merges
per workload type; other lists are replaced whole.

Every leaf remembers which object set it, so a user can be told where a limit
came from; two Group limits at the same priority that disagree on a leaf are
resolved by name (the later name wins) and reported as a conflict.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from controller.api.ratelimit import GPURateLimitSpec, LifecycleOverride
from controller.policy.defaults import BUILT_IN, DEFAULT_SOURCE

_M = TypeVar("_M", bound=BaseModel)

# Fields of GPURateLimitSpec that say whom a limit applies to, not what it limits.
_SELECTORS = frozenset({"subjects", "priority", "description"})


@dataclass(frozen=True)
class NamedLimit:
    """A GPURateLimit as the policy layer sees it: its name and spec."""

    name: str
    spec: GPURateLimitSpec

    @property
    def source(self) -> str:
        return f"GPURateLimit/{self.name}"


@dataclass(frozen=True)
class Conflict:
    """Two Group limits at one priority that set one field differently."""

    field: str
    priority: int
    winner: str
    loser: str


@dataclass(frozen=True)
class EffectiveLimits:
    """The merged limits of one user, with the origin of every field."""

    spec: GPURateLimitSpec
    sources: dict[str, str]
    applied: tuple[str, ...]
    conflicts: tuple[Conflict, ...] = field(default=())

    def source_of(self, path: str) -> str:
        """Which object set ``path`` (for example ``gpu.maxGPUEquivalents``)."""
        return self.sources.get(path, DEFAULT_SOURCE)


def applies_to(limit: GPURateLimitSpec, user: str, groups: Sequence[str]) -> str | None:
    """``"User"`` or ``"Group"`` when the limit names the user or one of their groups."""
    if any(s.kind == "User" and s.name == user for s in limit.subjects):
        return "User"
    if any(s.kind == "Group" and s.name in groups for s in limit.subjects):
        return "Group"
    return None


def _wire_name(model: type[BaseModel], name: str) -> str:
    alias = model.model_fields[name].alias
    return alias or name


def leaves(model: BaseModel, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every set leaf of a model as (dotted wire path, value)."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if value is None or (not path and name in _SELECTORS):
            continue
        key = f"{path}.{_wire_name(type(model), name)}" if path else _wire_name(type(model), name)
        if isinstance(value, BaseModel):
            yield from leaves(value, key)
        elif isinstance(value, list) and value and isinstance(value[0], LifecycleOverride):
            for override in value:
                yield from leaves(override, f"{key}[{override.type}]")
        else:
            yield key, value


class _Merger:
    """Applies layers in order, recording sources and same-priority disagreements."""

    def __init__(self, base: GPURateLimitSpec) -> None:
        self.spec = base
        self.sources: dict[str, str] = {}
        self.set_by: dict[str, tuple[str, int, str, Any]] = {}
        self.conflicts: list[Conflict] = []

    def apply(self, limit: NamedLimit, kind: str) -> None:
        for path, value in leaves(limit.spec):
            previous = self.set_by.get(path)
            if (
                previous is not None
                and previous[0] == kind == "Group"
                and previous[1] == limit.spec.priority
                and previous[3] != value
            ):
                self.conflicts.append(Conflict(path, limit.spec.priority, limit.name, previous[2]))
            self.set_by[path] = (kind, limit.spec.priority, limit.name, value)
            self.sources[path] = limit.source
        self.spec = overlay(self.spec, limit.spec, skip=_SELECTORS)


def overlay(base: _M, top: _M, skip: frozenset[str] = frozenset()) -> _M:
    """``base`` with every field ``top`` sets replaced, recursively into nested models."""
    updates: dict[str, Any] = {}
    for name in type(top).model_fields:
        value = getattr(top, name)
        if value is None or name in skip:
            continue
        current = getattr(base, name)
        if isinstance(value, BaseModel) and isinstance(current, BaseModel):
            updates[name] = overlay(current, value)
        elif name == "by_workload_type" and current:
            merged = {o.type: o for o in current}
            for override in value:
                known = merged.get(override.type)
                merged[override.type] = overlay(known, override) if known else override
            updates[name] = list(merged.values())
        else:
            updates[name] = value
    return base.model_copy(update=updates)


def effective_limits(
    user: str, groups: Sequence[str], limits: Sequence[NamedLimit]
) -> EffectiveLimits:
    """Merge the built-in defaults with every limit that names ``user`` or their groups."""
    group_layers = sorted(
        (lim for lim in limits if applies_to(lim.spec, user, groups) == "Group"),
        key=lambda lim: (lim.spec.priority, lim.name),
    )
    user_layers = sorted(
        (lim for lim in limits if applies_to(lim.spec, user, groups) == "User"),
        key=lambda lim: (lim.spec.priority, lim.name),
    )
    merger = _Merger(BUILT_IN)
    for limit in group_layers:
        merger.apply(limit, "Group")
    for limit in user_layers:
        merger.apply(limit, "User")
    return EffectiveLimits(
        spec=merger.spec,
        sources=merger.sources,
        applied=tuple(lim.name for lim in [*group_layers, *user_layers]),
        conflicts=tuple(merger.conflicts),
    )
