"""Which Docker API requests a user may make: an explicit allow-list of routes.

Deny by default: a request that matches no route here is refused, whatever
dockerd would have done with it. Each route names its handler (what the
gateway does with it), the query parameters it accepts (anything else is
refused, so a parameter the gateway does not judge never reaches the engine)
and which of them may repeat. Admin-only API families (swarm, plugins,
BuildKit's raw gRPC, cache and image pruning of everyone's objects) have no
route: admins reach the engine unchanged, around this table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from controller.policy.docker.target import Target

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
"""Container, exec, network and volume names and IDs (Docker's own name rule)."""

Handler = str
"""What the gateway does: `relay` (as is, canonical), `container` (the caller's own, pinned
to its ID), `create`, `exec`, `update`, `start`, ... (see `controller.agent.gateway.routes`)."""


@dataclass(frozen=True)
class Route:
    method: str
    pattern: tuple[str, ...]
    """Literal segments, `{c}` (one name or ID), or `{image}` (one or more segments)."""
    handler: Handler
    params: frozenset[str] = frozenset()
    repeated: frozenset[str] = frozenset()
    """Parameters that may be given more than once with different values."""
    body: str | None = None
    """What the body is: None (no body allowed), `json` (read and canonicalised), `raw` (a tar
    stream or credentials relayed with the gateway's own framing)."""
    upgrade: bool = False
    """Whether the connection may be hijacked (attach, exec start, BuildKit session)."""


def _r(
    method: str,
    path: str,
    handler: Handler,
    params: str = "",
    *,
    repeated: str = "",
    body: str | None = None,
    upgrade: bool = False,
) -> Route:
    return Route(
        method,
        tuple(path.split("/")),
        handler,
        frozenset(params.split()),
        frozenset(repeated.split()),
        body,
        upgrade,
    )


_ATTACH = "detachKeys logs stream stdin stdout stderr"
_LOGS = "follow stdout stderr since until timestamps tail details"
_BUILD = (
    "dockerfile t extrahosts q nocache cachefrom pull rm forcerm memory memswap cpushares "
    "cpusetcpus cpuperiod cpuquota buildargs shmsize squash labels networkmode platform target "
    "outputs version session buildid isolation ulimits cgroupparent remote"
)

ROUTES: tuple[Route, ...] = (
    _r("GET", "_ping", "relay"),
    _r("HEAD", "_ping", "relay"),
    _r("GET", "version", "relay"),
    _r("GET", "info", "relay"),
    _r("GET", "events", "events", "since until filters"),
    _r("GET", "system/df", "df", "type", repeated="type"),
    _r("POST", "auth", "relay", body="json-auth"),
    _r("POST", "session", "relay", upgrade=True),
    # containers
    _r("GET", "containers/json", "list-containers", "all limit size filters before since"),
    _r("POST", "containers/create", "create", "name platform", body="json"),
    _r("POST", "containers/prune", "prune-containers", "filters"),
    _r("GET", "containers/{c}/json", "container", "size"),
    _r("GET", "containers/{c}/top", "container", "ps_args"),
    _r("GET", "containers/{c}/logs", "container", _LOGS),
    _r("GET", "containers/{c}/changes", "container"),
    _r("GET", "containers/{c}/export", "container"),
    _r("GET", "containers/{c}/stats", "container", "stream one-shot"),
    _r("POST", "containers/{c}/resize", "container", "h w"),
    _r("POST", "containers/{c}/start", "start", "detachKeys", body="empty"),
    _r("POST", "containers/{c}/stop", "container", "t signal"),
    _r("POST", "containers/{c}/restart", "start", "t signal"),
    _r("POST", "containers/{c}/kill", "container", "signal"),
    _r("POST", "containers/{c}/update", "update", body="json"),
    _r("POST", "containers/{c}/rename", "rename", "name"),
    _r("POST", "containers/{c}/pause", "container"),
    _r("POST", "containers/{c}/unpause", "container"),
    _r("POST", "containers/{c}/attach", "container", _ATTACH, upgrade=True),
    _r("GET", "containers/{c}/attach/ws", "container", _ATTACH, upgrade=True),
    _r("POST", "containers/{c}/wait", "container", "condition"),
    _r("DELETE", "containers/{c}", "remove-container", "v force link"),
    _r("HEAD", "containers/{c}/archive", "container", "path"),
    _r("GET", "containers/{c}/archive", "container", "path"),
    _r(
        "PUT",
        "containers/{c}/archive",
        "copy-in",
        "path noOverwriteDirNonDir copyUIDGID",
        body="raw",
    ),
    _r("POST", "containers/{c}/exec", "exec", body="json"),
    _r("POST", "exec/{e}/start", "exec-start", body="json", upgrade=True),
    _r("POST", "exec/{e}/resize", "exec-use", "h w"),
    _r("GET", "exec/{e}/json", "exec-use"),
    # images (shared by everyone on the host: no owners)
    _r("GET", "images/json", "relay", "all filters shared-size digests manifests"),
    _r("POST", "build", "build", _BUILD, repeated="t extrahosts", body="raw"),
    _r("POST", "build/cancel", "relay", "id"),
    _r(
        "POST",
        "images/create",
        "pull",
        "fromImage fromSrc repo tag message changes platform",
        repeated="changes",
        body="raw",
    ),
    _r("GET", "images/get", "relay", "names platform", repeated="names"),
    _r("POST", "images/load", "relay", "quiet platform", body="raw"),
    _r("GET", "images/search", "relay", "term limit filters"),
    _r("GET", "images/{image}/json", "relay", "manifests"),
    _r("GET", "images/{image}/history", "relay", "platform"),
    _r("POST", "images/{image}/push", "relay", "tag platform"),
    _r("POST", "images/{image}/tag", "relay", "repo tag"),
    _r("GET", "images/{image}/get", "relay", "platform"),
    _r("DELETE", "images/{image}", "relay", "force noprune"),
    _r("GET", "distribution/{image}/json", "relay"),
    _r(
        "POST",
        "commit",
        "commit",
        "container repo tag comment author pause changes",
        repeated="changes",
        body="json-config",
    ),
    # networks and volumes (owned by their creator)
    _r("GET", "networks", "list-networks", "filters"),
    _r("POST", "networks/create", "create-network", body="json"),
    _r("POST", "networks/prune", "prune-networks", "filters"),
    _r("GET", "networks/{n}", "network", "verbose scope"),
    _r("POST", "networks/{n}/connect", "network-connect", body="json"),
    _r("POST", "networks/{n}/disconnect", "network-connect", body="json"),
    _r("DELETE", "networks/{n}", "network"),
    _r("GET", "volumes", "list-volumes", "filters"),
    _r("POST", "volumes/create", "create-volume", body="json"),
    _r("POST", "volumes/prune", "prune-volumes", "filters"),
    _r("GET", "volumes/{v}", "volume"),
    _r("DELETE", "volumes/{v}", "volume", "force"),
)

ADMIN_FAMILIES = frozenset(
    {"plugins", "swarm", "services", "nodes", "secrets", "configs", "tasks", "grpc"}
)


@dataclass(frozen=True)
class Match:
    """A request matched to its route: the named parts and the canonical query."""

    route: Route
    target: Target
    names: Mapping[str, str]
    """`c`, `e`, `n`, `v` -> the name in the path; `image` -> the image reference."""
    params: Mapping[str, tuple[str, ...]]
    """Each given parameter's values, in order, equal repeats collapsed."""

    def param(self, name: str) -> str | None:
        values = self.params.get(name)
        return values[0] if values else None


class RouteError(ValueError):
    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


def _bind(pattern: tuple[str, ...], segments: tuple[str, ...]) -> dict[str, str] | None:
    if "{image}" not in pattern:
        if len(pattern) != len(segments):
            return None
        names = {}
        for want, got in zip(pattern, segments, strict=True):
            if want.startswith("{"):
                if not _NAME.match(got):
                    return None
                names[want[1:-1]] = got
            elif want != got:
                return None
        return names
    at = pattern.index("{image}")
    tail = len(pattern) - at - 1
    if len(segments) < len(pattern) or segments[:at] != pattern[:at]:
        return None
    if tail and segments[-tail:] != pattern[at + 1 :]:
        return None
    return {"image": "/".join(segments[at : len(segments) - tail])}


def match(method: str, target: Target) -> Match:
    """The route of a request, with its parameters checked; RouteError when there is none."""
    top = target.segments[0]
    if top in ADMIN_FAMILIES:
        raise RouteError(f"{top} are for admins on this host")
    allowed_methods = set()
    for route in ROUTES:
        names = _bind(route.pattern, target.segments)
        if names is None:
            continue
        if route.method != method:
            allowed_methods.add(route.method)
            continue
        return Match(route, target, names, _params(route, target))
    if allowed_methods:
        raise RouteError(
            f"{method} {target.path} is not available through the gateway "
            f"(allowed: {', '.join(sorted(allowed_methods))})",
            status=405,
        )
    raise RouteError(
        f"{method} {target.path} is not an API request the gateway passes on to users; "
        "ask an admin if you need it"
    )


def _params(route: Route, target: Target) -> dict[str, tuple[str, ...]]:
    params: dict[str, list[str]] = {}
    for key, value in target.query:
        if key not in route.params:
            known = ", ".join(sorted(route.params)) or "none"
            raise RouteError(
                f"query parameter {key!r} is not accepted on {route.method} "
                f"/{'/'.join(route.pattern)} (accepted: {known})",
                status=400,
            )
        seen = params.setdefault(key, [])
        if value in seen:
            continue
        if seen and key not in route.repeated:
            raise RouteError(
                f"query parameter {key!r} is given twice with different values "
                f"({seen[0]!r}, {value!r}); dockerd would read only the first",
                status=400,
            )
        seen.append(value)
    return {k: tuple(v) for k, v in params.items()}


def canonical(found: Match, **replace: str) -> Target:
    """The target to forward: the route's own path (names replaced, e.g. by IDs) and query."""
    names = {**found.names, **replace}
    segments: list[str] = []
    for part in found.route.pattern:
        if part == "{image}":
            segments += names["image"].split("/")
        elif part.startswith("{"):
            segments.append(names[part[1:-1]])
        else:
            segments.append(part)
    query = tuple((k, v) for k, values in found.params.items() for v in values)
    return Target(found.target.version, tuple(segments), query)
