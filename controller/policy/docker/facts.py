"""What a Docker decision is about: who asks, what they name on the host, and the rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PathKind = Literal["char", "block", "dir", "file", "socket", "missing", "other"]


@dataclass(frozen=True)
class Refusal:
    """A request the gateway will not pass on, in words the docker CLI prints."""

    option: str
    """The option at fault, as `docker` spells it (`--privileged`)."""
    message: str
    status: int = 403
    event: str = "container.refused"
    """The audit event type (`container.refused`, `gpu.reject`, `auth.denied`, ...)."""


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
    writable: bool = False
    """Whether a user other than root could change what the path leads to: a directory on
    the way (or the link itself) is owned by, or writable for, someone other than root."""
    linked: bool = False
    """Whether the path as given went through a symlink."""


@dataclass(frozen=True)
class Reference:
    """A container another names (`--network container:X`, `--volumes-from X`, `--link X`)."""

    id: str
    owned: bool
    host_mounts: bool


@dataclass(frozen=True)
class Volume:
    """A named volume a request names, as the engine knows it."""

    name: str
    exists: bool
    owner: str | None = None
    driver: str = "local"


@dataclass(frozen=True)
class Network:
    """A network a request names, as the engine knows it."""

    ref: str
    id: str
    name: str
    driver: str
    owner: str | None = None

    @property
    def predefined(self) -> bool:
        """The engine's own `bridge` and `none` networks, open to everyone (`host` is not)."""
        return self.name in ("bridge", "none") and self.driver in ("bridge", "null")


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
    """Runtimes users may name; the first of `runtime` is used when they name none."""
    runtime: str | None = None
    """The runtime every user container runs under (the device-rule wrapper), if set."""
    host_cpus: int | None = None
    """CPUs the engine can give a container (defaults are cut to it)."""
    devices: tuple[str, ...] = ()
    """Host device paths users may map with --device (resolved; none by default)."""
    capabilities: frozenset[str] = frozenset()
    """Capabilities users may add (names without CAP_)."""
    min_host_port: int = 1024
    """The lowest host port a user may publish a container port on."""


@dataclass(frozen=True)
class Needs:
    """What the gateway must look up before deciding a create."""

    binds: tuple[str, ...] = ()
    """Host paths bound in (resolved, not walked)."""
    devices: tuple[str, ...] = ()
    """Host paths mapped as devices (resolved, and walked when a directory)."""
    references: tuple[str, ...] = ()
    """Containers named by other options."""
    volumes: tuple[str, ...] = ()
    """Named volumes mounted."""
    networks: tuple[str, ...] = ()
    """Networks joined (other than the default and `none`)."""


@dataclass(frozen=True)
class Facts:
    """What the gateway found for a request's `Needs`."""

    paths: dict[str, PathFacts]
    references: dict[str, Reference]
    volumes: dict[str, Volume]
    networks: dict[str, Network]

    @staticmethod
    def none() -> Facts:
        return Facts({}, {}, {}, {})
