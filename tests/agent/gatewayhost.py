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
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.agent.agent import Agent
from controller.agent.gateway import Gateway
from controller.agent.main import AgentOptions, build
from controller.agent.publisher import PolicyView
from controller.api.node import GPUNodeSpec
from controller.api.ratelimit import GPURateLimitSpec
from controller.devcluster.fakegpu import a100_node
from controller.devcluster.fakegpu.devtree import OPENABLE_MISC_MINORS
from controller.policy.effective import NamedLimit
from tests.agent.enforcehost import KEY, StaticCluster
from tests.agent.engine import IMAGE, DockerEngine
from tests.agent.fakehost import FakeHost
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

    # -- who ------------------------------------------------------------------

    def home(self, login: str) -> Path:
        """The user's home directory (created, theirs), also their default bind root."""
        return self.homes[login]

    def docker(
        self, login: str, *args: str, stdin: bytes | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[bytes]:
        """The docker CLI as ``login`` against the gateway."""
        entry = pwd.getpwnam(login)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.homes[login]),
            "DOCKER_CONFIG": str(self.homes[login] / ".docker"),
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_BUILDKIT": "0",
        }
        argv = [
            "setpriv",
            f"--reuid={entry.pw_uid}",
            f"--regid={entry.pw_gid}",
            "--init-groups",
            "docker",
            *args,
        ]
        return subprocess.run(
            argv, input=stdin, capture_output=True, env=env, timeout=timeout, check=False
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

    def connect(self, login: str, count: int = 1) -> list[socket.socket]:
        """Sockets connected to the gateway by a process running as ``login``."""
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
                str(self.socket),
                str(count),
                str(child.fileno()),
            ],
            pass_fds=(child.fileno(),),
            stderr=subprocess.PIPE,
        )
        child.close()
        sockets: list[socket.socket] = []
        try:
            while len(sockets) < count:
                _, fds, _, _ = socket.recv_fds(parent, 16, 200)
                if not fds:
                    break
                sockets += [socket.socket(fileno=fd) for fd in fds]
        finally:
            parent.close()
            _, err = helper.communicate(timeout=60)
        assert len(sockets) == count, err.decode()
        return sockets

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
        self.gateway.notifier.flush()
        if not self.audit.exists():
            return []
        records = [json.loads(line) for line in self.audit.read_text().splitlines()]
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


@pytest.fixture
def gateway(
    fake_host: FakeHost, docker_engine: DockerEngine, tmp_path: Path
) -> Iterator[GatewayHost]:
    fake_host.topology = a100_node(minors=OPENABLE_MISC_MINORS)
    fake_host.write()
    tree = fake_host.make_tree(misc=True)
    key = tmp_path / "gateway.key"
    key.write_bytes(KEY)
    key.chmod(0o600)
    for login in (AMY, BEN, CAT, ROOT):
        ensure_user(login)
    ensure_group(ADMIN_GROUP, [ROOT])
    # A short, world-reachable directory: unix socket paths are limited to 108 bytes.
    run_dir = Path(tempfile.mkdtemp(prefix="ds01-gw-", dir="/tmp"))
    run_dir.chmod(0o755)
    homes = {}
    for login in (AMY, BEN, CAT, ROOT):
        entry = pwd.getpwnam(login)
        home = run_dir / "home" / login
        (home / ".docker").mkdir(parents=True)
        for path in (home, home / ".docker"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        homes[login] = home
    (run_dir / "home").chmod(0o755)
    options = AgentOptions(
        node="gateway-node",
        nvml_library=fake_host.library,
        driver_proc_root=tree.proc_root,
        dev_root=tree.dev_root,
        docker_socket=str(docker_engine.socket),
        gateway_key=key,
        audit_log=tmp_path / "audit.jsonl",
        state_dir=tmp_path / "state",
        lifecycle_interval_s=0,
        gateway_socket=run_dir / "docker.sock",
        gateway_admin_group=ADMIN_GROUP,
        gateway_bind_roots=(str(run_dir / "home" / "{login}"),),
    )
    before = set(docker_engine.docker("ps", "-aq", "--no-trunc").split())
    agent, closers = build(options, None)
    cluster = StaticCluster(logins=dict(ACCOUNTS))
    agent.cluster = cluster
    agent.refresh = timedelta(0)
    host = GatewayHost(
        agent=agent,
        engine=docker_engine,
        socket=run_dir / "docker.sock",
        run_dir=run_dir,
        audit=tmp_path / "audit.jsonl",
        cluster=cluster,
        before=before,
        homes=homes,
        gateway=next(
            c.__self__ for c in closers if isinstance(getattr(c, "__self__", None), Gateway)
        ),
    )
    host.refresh()
    host.policy()
    try:
        yield host
    finally:
        for close in reversed(closers):
            close()
        left = host.containers() - before
        if left:
            subprocess.run(
                docker_engine.docker_command("rm", "-f", *left), capture_output=True, check=False
            )
        volumes = docker_engine.docker("volume", "ls", "-q").split()
        if volumes:
            subprocess.run(
                docker_engine.docker_command("volume", "rm", "-f", *volumes),
                capture_output=True,
                check=False,
            )
        shutil.rmtree(run_dir, ignore_errors=True)


__all__ = ["ACCOUNTS", "ADMIN_GROUP", "AMY", "BEN", "CAT", "IMAGE", "ROOT", "GatewayHost"]
