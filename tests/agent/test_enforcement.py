"""Kernel enforcement, proved by the kernel's own answers.

Fake GPUs are mapped onto openable misc devices (major 10), so an allowed open
succeeds, a denied one fails with EPERM from the device cgroup, and a process
can hold a "GPU" open for the revocation tests. Everything else is real: cgroup
v1 device rules, a Docker engine, Linux users and their session slices.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.agent.agent import Agent
from controller.agent.main import AgentOptions, build
from controller.agent.publisher import PolicyView
from controller.agent.trust import sign
from controller.api.node import GPUNodeSpec
from controller.devcluster.process import wait_until
from tests.agent.devtree import OPENABLE_MISC_MINORS
from tests.agent.engine import IMAGE, DockerEngine, docker_engine  # noqa: F401  (fixture)
from tests.agent.fakehost import FakeHost
from tests.agent.fakenvml import a100_node
from tests.agent.users import ensure_user

DEVICES = Path("/sys/fs/cgroup/devices")
KEY = b"test-gateway-key-0123456789abcdef"


@dataclass
class StaticCluster:
    """Accounts as the apiserver would list them (a real ClusterView, no API needed)."""

    logins: dict[str, str] = field(default_factory=dict)  # login -> account user

    def namespaces(self) -> list[tuple[str, dict[str, str], dict[str, str]]]:
        return [
            (
                f"u-{login}",
                {"gpu.ds01.io/user": user.replace("@", "-")},
                {"gpu.ds01.io/user-name": user, "gpu.ds01.io/linux-user": login},
            )
            for login, user in self.logins.items()
        ]

    def pods(self) -> dict[str, tuple[str, str]]:
        return {}


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
        return (
            [json.loads(x)["event_type"] for x in self.audit.read_text().splitlines()]
            if self.audit.exists()
            else []
        )


@pytest.fixture
def node(fake_host: FakeHost, docker_engine: DockerEngine, tmp_path: Path) -> Iterator[Node]:  # noqa: F811
    fake_host.topology = a100_node(minors=OPENABLE_MISC_MINORS)
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


def test_containers_open_only_their_allocated_devices(node: Node) -> None:
    (mine, mine_path), (_, other_path) = node.gpu(2), node.gpu(3)
    allocated = node.container("amy@lab.example", [mine], [mine_path, other_path])
    bare = node.container(None, [], [mine_path])  # a GPU mapped in behind the gateway's back
    node.policy()
    outcome = node.agent.enforce()
    assert outcome is not None and outcome.written == 2
    assert node.opens(allocated, 0) == "OPEN"
    assert "Operation not permitted" in node.opens(allocated, 1)
    assert "Operation not permitted" in node.opens(bare, 0)

    # A restart re-creates the container's device cgroup with the runtime's rules ...
    node.engine.docker("restart", "-t", "0", allocated)
    assert node.opens(allocated, 1) == "OPEN"
    # ... and the next pass (triggered by Docker's event in the running agent) closes it again.
    node.agent.enforce()
    assert "Operation not permitted" in node.opens(allocated, 1)
    assert node.opens(allocated, 0) == "OPEN"


def test_audit_mode_changes_nothing_and_reports_what_it_would_deny(node: Node) -> None:
    gpu, path = node.gpu(4)
    bare = node.container(None, [], [path])
    node.policy(enforcement="Audit")
    outcome = node.agent.enforce()
    assert outcome is not None and outcome.written == 0
    assert node.opens(bare, 0) == "OPEN"
    denied = {n for numbers in outcome.decision.would_deny.values() for n in numbers}
    assert node.agent.inventory is not None
    gpu_number = next(
        (g.device.major, g.device.minor) for g in node.agent.inventory.gpus if g.uuid == gpu
    )
    assert gpu_number in denied


def test_revocation_warns_then_ends_the_holder_and_blocks_new_opens(node: Node) -> None:
    gpu, path = node.gpu(5)
    owner = "ben@lab.example"
    holder = node.container(owner, [gpu], [path], command="exec 3<>/dev/gpu0; sleep 600")
    node.policy()
    node.agent.enforce()
    assert node.engine.client.inspect(holder).running  # type: ignore[union-attr]
    now = datetime.now(UTC)
    node.policy(
        generation=2,
        revocations=[
            {
                "user": owner,
                "deviceUUIDs": [gpu],
                "reason": "grant revoked by an approver",
                "effectiveAt": (now + timedelta(seconds=3)).isoformat(),
                "until": (now + timedelta(hours=1)).isoformat(),
                "source": {"kind": "GPUGrant", "name": "ben-grant", "namespace": "u-ben"},
            }
        ],
    )
    first = node.agent.enforce()
    assert first is not None and [w.holder.place.container_id for w in first.warned] == [holder]
    assert node.engine.client.inspect(holder).running  # type: ignore[union-attr]  # warned, not yet ended
    assert "access.revoke_warning" in node.audit_types()

    def stopped() -> bool:
        node.agent.enforce()
        container = node.engine.client.inspect(holder)
        return container is not None and not container.running

    wait_until(stopped, 30, "the holder's container to be stopped after the grace period")
    assert "access.revoke" in node.audit_types()
    again = node.container(owner, [gpu], [path])
    node.agent.enforce()
    assert "Operation not permitted" in node.opens(again, 0)


def test_host_access_follows_host_entries_and_escaped_processes_are_ended(
    node: Node, tmp_path: Path
) -> None:
    uid_hana, uid_ivan, uid_jo = (ensure_user(x) for x in ("ds01-hana", "ds01-ivan", "ds01-jo"))
    node.cluster.logins.update(
        {
            "ds01-hana": "hana@lab.example",
            "ds01-ivan": "ivan@lab.example",
            "ds01-jo": "jo@lab.example",
        }
    )
    gpu, private = node.gpu(6)
    path = node.public(private)
    # `command exec`: a failed redirection must not end the shell before it says so.
    script = f"if command exec 3<>{path}; then echo OPEN; exec sleep 600; else echo DENIED; fi"
    until = datetime.now(UTC) + timedelta(seconds=6)
    node.policy(
        hostAccess=[
            {
                "user": "ivan@lab.example",
                "linuxUser": "ds01-ivan",
                "deviceUUIDs": [gpu],
                "until": until.isoformat(),
                "source": {"kind": "GPUGrant", "name": "ivan-host", "namespace": "u-ds01-ivan"},
            }
        ]
    )
    hana_scope, ivan_scope = node.session(uid_hana), node.session(uid_ivan)
    node.agent.enforce()

    hana = node.run_as("ds01-hana", script, hana_scope, tmp_path / "hana.out")
    ivan = node.run_as("ds01-ivan", script, ivan_scope, tmp_path / "ivan.out")
    wait_until(
        lambda: (
            (tmp_path / "hana.out").read_text() != "" and (tmp_path / "ivan.out").read_text() != ""
        ),
        10,
        "both sessions to try the GPU",
    )
    assert (
        "DENIED" in (tmp_path / "hana.out").read_text()
        and "Operation not permitted" in (tmp_path / "hana.out").read_text()
    )
    assert (tmp_path / "ivan.out").read_text().startswith("OPEN")
    hana.wait(timeout=10)

    # A process of a user without access, outside any slice (cron, nohup): it can open,
    # but it is found, warned and ended after the grace period.
    escaped = node.run_as("ds01-jo", script, None, tmp_path / "jo.out")
    wait_until(
        lambda: (tmp_path / "jo.out").read_text().startswith("OPEN"),
        10,
        "the escaped process to open",
    )
    wait_until(
        lambda: node.agent.enforce() is not None and escaped.poll() is not None,
        30,
        "the escaped process to be ended",
    )
    assert "access.revoke_warning" in node.audit_types()

    # Ivan's entry expires: new opens fail, and his holder is ended after the grace period.
    wait_until(lambda: datetime.now(UTC) > until, 10, "the host entry to expire")
    node.agent.enforce()
    late = node.run_as("ds01-ivan", script, ivan_scope, tmp_path / "ivan-late.out")
    late.wait(timeout=10)
    assert "DENIED" in (tmp_path / "ivan-late.out").read_text()
    wait_until(
        lambda: node.agent.enforce() is not None and ivan.poll() is not None,
        30,
        "ivan's holder to be ended after expiry",
    )
    assert uid_jo != uid_ivan
