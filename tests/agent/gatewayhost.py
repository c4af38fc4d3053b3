"""A Docker host behind the gateway: the `gateway` fixture of the gateway tests.

The agent is built as `ds01 agent --gateway-socket ... --gateway-admin-group ...`
builds it, against a real dockerd and fake GPUs on openable misc devices (an
allowed open inside a container succeeds). Accounts and rate limits come from
a `StaticCluster`. Users are real Linux users: the docker CLI runs as them
(`setpriv`), and raw API tests use sockets *they* connected (a helper running
as the user connects and hands the descriptors back over SCM_RIGHTS), so the
gateway sees their UIDs through SO_PEERCRED exactly as in production.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient

from controller.agent.agent import Agent
from controller.agent.gateway import Gateway
from controller.agent.main import AgentOptions, build
from controller.agent.publisher import PolicyView
from controller.api.node import GPUNodeSpec
from controller.api.ratelimit import GPURateLimitSpec
from controller.policy.effective import NamedLimit
from controller.runtime import runcfront
from controller.runtime.audit import read_records
from tests.agent.enforcehost import KEY, StaticCluster
from tests.agent.engine import IMAGE, DockerEngine
from tests.agent.fakehost import FakeHost, misc_node
from tests.agent.users import ensure_user

ADMIN_GROUP = "ds01gw-admins"
AMY, BEN, CAT, ROOT = "ds01gw-amy", "ds01gw-ben", "ds01gw-cat", "ds01gw-root"
ACCOUNTS = {AMY: "amy@lab.example", BEN: "ben@lab.example", ROOT: "root@lab.example"}
"""Linux login -> account; CAT has no account (the default policy applies)."""

_CONNECT = r"""
import socket, sys
path, count, channel = sys.argv[1], int(sys.argv[2]), socket.socket(fileno=int(sys.argv[3]))
held = []
for start in range(0, count, 200):
    batch = []
    for _ in range(min(200, count - start)):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        batch.append(sock)
    socket.send_fds(channel, [b"x"], [s.fileno() for s in batch])
    held += batch
for sock in held:
    sock.close()
