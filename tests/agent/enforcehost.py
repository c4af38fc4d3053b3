"""A fake GPU node with real kernel enforcement: the `node` fixture of the enforcement tests.

Fake GPUs are mapped onto openable misc devices (major 10), so an allowed open
succeeds and a denied one fails with EPERM from the device cgroup. The agent is
built as `ds01 agent` builds it, against a real Docker engine, with accounts
and rate limits from a `StaticCluster` instead of the apiserver.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.agent.agent import Agent
from controller.agent.main import AgentOptions, build
from controller.agent.publisher import PolicyView
from controller.agent.trust import sign
from controller.api.node import GPUNodeSpec
from controller.policy.effective import NamedLimit
from controller.runtime.audit import read_records
from tests.agent.engine import IMAGE, DockerEngine
from tests.agent.fakehost import FakeHost, misc_node
from tests.agent.users import ensure_user

DEVICES = Path("/sys/fs/cgroup/devices")
KEY = b"test-gateway-key-0123456789abcdef"


@dataclass
class StaticCluster:
    """Accounts as the apiserver would list them (a real ClusterView, no API needed)."""

    logins: dict[str, str] = field(default_factory=dict)  # login -> account user
    groups: str = "student"
    rate_limits: list[NamedLimit] = field(default_factory=list)

    def namespaces(self) -> list[tuple[str, dict[str, str], dict[str, str]]]:
        return [
            (
                f"u-{login}",
                {"gpu.ds01.io/user": user.replace("@", "-")},
                {
                    "gpu.ds01.io/user-name": user,
                    "gpu.ds01.io/linux-user": login,
                    "gpu.ds01.io/groups": self.groups,
                },
            )
            for login, user in self.logins.items()
        ]

    def pods(self) -> dict[str, tuple[str, str]]:
        return {}

    def limits(self) -> list[NamedLimit]:
        return list(self.rate_limits)


@dataclass
class Node:
    agent: Agent
    host: FakeHost
    engine: DockerEngine
    audit: Path
    cluster: StaticCluster
    containers: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    cgroups: list[Path] = field(default_factory=list)
    directories: list[Path] = field(default_factory=list)

    def public(self, device: Path) -> Path:
        """The same device, reachable by unprivileged users (pytest's tmp dirs are root-only)."""
        directory = Path(tempfile.mkdtemp(prefix="ds01-dev-", dir="/tmp"))
        self.directories.append(directory)
        directory.chmod(0o755)
        node = directory / device.name
        os.mknod(node, stat.S_IFCHR | 0o666, os.stat(device).st_rdev)
        node.chmod(0o666)
        return node

    def gpu(self, index: int) -> tuple[str, Path]:
        """(UUID, host device path) of whole GPU ``index`` (0 and 1 are in MIG mode)."""
        gpu = self.agent.source.inventory().gpus[index]
        return gpu.uuid, Path(gpu.device.path)

    def policy(self, generation: int = 1, **spec: object) -> None:
        self.agent.policy = PolicyView(
            GPUNodeSpec.model_validate({"enforcement": "Enforce", **spec}), generation
        )

    def container(
        self,
        owner: str | None,
        allocated: list[str],
        mapped: list[Path],
        command: str = "sleep 600",
        user: int | None = None,
    ) -> str:
        name = f"c-{uuid.uuid4().hex[:8]}"
        labels = sign(KEY, name, owner, allocated) if owner else {}
        argv = ["run", "-d", "--network", "none", "--name", name]
        for key, value in labels.items():
            argv += ["--label", f"{key}={value}"]
        for index, path in enumerate(mapped):
            argv += ["--device", f"{path}:/dev/gpu{index}"]
        if user is not None:
            argv += ["--user", str(user)]
        container_id = self.engine.docker(*argv, IMAGE, "sh", "-c", command)
        self.containers.append(container_id)
        return container_id

    def opens(self, container_id: str, index: int) -> str:
        """Open /dev/gpu<index> read-write inside the container: 'OPEN' or the error."""
        result = subprocess.run(
            self.engine.docker_command(
                "exec", container_id, "sh", "-c", f"exec 3<>/dev/gpu{index} && echo OPEN"
            ),
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        return result.stdout.strip() or result.stderr.strip()

    def session(self, uid: int) -> Path:
        """A logind-style session scope in the user's slice (this machine has no systemd)."""
        scope = (
            DEVICES / "user.slice" / f"user-{uid}.slice" / f"session-{uuid.uuid4().hex[:6]}.scope"
        )
        scope.mkdir(parents=True)
        self.cgroups += [scope, scope.parent]
        return scope

    def run_as(
        self, login: str, script: str, cgroup: Path | None, out: Path
    ) -> subprocess.Popen[bytes]:
        """Run ``script`` as ``login``, inside ``cgroup`` from its first instruction.

        A root shell moves itself into the cgroup, then becomes the user with setpriv
        (util-linux) and runs the script: no preexec_fn in a threaded test process.
        """
        uid = ensure_user(login)
        enter = f"echo $$ > {cgroup}/cgroup.procs && " if cgroup is not None else ""
        drop = f'exec setpriv --reuid={uid} --regid={uid} --clear-groups sh -c "$0"'
        process = subprocess.Popen(
            ["sh", "-c", enter + drop, script], stdout=out.open("w"), stderr=subprocess.STDOUT
        )
        self.processes.append(process)
        return process

    def audit_types(self) -> list[str]:
        return [r["event_type"] for r in read_records(self.audit)] if self.audit.exists() else []


@pytest.fixture
def node(fake_host: FakeHost, docker_engine: DockerEngine, tmp_path: Path) -> Iterator[Node]:
    fake_host.topology = misc_node()
    fake_host.write()
    tree = fake_host.make_tree(misc=True)
    key = tmp_path / "gateway.key"
    key.write_bytes(KEY)
    options = AgentOptions(
        node="enforce-node",
        nvml_library=fake_host.library,
        driver_proc_root=tree.proc_root,
        dev_root=tree.dev_root,
        docker_socket=str(docker_engine.socket),
        gateway_key=key,
        audit_log=tmp_path / "audit.jsonl",
        grace_s=2.0,
        kill_grace_s=2.0,
        stop_grace_s=1,
        runtime_dir=docker_engine.runtime_dir,
    )
    agent, closers = build(options, None)
    cluster = StaticCluster()
    agent.cluster = cluster
    node = Node(agent, fake_host, docker_engine, tmp_path / "audit.jsonl", cluster)
    try:
        yield node
    finally:
        for process in node.processes:
            process.kill()
            process.wait()
        for container_id in node.containers:
            subprocess.run(
                docker_engine.docker_command("rm", "-f", container_id),
                capture_output=True,
                check=False,
            )
        for cgroup in node.cgroups:
            cgroup.rmdir()
        for directory in node.directories:
            shutil.rmtree(directory)
        for close in reversed(closers):
            close()
