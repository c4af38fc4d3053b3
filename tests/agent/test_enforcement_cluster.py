"""Enforcement with the apiserver in the loop: an outage, and a grant end to end with the operator.

The agent runs as `ds01 agent` does (spec watch, Docker events, passes and
scans on their clocks) in a thread of the test, authenticated with a token
bound to a pod on its node. Fake GPUs are openable misc devices.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kubernetes import config

from controller.agent.agent import Agent
from controller.agent.main import AgentOptions, build
from controller.agent.runner import Runner
from controller.agent.state import PolicyStore
from controller.cli.dev import start_operator
from controller.devcluster.controlplane import LocalCluster
from controller.devcluster.process import wait_until
from tests.agent.engine import IMAGE, DockerEngine
from tests.agent.fakehost import FakeHost, misc_node
from tests.agent.users import ensure_user
from tests.controlplane.kube import Kube, agent_kubeconfig

NODE = "gpu-enforce"


@dataclass
class Running:
    agent: Agent
    runner: Runner
    engine: DockerEngine
    state: Path
    stop: threading.Event = field(default_factory=threading.Event)
    containers: list[str] = field(default_factory=list)

    def gpu(self, index: int) -> tuple[str, Path]:
        gpu = self.agent.source.inventory().gpus[index]
        return gpu.uuid, Path(gpu.device.path)

    def container(self, uid: int, device: Path, command: str = "sleep 600") -> str:
        container_id = self.engine.docker(
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            f"e-{uuid.uuid4().hex[:8]}",
            "--user",
            str(uid),
            "--device",
            f"{device}:/dev/gpu0",
            IMAGE,
            "sh",
            "-c",
            command,
        )
        self.containers.append(container_id)
        self.runner.trigger.set()  # what Docker's start event does in production
        return container_id

    def opens(self, container_id: str) -> bool:
        result = subprocess.run(
            self.engine.docker_command(
                "exec", container_id, "sh", "-c", "exec 3<>/dev/gpu0 && echo OPEN"
            ),
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert "OPEN" in result.stdout or "Operation not permitted" in result.stderr, result.stderr
        return "OPEN" in result.stdout

    def running(self, container_id: str) -> bool:
        container = self.engine.client.inspect(container_id)
        return container is not None and container.running


def account(admin: Kube, login: str, groups: str = "researcher") -> tuple[str, int]:
    uid = ensure_user(login)
    user = admin.account(login, groups)
    admin.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "ds01-account-owner", "namespace": f"u-{login}"},
            "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}],
            "roleRef": {
                "kind": "ClusterRole",
                "name": "ds01-user",
                "apiGroup": "rbac.authorization.k8s.io",
            },
        }
    )
    return user, uid


@pytest.fixture
def running(
    cluster: LocalCluster,
    admin: Kube,
    fake_host: FakeHost,
    docker_engine: DockerEngine,
    tmp_path: Path,
) -> Iterator[Running]:
    fake_host.topology = misc_node()
    fake_host.write()
    tree = fake_host.make_tree(misc=True)
    key = tmp_path / "gateway.key"
    key.write_bytes(b"gateway-key-for-the-cluster-tests")
    options = AgentOptions(
        node=NODE,
        kubeconfig=agent_kubeconfig(cluster, admin, NODE),
        nvml_library=fake_host.library,
        driver_proc_root=tree.proc_root,
        dev_root=tree.dev_root,
        docker_socket=str(docker_engine.socket),
        gateway_key=key,
        state_dir=tmp_path / "state",
        audit_log=tmp_path / "audit.jsonl",
        grace_s=3.0,
        kill_grace_s=2.0,
        stop_grace_s=1,
        interval_s=1.0,
        enforce_interval_s=0.5,
        runtime_dir=docker_engine.runtime_dir,
    )
    api = config.new_client_from_config(config_file=str(options.kubeconfig))
    agent, closers = build(options, api)
    assert agent.publisher is not None
    agent.publisher.min_interval = timedelta(0)
    agent.refresh = timedelta(seconds=1)
    store = PolicyStore(tmp_path / "state")
    runner = Runner(
        agent,
        api,
        store,
        interval_s=1.0,
        enforce_interval_s=0.5,
        docker_socket=str(docker_engine.socket),
    )
    state = Running(agent, runner, docker_engine, tmp_path / "state")
    thread = threading.Thread(target=runner.run, args=(state.stop,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stop.set()
        runner.trigger.set()
        thread.join(timeout=30)
        for container_id in state.containers:
            subprocess.run(
                docker_engine.docker_command("rm", "-f", container_id),
                capture_output=True,
                check=False,
            )
        for close in reversed(closers):
            close()


def spec_patch(admin: Kube, spec: dict[str, object]) -> None:
    admin.kubectl("patch", "gpunode", NODE, "--type=merge", "-p", json.dumps({"spec": spec}))


def test_apiserver_outage_keeps_enforcing_the_last_policy(
    cluster: LocalCluster, admin: Kube, running: Running
) -> None:
    dave, dave_uid = account(admin, "ds01-dave")
    gpu, path = running.gpu(4)
    now = datetime.now(UTC)
    spec_patch(
        admin,
        {
            "enforcement": "Enforce",
            "reservations": [
                {
                    "deviceUUID": gpu,
                    "user": dave,
                    "until": (now + timedelta(hours=1)).isoformat(),
                    "source": {"kind": "GPUGrant", "name": "dave", "namespace": "u-ds01-dave"},
                }
            ],
        },
    )
    wait_until(
        lambda: (
            running.agent.policy is not None and running.agent.policy.spec.reservations is not None
        ),
        30,
        "the agent to read the spec",
    )
    saved = PolicyStore(running.state).load(NODE)
    assert saved is not None and saved.spec.reservations and saved.spec.reservations[0].user == dave
    # The runtime wrapper asks the agent at create: it must know dave's login by then, or his
    # reserved GPU is closed at create (fail closed) and the holder's first open fails.
    wait_until(
        lambda: running.agent.accounts_view()[0].get("ds01-dave") == dave,
        30,
        "the agent to know dave's account",
    )
    holder = running.container(dave_uid, path, "exec 3<>/dev/gpu0; sleep 600")
    other = running.container(dave_uid, running.gpu(5)[1])
    wait_until(lambda: running.opens(holder), 30, "dave's container to open his reserved GPU")
    wait_until(lambda: not running.opens(other), 30, "an unreserved GPU to be closed to dave")

    cluster.stop_apiserver()
    try:
        # Nothing revoked for lack of data: the holder keeps its GPU, rules stay as they were.
        passes = running.agent.applied_generation
        wait_until(
            lambda: running.runner.trigger.set() is None and running.agent.scan() is not None,
            10,
            "a scan without the apiserver",
        )
        assert running.running(holder) and running.opens(holder) and not running.opens(other)
        assert running.agent.applied_generation == passes
    finally:
        cluster.start_apiserver()

    # A change made once the apiserver is back reaches the kernel within seconds.
    spec_patch(admin, {"reservations": None})
    wait_until(lambda: not running.opens(holder), 30, "dave's reservation to be withdrawn")


def test_host_entry_expiring_during_an_outage_is_closed_anyway(
    cluster: LocalCluster, admin: Kube, running: Running, tmp_path: Path
) -> None:
    carol, carol_uid = account(admin, "ds01-carol")
    gpu, path = running.gpu(6)
    public = Path(tempfile.mkdtemp(prefix="ds01-dev-", dir="/tmp"))  # pytest's tmp is root-only
    public.chmod(0o755)
    device = public / "gpu"
    os.mknod(device, stat.S_IFCHR | 0o666, os.stat(path).st_rdev)
    device.chmod(0o666)
    until = datetime.now(UTC) + timedelta(seconds=8)
    spec_patch(
        admin,
        {
            "enforcement": "Enforce",
            "hostAccess": [
                {
                    "user": carol,
                    "linuxUser": "ds01-carol",
                    "deviceUUIDs": [gpu],
                    "until": until.isoformat(),
                    "source": {
                        "kind": "GPUGrant",
                        "name": "carol-host",
                        "namespace": "u-ds01-carol",
                    },
                }
            ],
        },
    )
    slice_dir = Path("/sys/fs/cgroup/devices/user.slice") / f"user-{carol_uid}.slice"
    slice_dir.mkdir(parents=True, exist_ok=True)
    script = f"if command exec 3<>{device}; then echo OPEN; exec sleep 600; else echo DENIED; fi"

    def session(out: Path) -> subprocess.Popen[bytes]:
        enter = f"echo $$ > {slice_dir}/cgroup.procs && "
        drop = f'exec setpriv --reuid={carol_uid} --regid={carol_uid} --clear-groups sh -c "$0"'
        return subprocess.Popen(
            ["sh", "-c", enter + drop, script], stdout=out.open("w"), stderr=subprocess.STDOUT
        )

    holder = None
    try:
        wait_until(
            lambda: (
                running.agent.policy is not None
                and running.agent.policy.spec.host_access is not None
            ),
            30,
            "the agent to read carol's host access",
        )
        running.runner.trigger.set()
        wait_until(
            lambda: running.agent.applied_generation == running.agent.policy.generation,
            10,  # type: ignore[union-attr]
            "the host access to be applied",
        )
        holder = session(tmp_path / "first.out")
        wait_until(
            lambda: (tmp_path / "first.out").read_text().startswith("OPEN"),
            10,
            "carol to open her GPU",
        )
        cluster.stop_apiserver()
        try:
            wait_until(lambda: datetime.now(UTC) > until, 15, "the entry to expire")
            late = session(tmp_path / "late.out")
            wait_until(lambda: late.poll() is not None, 15, "the late open to be refused")
            assert "DENIED" in (tmp_path / "late.out").read_text()
            wait_until(
                lambda: holder.poll() is not None, 30, "carol's holder to be ended after the grace"
            )
        finally:
            cluster.start_apiserver()
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
        slice_dir.rmdir()
        shutil.rmtree(public)


def test_a_grant_end_to_end_with_the_operator(
    cluster: LocalCluster, admin: Kube, running: Running
) -> None:
    erin, erin_uid = account(admin, "ds01-erin", groups="e2e")
    admin.apply(
        {
            "apiVersion": "gpu.ds01.io/v1alpha1",
            "kind": "GPURateLimit",
            "metadata": {"name": "e2e"},
            "spec": {
                "subjects": [{"kind": "Group", "name": "e2e"}],
                "priority": 10,
                "grants": {"approval": "Auto", "revocationGrace": "3s"},
            },
        }
    )
    operator = start_operator(cluster, "--default-enforcement=Enforce")
    try:
        wait_until(
            lambda: admin.get("gpunode", NODE).get("status", {}).get("gpus") == 8,
            30,
            "the agent to report its inventory",
        )
        grant = {
            "apiVersion": "gpu.ds01.io/v1alpha1",
            "kind": "GPUGrant",
            "metadata": {"name": "paper", "namespace": "u-ds01-erin"},
            "spec": {
                "subject": {"kind": "User", "name": erin},
                "gpus": {"count": 1},
                "placement": {"reserve": True, "nodeName": NODE},
                "duration": "1h",
                "reason": "end-to-end test",
            },
        }
        user = Kube(cluster, cluster.user_kubeconfig(erin))
        user.create(grant)
        wait_until(lambda: grant_state(admin) == "Active", 30, "the grant to be Active")
        device = admin.get("gpugrant", "paper", "-n", "u-ds01-erin")["status"]["allocations"][0][
            "devices"
        ][0]["uuid"]
        index = next(g.index for g in running.agent.source.inventory().gpus if g.uuid == device)
        holder = running.container(erin_uid, running.gpu(index)[1], "exec 3<>/dev/gpu0; sleep 600")
        wait_until(lambda: running.opens(holder), 30, "erin's container to open her reserved GPU")

        user.kubectl("delete", "gpugrant", "paper", "-n", "u-ds01-erin")
        wait_until(
            lambda: not running.running(holder), 30, "the holder to be ended after the grace"
        )
        again = running.container(erin_uid, running.gpu(index)[1])
        wait_until(lambda: not running.opens(again), 30, "new opens to fail")
    finally:
        operator.stop()


def grant_state(admin: Kube) -> str | None:
    return admin.get("gpugrant", "paper", "-n", "u-ds01-erin").get("status", {}).get("state")
