"""The whole agent on one node: fake NVML, real processes, real dockerd, real apiserver.

The agent runs in-process with the same wiring `ds01 agent` uses, authenticated
as its ServiceAccount with a token bound to a pod on its node. NVML is the only
simulated part: the fake library lists real pids as GPU processes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from kubernetes import config
from prometheus_client import generate_latest

from controller.agent.deviceplugin.simkubelet import SimulatedPodResources, pod
from controller.agent.main import AgentOptions, build
from controller.devcluster.controlplane import LocalCluster
from controller.devcluster.fakegpu.topology import ProcSpec
from controller.runtime.audit import read_records
from tests.agent.engine import IMAGE, DockerEngine
from tests.agent.fakehost import FakeHost
from tests.agent.users import ensure_user, run_as
from tests.controlplane.kube import Kube, agent_kubeconfig

NODE = "gpu-e2e"


@dataclass
class Running:
    """GPU users on this host: a container of dave's and a login process of carol's."""

    carol: str
    dave: str
    container_id: str
    container_name: str
    container_pid: int
    host_pid: int


@pytest.fixture
def running(admin: Kube, docker_engine: DockerEngine) -> Iterator[Running]:
    host_login, container_login = "ds01-carol", "ds01-dave"
    ensure_user(host_login)
    container_uid = ensure_user(container_login)
    carol = admin.account(host_login, "researcher")
    dave = admin.account(container_login, "researcher")
    name = f"dave-train-{uuid.uuid4().hex[:6]}"
    container_id = docker_engine.docker(
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        name,
        "--user",
        str(container_uid),
        IMAGE,
        "sleep",
        "600",
    )
    host_process = run_as(host_login, "sleep", "600")
    try:
        pid = int(docker_engine.docker("inspect", "-f", "{{.State.Pid}}", container_id))
        yield Running(carol, dave, container_id, name, pid, host_process.pid)
    finally:
        host_process.kill()
        host_process.wait()
        docker_engine.docker("rm", "-f", container_id)
        admin.kubectl(
            "delete", "namespace", f"u-{host_login}", f"u-{container_login}", "--wait=false"
        )


def test_agent_reports_inventory_workloads_and_violations(
    cluster: LocalCluster,
    admin: Kube,
    fake_host: FakeHost,
    docker_engine: DockerEngine,
    running: Running,
    tmp_path: Path,
) -> None:
    topology = fake_host.topology
    first_slice = topology.gpu(0).mig[0]
    topology.processes = [
        ProcSpec(pid=running.container_pid, gpu=3, used_mib=2048),
        ProcSpec(pid=running.host_pid, gpu=0, gi=first_slice.gi, ci=first_slice.ci, used_mib=1024),
    ]
    fake_host.write()
    tree = fake_host.make_tree()
    options = AgentOptions(
        node=NODE,
        kubeconfig=agent_kubeconfig(cluster, admin, NODE),
        nvml_library=fake_host.library,
        proc_root=Path("/proc"),
        driver_proc_root=tree.proc_root,
        dev_root=tree.dev_root,
        docker_socket=str(docker_engine.socket),
        audit_log=tmp_path / "audit.jsonl",
    )
    agent, closers = build(
        options, config.new_client_from_config(config_file=str(options.kubeconfig))
    )
    assert agent.publisher is not None
    agent.publisher.min_interval = timedelta(0)  # every scan's change is written at once
    mig_uuid = next(
        m.uuid
        for m in agent.source.inventory().gpus[0].mig
        if (m.gpu_instance_id, m.compute_instance_id) == (first_slice.gi, first_slice.ci)
    )
    try:
        agent.scan()  # first sighting of the host process: not reported yet
        report = agent.scan()
        stored = admin.get("gpunode", NODE)["status"]
        assert stored["gpus"] == 8 and stored["agent"]["driverVersion"] == topology.driver
        assert {c["type"]: c["status"] for c in stored["conditions"]} == {
            "AgentReady": "True",
            "InventoryCurrent": "True",
        }
        mig_gpu = next(d for d in stored["devices"] if d["index"] == 0)
        assert mig_gpu["migEnabled"] and "utilizationPercent" not in mig_gpu
        workloads = {w["kind"]: w for w in stored["workloads"]}
        container = workloads["Container"]
        assert (container["name"], container["owner"], container["ownerSource"]) == (
            running.container_name,
            running.dave,
            "ContainerUID",
        )
        assert container["devices"] == [topology.gpu(3).uuid]
        assert (workloads["HostProcess"]["owner"], workloads["HostProcess"]["devices"]) == (
            running.carol,
            [mig_uuid],
        )
        assert sorted((v["kind"], v["owner"]) for v in stored["violations"]) == [
            ("Unentitled", running.carol),
            ("Unentitled", running.dave),
        ]
        assert report.workload_count == 2

        # The operator's spec gives carol host access to that slice: her violation ends.
        admin.kubectl(
            "patch",
            "gpunode",
            NODE,
            "--type=merge",
            "-p",
            json.dumps(
                {
                    "spec": {
                        "hostAccess": [
                            {
                                "user": running.carol,
                                "linuxUser": "ds01-carol",
                                "deviceUUIDs": [mig_uuid],
                                "source": {
                                    "kind": "GPUGrant",
                                    "name": "carol-host",
                                    "namespace": "u-ds01-carol",
                                },
                            }
                        ]
                    }
                }
            ),
        )
        agent.policy = agent.publisher.ensure_node()
        agent.scan()
        stored = admin.get("gpunode", NODE)["status"]
        assert [(v["kind"], v["owner"]) for v in stored["violations"]] == [
            ("Unentitled", running.dave)
        ]

        # An XID on GPU 3 makes it unhealthy in what the agent reports.
        topology.add_xid(3, 79)
        fake_host.write()
        agent.scan()
        gpu3 = next(d for d in admin.get("gpunode", NODE)["status"]["devices"] if d["index"] == 3)
        assert gpu3["health"] == "Unhealthy" and "79" in (gpu3.get("healthReason") or "")
    finally:
        for close in reversed(closers):
            close()
    events = admin.get(
        "events", "-n", "default", "--field-selector", f"involvedObject.name={NODE}"
    )["items"]
    assert {"WorkloadDiscovered", "Unentitled"} <= {e["reason"] for e in events}
    audit = [r["event_type"] for r in read_records(tmp_path / "audit.jsonl")]
    assert "detection.workload_discovered" in audit and "detection.unentitled" in audit


def test_pod_use_is_attributed_through_the_api_and_podresources(
    cluster: LocalCluster,
    admin: Kube,
    fake_host: FakeHost,
    tmp_path: Path,
) -> None:
    """A process in a pod's cgroup -> the pod (by UID, from the API) -> its devices (kubelet)."""
    owner = admin.account("ds01-erin", "researcher")
    admin.kubectl(
        "create",
        "-n",
        "u-ds01-erin",
        "-f",
        "-",
        stdin=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "train-0"},
                "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": IMAGE}]},
            }
        ),
    )
    pod_uid = admin.get("pod", "train-0", "-n", "u-ds01-erin")["metadata"]["uid"]
    cgroup = (
        Path("/sys/fs/cgroup/devices/kubepods/besteffort")
        / f"pod{pod_uid}"
        / (uuid.uuid4().hex * 2)
    )
    cgroup.mkdir(parents=True)
    process = run_as("root", "sleep", "600")
    kubelet = SimulatedPodResources(tmp_path / "pod-resources.sock")
    try:
        (cgroup / "cgroup.procs").write_text(str(process.pid))
        topology = fake_host.topology
        topology.processes = [ProcSpec(pid=process.pid, gpu=5, used_mib=4096)]
        fake_host.write()
        tree = fake_host.make_tree()
        options = AgentOptions(
            node=NODE,
            kubeconfig=agent_kubeconfig(cluster, admin, NODE),
            nvml_library=fake_host.library,
            driver_proc_root=tree.proc_root,
            dev_root=tree.dev_root,
            pod_resources_socket=tmp_path / "pod-resources.sock",
        )
        agent, closers = build(
            options, config.new_client_from_config(config_file=str(options.kubeconfig))
        )
        gpu5, gpu6 = (agent.source.inventory().gpus[i].uuid for i in (5, 6))
        kubelet.set_pods([pod("u-ds01-erin", "train-0", {"main": {"gpu.ds01.io/gpu": [gpu6]}})])
        kubelet.start()
        try:
            report = agent.scan()
            [workload] = report.workloads or []
            assert (workload.kind, workload.namespace, workload.name) == (
                "Pod",
                "u-ds01-erin",
                "train-0",
            )
            assert (workload.owner, workload.owner_source, workload.allocated) == (
                owner,
                "Namespace",
                [gpu6],
            )
            [violation] = report.violations or []
            assert (violation.kind, violation.device_uuid) == ("OutsideAllocation", gpu5)
            kubelet.set_pods([pod("u-ds01-erin", "train-0", {"main": {"gpu.ds01.io/gpu": [gpu5]}})])
            assert agent.scan().violations is None
            text = generate_latest().decode()
            assert 'ds01_agent_gpu_processes{gpu="5"} 1.0' in text
            assert 'ds01_agent_violations{kind="OutsideAllocation"} 0.0' in text
        finally:
            for close in reversed(closers):
                close()
    finally:
        kubelet.stop()
        process.kill()
        process.wait()
        cgroup.rmdir()
        cgroup.parent.rmdir()
