"""Enforcement on pod containers the agent cannot judge yet, with real cgroups and processes.

The pod list is read from the apiserver on its own clock, so a pod the kubelet
has just started is briefly unknown. Judged as nobody's it would lose its GPU and
its process would be ended as never granted; it is left alone until known (and
the next pass reads the list again). Pods in system namespaces (the agent's own,
a driver's DaemonSet) are always left alone. A known pod of an account with no
allocation is judged as before.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.devcluster.process import wait_until
from tests.agent.enforcehost import DEVICES, Node

HOLD = 'exec 3<>"{device}"; echo HELD; exec sleep 600'


@pytest.fixture
def pod_cgroup() -> Iterator[tuple[str, Path]]:
    """A kubelet-style container cgroup (cgroupfs driver) in the devices hierarchy."""
    pod_uid = str(uuid.uuid4())
    path = DEVICES / "kubepods" / "burstable" / f"pod{pod_uid}" / (uuid.uuid4().hex * 2)
    path.mkdir(parents=True)
    try:
        yield pod_uid, path
    finally:
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        wait_until(lambda: not (path / "cgroup.procs").read_text().split(), 10, "an empty cgroup")
        for directory in (path, path.parent):
            if directory.exists():
                directory.rmdir()


def holder(node: Node, cgroup: Path, tmp_path: Path) -> tuple[int, Path]:
    """A process in the pod's cgroup holding GPU 2 open; its pid and output."""
    _, device = node.gpu(2)
    out = tmp_path / "holder.out"
    process = node.run_as("root", HOLD.format(device=device), cgroup, out)
    wait_until(lambda: "HELD" in out.read_text(), 10, "the holder to open its GPU")
    return process.pid, out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_an_unknown_pods_gpu_holder_is_left_alone_until_the_pod_is_known(
    node: Node, pod_cgroup: tuple[str, Path], tmp_path: Path
) -> None:
    pod_uid, cgroup = pod_cgroup
    node.cluster.logins["ds01-pat"] = "pat@lab.example"
    node.policy()  # Enforce, nobody entitled to anything
    pid, _ = holder(node, cgroup, tmp_path)
    before = (cgroup / "devices.list").read_text()

    node.agent.reread_views()
    node.agent.enforce()
    node.agent.enforce()
    assert alive(pid)  # not ended as never granted
    assert (cgroup / "devices.list").read_text() == before  # no rule written
    assert node.agent.enforcer is not None and node.agent.enforcer.unknown_pods

    # Known now, in pat's account, with nothing allocated: judged, and ended at once.
    node.cluster.pods = lambda: {pod_uid: ("u-ds01-pat", "train")}  # type: ignore[method-assign]
    node.agent.reread_views()
    node.agent.enforce()
    wait_until(lambda: not alive(pid), 30, "the never-granted holder to be ended")


def test_a_system_namespaces_pod_is_never_judged(
    node: Node, pod_cgroup: tuple[str, Path], tmp_path: Path
) -> None:
    pod_uid, cgroup = pod_cgroup
    node.policy()
    node.cluster.pods = lambda: {pod_uid: ("ds01-system", "ds01-agent-x")}  # type: ignore[method-assign]
    pid, _ = holder(node, cgroup, tmp_path)
    before = (cgroup / "devices.list").read_text()
    node.agent.reread_views()
    for _ in range(3):
        node.agent.enforce()
    assert alive(pid)
    assert (cgroup / "devices.list").read_text() == before