channel.recv(1)  # stay alive (the gateway places callers by their live PID) until released
"""


def ensure_group(name: str, members: list[str]) -> None:
    """A Linux group with these members (created on first use)."""
    if subprocess.run(["getent", "group", name], capture_output=True, check=False).returncode != 0:
        subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)
    for member in members:
        subprocess.run(["gpasswd", "-a", member, name], check=True, capture_output=True)


@functools.cache
def user_python() -> str:
    """A Python interpreter unprivileged users can run (the venv's may sit under /root)."""
    nobody = ensure_user(CAT)
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        probe = subprocess.run(
            [
                "setpriv",
                f"--reuid={nobody}",
                f"--regid={nobody}",
                "--clear-groups",
                candidate,
                "-c",
                "import socket; socket.send_fds",
            ],
            capture_output=True,
            check=False,
        )
        if probe.returncode == 0:
            return candidate
    raise RuntimeError("no Python >= 3.9 that unprivileged users can run (install python3)")


Socket = socket.socket
"""(GatewayHost has a field named `socket`.)"""


_LINGERING: list[tuple[socket.socket, subprocess.Popen[bytes]]] = []
"""Connecting helpers kept alive until `release_helpers` (a peer whose process is gone is
refused by the gateway, as it cannot be placed)."""


def release_helpers() -> None:
    while _LINGERING:
        channel, helper = _LINGERING.pop()
        channel.close()
        helper.wait(timeout=60)


def connect_as(login: str, path: Path, count: int = 1) -> list[Socket]:
    """Sockets connected to ``path`` by a process running as ``login`` (their SO_PEERCRED).

    The connecting process lives on until `release_helpers` (the gateway's teardown).
    """
    entry = pwd.getpwnam(login)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    helper = subprocess.Popen(
        [
            "setpriv",
            f"--reuid={entry.pw_uid}",
            f"--regid={entry.pw_gid}",
            "--init-groups",
            user_python(),
            "-c",
            _CONNECT,
            str(path),
            str(count),
            str(child.fileno()),
        ],
        pass_fds=(child.fileno(),),
        stderr=subprocess.PIPE,
    )
    child.close()
    sockets: list[Socket] = []
    try:
        while len(sockets) < count:
            _, fds, _, _ = socket.recv_fds(parent, 16, 200)
            if not fds:
                break
            sockets += [socket.socket(fileno=fd) for fd in fds]
    except BaseException:
        parent.close()
        helper.wait(timeout=60)
        raise
    if len(sockets) != count:
        parent.close()
        _, err = helper.communicate(timeout=60)
        raise AssertionError(err.decode())
    _LINGERING.append((parent, helper))
    return sockets


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def message(self) -> str:
        return str(self.json().get("message", ""))


def request(
    sock: socket.socket,
    method: str,
    path: str,
    body: object = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One HTTP request over an already connected socket."""
    connection = http.client.HTTPConnection("docker", timeout=120)
    connection.sock = sock
    payload = json.dumps(body).encode() if body is not None else None
    extra = {"Content-Type": "application/json", **(headers or {})}
    connection.request(method, path, body=payload, headers=extra)
    response = connection.getresponse()
    data = response.read()
    return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)


@dataclass
class GatewayHost:
    agent: Agent
    engine: DockerEngine
    socket: Path
    run_dir: Path
    audit: Path
    cluster: StaticCluster
    before: set[str]
    gateway: Gateway
    homes: dict[str, Path] = field(default_factory=dict)
    options: AgentOptions | None = None
    kube: ApiClient | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)

    # -- who ------------------------------------------------------------------

    def home(self, login: str) -> Path:
        """The user's home directory (created, theirs), also their default bind root."""
        return self.homes[login]

    def environ(self, login: str) -> dict[str, str]:
        """The environment the docker CLI gets as ``login``: the gateway is its DOCKER_HOST."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.homes[login]),
            "DOCKER_CONFIG": str(self.homes[login] / ".docker"),
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_BUILDKIT": "0",
        }

    def as_user(self, login: str, *argv: str) -> list[str]:
        """``argv`` run as ``login`` (their UID, GID and groups)."""
        entry = pwd.getpwnam(login)
        return [
            "setpriv",
            f"--reuid={entry.pw_uid}",
            f"--regid={entry.pw_gid}",
            "--init-groups",
            *argv,
        ]

    def docker(
        self, login: str, *args: str, stdin: bytes | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[bytes]:
        """The docker CLI as ``login`` against the gateway."""
        return subprocess.run(
            self.as_user(login, "docker", *args),
            input=stdin,
            capture_output=True,
            env=self.environ(login),
            timeout=timeout,
            check=False,
        )

    def popen(self, login: str, *args: str, **options: Any) -> subprocess.Popen[bytes]:
        """The docker CLI as ``login``, running on (streams: `logs -f`, `events`)."""
        return subprocess.Popen(
            self.as_user(login, "docker", *args), env=self.environ(login), **options
        )

    def ok(self, login: str, *args: str) -> str:
        """Run the docker CLI as ``login``; its stdout, failing the test on an error."""
        result = self.docker(login, *args)
        assert result.returncode == 0, (args, result.stderr.decode())
        return result.stdout.decode().strip()

    def refused(self, login: str, *args: str) -> str:
        """Run the docker CLI as ``login`` expecting a refusal; the CLI's error output."""
        result = self.docker(login, *args)
        assert result.returncode != 0, (args, result.stdout.decode())
        return result.stderr.decode()

    def connect(self, login: str, count: int = 1) -> list[Socket]:
        """Sockets connected to the gateway by a process running as ``login``."""
        return connect_as(login, self.socket, count)

    def api(self, login: str, method: str, path: str, body: object = None) -> Reply:
        """One raw API request as ``login``."""
        (sock,) = self.connect(login)
        with sock:
            return request(sock, method, path, body)

    # -- policy ----------------------------------------------------------------

    def policy(self, **spec: object) -> None:
        self.agent.policy = PolicyView(
            GPUNodeSpec.model_validate({"enforcement": "Enforce", **spec}), 1
        )

    def limits(self, *limits: tuple[str, dict[str, Any]]) -> None:
        """Set the GPURateLimits (name, spec) the agent sees, and let it read them."""
        self.cluster.rate_limits = [
            NamedLimit(name, GPURateLimitSpec.model_validate(spec)) for name, spec in limits
        ]
        self.refresh()

    def refresh(self) -> None:
        self.agent.views(datetime.now(UTC))

    # -- what happened -----------------------------------------------------------

    def audit_records(self, event_type: str | None = None) -> list[dict[str, Any]]:
        self.gateway.recorder.flush()
        records = read_records(self.audit)
        return [r for r in records if event_type is None or r["event_type"] == event_type]

    def inspect(self, container: str) -> dict[str, Any]:
        """The engine's own inspect (as root, on its socket)."""
        return json.loads(self.engine.docker("inspect", container))[0]  # type: ignore[no-any-return]

    def exists(self, name: str) -> bool:
        result = subprocess.run(
            self.engine.docker_command("inspect", name), capture_output=True, check=False
        )
        return result.returncode == 0

    def containers(self) -> set[str]:
        return set(self.engine.docker("ps", "-aq", "--no-trunc").split())


def _gateway_of(closers: list[Callable[[], None]]) -> Gateway:
    """The gateway `build` started (its `stop` is one of the closers)."""
    for close in closers:
        owner = getattr(close, "__self__", None)
        if isinstance(owner, Gateway):
            return owner
    raise AssertionError("the agent was built without its gateway")


def restart(host: GatewayHost, api: ApiClient | None = None) -> None:
    """Stop the agent and its gateway, and build them again from the same options and state.

    What a supervisor restart does: nothing survives but the state directory
    (saved accounts, limits and spec) and the containers' signed labels.
    """
    assert host.options is not None
    for close in reversed(host.closers):
        close()
    host.kube = api
    host.agent, host.closers = build(host.options, api)
    host.gateway = _gateway_of(host.closers)
    if api is None:
        host.agent.cluster = host.cluster
    host.agent.refresh = timedelta(0)


@contextlib.contextmanager
def serve(
    fake_host: FakeHost,
    engine: DockerEngine,
    tmp_path: Path,
    api: ApiClient | None = None,
    node: str = "gateway-node",
    logins: tuple[str, ...] = (AMY, BEN, CAT, ROOT),
    **extra: Any,
) -> Iterator[GatewayHost]:
    """An agent serving the gateway for ``logins`` on a fake A100 node in front of ``engine``.

    With ``api`` the agent talks to that apiserver (accounts, limits, its
    GPUNode, Events); without, accounts and limits come from a `StaticCluster`.
    """
    fake_host.topology = misc_node()
    fake_host.write()
    tree = fake_host.make_tree(misc=True)
    key = tmp_path / "gateway.key"
    key.write_bytes(KEY)
    key.chmod(0o600)
    for login in logins:
        ensure_user(login)
    ensure_group(ADMIN_GROUP, [ROOT])
    # A short, world-reachable directory: unix socket paths are limited to 108 bytes.
    run_dir = Path(tempfile.mkdtemp(prefix="ds01-gw-", dir="/tmp"))
    run_dir.chmod(0o755)
    homes = {}
    for login in logins:
        entry = pwd.getpwnam(login)
        home = run_dir / "home" / login
        (home / ".docker").mkdir(parents=True)
        for path in (home, home / ".docker"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        homes[login] = home
    (run_dir / "home").chmod(0o755)
    options = AgentOptions(
        node=node,
        nvml_library=fake_host.library,
        driver_proc_root=tree.proc_root,
        dev_root=tree.dev_root,
        docker_socket=str(engine.socket),
        gateway_key=key,
        audit_log=tmp_path / "audit.jsonl",
        state_dir=tmp_path / "state",
        lifecycle_interval_s=0,
        gateway_socket=run_dir / "docker.sock",
        gateway_admin_group=ADMIN_GROUP,
        gateway_bind_roots=(str(run_dir / "home" / "{login}"),),
        runtime_dir=engine.runtime_dir,
        gateway_runtime=runcfront.NAME,
        **extra,
    )
    before = set(engine.docker("ps", "-aq", "--no-trunc").split())
    agent, closers = build(options, api)
    host = GatewayHost(
        agent=agent,
        engine=engine,
        socket=run_dir / "docker.sock",
        run_dir=run_dir,
        audit=tmp_path / "audit.jsonl",
        cluster=StaticCluster(logins={k: v for k, v in ACCOUNTS.items() if k in logins}),
        before=before,
        homes=homes,
        gateway=_gateway_of(closers),
        options=options,
        kube=api,
        closers=closers,
    )
    if api is None:
        agent.cluster = host.cluster
    agent.refresh = timedelta(0)
    try:
        yield host
    finally:
        release_helpers()
        for close in reversed(host.closers):
            close()
        left = host.containers() - before
        if left:
            subprocess.run(
                engine.docker_command("rm", "-f", *left), capture_output=True, check=False
            )
        volumes = engine.docker("volume", "ls", "-q").split()
        if volumes:
            subprocess.run(
                engine.docker_command("volume", "rm", "-f", *volumes),
                capture_output=True,
                check=False,
            )
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def gateway(
    fake_host: FakeHost, docker_engine: DockerEngine, tmp_path: Path
) -> Iterator[GatewayHost]:
    with serve(fake_host, docker_engine, tmp_path) as host:
        host.refresh()
        host.policy()
        yield host


__all__ = [
    "ACCOUNTS",
    "ADMIN_GROUP",
    "AMY",
    "BEN",
    "CAT",
    "IMAGE",
    "ROOT",
    "GatewayHost",
    "connect_as",
    "restart",
    "serve",
]
