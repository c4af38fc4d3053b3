"""Workload attribution joined with the real sources: /proc, cgroups, the Docker engine, Linux users.

NVML is the only simulated part: each test says which device a real process
"uses", as NVML would list it; everything else is read from the running system.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.agent.docker import Container
from controller.agent.procfs import ProcReader
from controller.api.node import GPUNodeSpec
from controller.policy.attribution import (
    ContainerView,
    Memory,
    NodeView,
    PodView,
    ProcessUse,
    attribute,
)
from tests.agent.engine import IMAGE, DockerEngine
from tests.agent.users import ensure_user, run_as
from tests.unit.fixtures import later

GPU0 = "GPU-0a0a0a0a-0000-4000-8000-000000000000"
GPU1 = "GPU-1b1b1b1b-0000-4000-8000-000000000001"
PROC = ProcReader(Path("/proc"))


def uses(pid: int, device: str) -> ProcessUse:
    """What the agent makes of an NVML process entry: /proc joined in."""
    info = PROC.process(pid)
    assert info is not None, f"process {pid} is gone"
    return ProcessUse(
        pid=pid,
        start_ticks=info.start_ticks,
        device_uuid=device,
        used_memory_mib=256,
        uid=info.uid,
        comm=info.comm,
        container_id=info.cgroup.container_id,
        pod_uid=info.cgroup.pod_uid,
    )


def node_view(logins: dict[int, str], **extra: object) -> NodeView:
    return NodeView(
        spec=GPUNodeSpec(),
        parents={GPU0: GPU0, GPU1: GPU1},
        logins=logins,
        accounts_by_login={login: f"{login}@lab.example" for login in logins.values()},
        accounts_by_namespace={"u-alice": "alice@lab.example"},
        **extra,
    )  # type: ignore[arg-type]


def view_of(container: Container) -> ContainerView:
    return ContainerView(
        container.id, container.name, frozenset(container.device_ids), None, container.started_at
    )


def test_container_process_is_found_through_its_cgroup(docker_engine: DockerEngine) -> None:
    login = "ds01-alice"
    uid = ensure_user(login)
    name = f"train-{uuid.uuid4().hex[:6]}"
    container_id = docker_engine.docker(
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        name,
        "--user",
        str(uid),
        "--label",
        "gpu.ds01.io/owner=mallory@lab.example",  # forged: not trusted without the gateway
        "--device",
        "/dev/null:/dev/nvidia0",
        IMAGE,
        "sleep",
        "600",
    )
    try:
        pid = int(docker_engine.docker("inspect", "-f", "{{.State.Pid}}", container_id))
        facts = PROC.process(pid)
        assert facts is not None and facts.cgroup.container_id == container_id and facts.uid == uid
        container = docker_engine.client.inspect(container_id)
        assert container is not None and container.name == name
        assert container.labels["gpu.ds01.io/owner"] == "mallory@lab.example"
        assert container.device_paths == ("/dev/null",)
        result = attribute(
            [uses(pid, GPU0)],
            node_view({uid: login}, containers={container_id: view_of(container)}),
            Memory(),
            later(0),
        )
        [workload] = result.workloads
        assert (workload.kind, workload.name, workload.container_id) == (
            "Container",
            name,
            container_id,
        )
        assert (workload.owner, workload.owner_source) == (f"{login}@lab.example", "ContainerUID")
        # Created without a GPU device request: using one is a violation.
        assert [v.kind for v in result.violations] == ["Unentitled"]
        assert container_id in docker_engine.client.container_ids()
    finally:
        docker_engine.docker("rm", "-f", container_id)
    assert docker_engine.client.inspect(container_id) is None


@pytest.fixture
def pod_cgroup() -> Iterator[tuple[str, str, Path]]:
    """A kubelet-style pod cgroup (cgroupfs driver) in the devices hierarchy."""
    pod_uid, container_id = str(uuid.uuid4()), uuid.uuid4().hex + uuid.uuid4().hex
    path = Path("/sys/fs/cgroup/devices/kubepods/burstable") / f"pod{pod_uid}" / container_id
    path.mkdir(parents=True)
    try:
        yield pod_uid, container_id, path
    finally:
        for directory in (path, path.parent):
            directory.rmdir()


def test_pod_process_is_found_through_its_cgroup(pod_cgroup: tuple[str, str, Path]) -> None:
    pod_uid, container_id, path = pod_cgroup
    process = run_as("root", "sleep", "600")
    try:
        (path / "cgroup.procs").write_text(str(process.pid))
        facts = PROC.process(process.pid)
        assert facts is not None
        assert (facts.cgroup.pod_uid, facts.cgroup.container_id) == (pod_uid, container_id)
        pods = {pod_uid: PodView(pod_uid, "u-alice", "train-0", frozenset({GPU1}))}
        result = attribute([uses(process.pid, GPU0)], node_view({}, pods=pods), Memory(), later(0))
        [workload] = result.workloads
        assert (workload.kind, workload.namespace, workload.owner, workload.owner_source) == (
            "Pod",
            "u-alice",
            "alice@lab.example",
            "Namespace",
        )
        assert [v.kind for v in result.violations] == ["OutsideAllocation"]
    finally:
        process.kill()
        process.wait()


def test_host_process_of_a_real_user_is_reported_from_the_second_scan() -> None:
    login = "ds01-bob"
    uid = ensure_user(login)
    process = run_as(login, "sleep", "600")
    try:
        first = attribute([uses(process.pid, GPU1)], node_view({uid: login}), Memory(), later(0))
        assert first.workloads == []
        second = attribute(
            [uses(process.pid, GPU1)], node_view({uid: login}), first.memory, later(1)
        )
        [workload] = second.workloads
        assert (workload.kind, workload.name, workload.owner) == (
            "HostProcess",
            "sleep",
            f"{login}@lab.example",
        )
        assert workload.processes and workload.processes[0].pid == process.pid
        assert [v.kind for v in second.violations] == ["Unentitled"]
    finally:
        process.kill()
        process.wait()
    assert os.path.exists(f"/proc/{process.pid}") is False
