"""Faults on the real node: the kubelet, containerd and the agent's pod going away.

Running pods keep their devices and never restart; the device plugin registers
again with a restarted kubelet; the agent re-asserts device rules that
something rewrote after containerd restarted, and a new agent pod (the
DaemonSet's) picks up enforcement where the deleted one left it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.agent.deviceplugin.server import file_identity
from controller.devcluster import kubelet
from controller.devcluster.process import wait_until
from tests.controlplane.kube import Kube
from tests.node.nodeenv import DEADLINE_S, GPU, NODE, Device, NodeEnv, allowed

GROUP = "node-faults"
SYSTEM = "ds01-system"


@pytest.fixture(scope="module")
def fay(node_env: NodeEnv) -> tuple[str, str, Kube]:
    node_env.limit(
        "node-faults",
        GROUP,
        gpu={"maxGPUEquivalents": 6, "maxDevicesPerWorkload": 1, "allowFullGPUs": True},
        rates={"maxWorkloads": 10, "workloadStartsPerHour": 100},
    )
    return node_env.account("faults-fay", GROUP)


def holding(node_env: NodeEnv, namespace: str, name: str, kube: Kube) -> tuple[Device, int]:
    """Start a pod holding one GPU open; its device and its process's host pid."""
    kube.create(node_env.probe_pod(namespace, name, resources={GPU: 1}, hold=True))
    [entry] = node_env.pod_devices_when_admitted(namespace, name)
    own = next(d for d in node_env.whole_gpus() if d.uuid == entry.device_ids[0])
    assert allowed(node_env.probed(namespace, name)["open"][own.label])
    return own, node_env.container_pid(namespace, name)


def container_cgroup(node_env: NodeEnv, namespace: str, name: str) -> Path:
    uid = node_env.pod(namespace, name)["metadata"]["uid"]
    container = node_env.container_id(namespace, name)
    root = Path("/sys/fs/cgroup/devices") / kubelet.CGROUP_PARENT
    [found] = [p for p in root.rglob(container) if p.parent.name == f"pod{uid}"]
    return found


def rogue_allow(cgroup: Path, device: Device) -> None:
    """Open another GPU to a running container, as a runtime rewriting rules would."""
    major, minor = device.numbers[0]
    (cgroup / "devices.allow").write_text(f"c {major}:{minor} rw")
    assert f"c {major}:{minor} rw" in (cgroup / "devices.list").read_text()


def closed_again(cgroup: Path, device: Device) -> bool:
    major, minor = device.numbers[0]
    return f"c {major}:{minor} " not in (cgroup / "devices.list").read_text()


def inode(path: Path) -> tuple[int, int, int] | None:
    """The file's identity: inode number and change time (a socket deleted and bound
    again at once can get the same inode number back)."""
    return file_identity(path)


def test_a_kubelet_restart_keeps_running_pods_and_the_plugin_registers_again(
    node_env: NodeEnv, fay: tuple[str, str, Kube]
) -> None:
    _, namespace, kube = fay
    first, pid = holding(node_env, namespace, "before", kube)
    plugin_socket = kubelet.DEVICE_PLUGIN_DIR / "ds01-gpu.sock"
    old_socket = inode(plugin_socket)
    whole = str(len(node_env.whole_gpus()))

    node_env.node.real.restart_kubelet()

    # The new kubelet wiped the plugin sockets; the agent served and registered again.
    wait_until(
        lambda: inode(plugin_socket) not in (None, old_socket),
        DEADLINE_S,
        "the device plugin to serve a new socket",
    )
    wait_until(
        lambda: node_env.admin.get("node", NODE)["status"]["allocatable"].get(GPU) == whole,
        DEADLINE_S,
        "the GPUs to be allocatable again",
    )
    # The running pod kept its device and its process; nothing restarted.
    # PodResources answers from the restarted kubelet's checkpoint once it has read it.
    wait_until(
        lambda: (
            [e.device_ids for e in node_env.pod_devices(namespace, "before")] == [(first.uuid,)]
        ),
        DEADLINE_S,
        "the restarted kubelet to report the running pod's device",
    )
    assert Path(f"/proc/{pid}").exists()
    assert node_env.restarts(namespace, "before") == 0
    # A new pod gets another GPU.
    second, _ = holding(node_env, namespace, "after", kube)
    assert second.uuid != first.uuid


def test_after_a_containerd_restart_the_agent_reasserts_device_rules(
    node_env: NodeEnv, fay: tuple[str, str, Kube]
) -> None:
    _, namespace, kube = fay
    own, pid = holding(node_env, namespace, "ruled", kube)
    cgroup = container_cgroup(node_env, namespace, "ruled")

    node_env.node.real.restart_containerd()

    other = next(d for d in node_env.whole_gpus() if d.uuid != own.uuid)
    rogue_allow(cgroup, other)
    wait_until(lambda: closed_again(cgroup, other), DEADLINE_S, "the agent to close it again")
    assert Path(f"/proc/{pid}").exists()
    assert node_env.restarts(namespace, "ruled") == 0
    # containerd (and ds01-runc under it) still create GPU pods.
    holding(node_env, namespace, "after-containerd", kube)


def test_a_deleted_agent_pod_comes_back_and_enforces_with_no_pod_restarted(
    node_env: NodeEnv, fay: tuple[str, str, Kube]
) -> None:
    _, namespace, kube = fay
    own, pid = holding(node_env, namespace, "steady", kube)
    cgroup = container_cgroup(node_env, namespace, "steady")
    old_agent = node_env.agent_pod()
    deleted_at = datetime.now(UTC).replace(microsecond=0)

    node_env.admin.kubectl("delete", "pod", old_agent, "-n", SYSTEM, "--wait=true")

    wait_until(
        lambda: (
            node_env.agent_pod() != old_agent
            and node_env.phase(SYSTEM, node_env.agent_pod()) == "Running"
        ),
        DEADLINE_S,
        "the DaemonSet to run a new agent pod",
    )
    wait_until(
        lambda: datetime.fromisoformat(node_env.status()["agent"]["heartbeatTime"]) > deleted_at,
        DEADLINE_S,
        "the new agent to report",
    )
    other = next(d for d in node_env.whole_gpus() if d.uuid != own.uuid)
    rogue_allow(cgroup, other)
    wait_until(lambda: closed_again(cgroup, other), DEADLINE_S, "the new agent to close it")
    assert Path(f"/proc/{pid}").exists()
    for pod in node_env.admin.get("pods", "-n", namespace)["items"]:
        name = pod["metadata"]["name"]
        assert node_env.restarts(namespace, name) == 0, name
