"""The agent's identity: each agent writes only its own node's GPUNode, and only status.

Tokens are real bound ServiceAccount tokens issued for pods on two different
nodes, as a DaemonSet's pods get them; the apiserver puts the node name in the
token and the ValidatingAdmissionPolicy ds01-agent-own-node compares it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kubernetes import config
from kubernetes.client.exceptions import ApiException

from controller.agent.inventory import DeviceNode, Gpu, Inventory
from controller.agent.publisher import Publisher
from controller.agent.report import Health, status
from controller.api.node import GPUNodeStatus, Violation
from controller.devcluster.controlplane import LocalCluster
from controller.runtime.audit import AuditLog, read_records
from tests.controlplane.kube import Kube, agent_kubeconfig


@pytest.fixture(scope="module")
def agents(cluster: LocalCluster, admin: Kube) -> dict[str, Path]:
    return {node: agent_kubeconfig(cluster, admin, node) for node in ("node-a", "node-b")}


def inventory() -> Inventory:
    gpu = Gpu(
        0,
        "GPU-12345678-1234-4234-8234-123456789abc",
        "NVIDIA A100-SXM4-40GB",
        40960,
        DeviceNode("/dev/nvidia0", 195, 0),
        nvlink_peers=frozenset(),
    )
    return Inventory((gpu,), "560.35.03")


def report(
    now: datetime, violations: list[Violation] | None = None, previous: GPUNodeStatus | None = None
) -> GPUNodeStatus:
    return status(
        inventory=inventory(),
        sample=None,
        workloads=[],
        violations=violations or [],
        mode="Audit",
        applied_generation=1,
        previous=previous,
        health=Health(),
        cgroup_version="v1",
        now=now,
    )


def test_token_carries_the_node_name(cluster: LocalCluster, agents: dict[str, Path]) -> None:
    whoami = json.loads(
        cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=agents["node-a"]).stdout
    )
    extra = whoami["status"]["userInfo"]["extra"]
    assert extra["authentication.kubernetes.io/node-name"] == ["node-a"]


def test_agent_creates_and_reports_its_own_node(
    cluster: LocalCluster, admin: Kube, agents: dict[str, Path], tmp_path: Path
) -> None:
    api = config.new_client_from_config(config_file=str(agents["node-a"]))
    publisher = Publisher(api, "node-a", AuditLog(tmp_path / "audit.jsonl", "ds01-agent"))
    view = publisher.ensure_node()
    assert view.spec.enforcement == "Audit"
    now = datetime.now(UTC)
    first = report(now)
    assert publisher.publish(first, now)
    stored = admin.get("gpunode", "node-a")
    assert (
        stored["status"]["gpus"] == 1 and stored["status"]["agent"]["driverVersion"] == "560.35.03"
    )
    conditions = {c["type"]: c["status"] for c in stored["status"]["conditions"]}
    assert conditions == {"AgentReady": "True", "InventoryCurrent": "True"}
    # Unchanged: nothing is written until the heartbeat is due; changed: written after the interval.
    assert not publisher.publish(
        report(now + timedelta(seconds=5), previous=first), now + timedelta(seconds=5)
    )
    assert publisher.publish(
        report(now + timedelta(seconds=31), previous=first), now + timedelta(seconds=31)
    )
    violation = Violation(
        kind="Unattributed",
        device_uuid=inventory().gpus[0].uuid,
        pid=4242,
        message="HostProcess x uses the GPU and maps to no account",
        since=now,
    )
    changed = report(now + timedelta(seconds=32), [violation], previous=first)
    assert not publisher.publish(
        changed, now + timedelta(seconds=32)
    )  # too soon after the heartbeat
    assert publisher.publish(changed, now + timedelta(seconds=34))
    assert admin.get("gpunode", "node-a")["status"]["violationCount"] == 1
    publisher.announce(([], []), ([], [violation]))
    events = admin.get("events", "-n", "default", "--field-selector", "involvedObject.name=node-a")[
        "items"
    ]
    assert any(e["reason"] == "Unattributed" and e["type"] == "Warning" for e in events)
    audit = read_records(tmp_path / "audit.jsonl")
    assert (
        audit[-1]["event_type"] == "detection.unattributed" and audit[-1]["source"] == "ds01-agent"
    )


def test_agent_cannot_touch_another_nodes_gpunode(
    cluster: LocalCluster, admin: Kube, agents: dict[str, Path], tmp_path: Path
) -> None:
    api = config.new_client_from_config(config_file=str(agents["node-a"]))
    with pytest.raises(ApiException) as refused:
        Publisher(api, "node-b", AuditLog(tmp_path / "a.jsonl", "ds01-agent")).ensure_node()
    assert refused.value.status == 403
    assert (
        "an agent may write only the GPUNode of its own node (its token is bound to node node-a)"
        in str(refused.value.body)
    )
    # node-b's own agent may create it; node-a's still may not write its status.
    Publisher(
        config.new_client_from_config(config_file=str(agents["node-b"])),
        "node-b",
        AuditLog(tmp_path / "b.jsonl", "ds01-agent"),
    ).ensure_node()
    foreign = cluster.kubectl(
        "patch",
        "gpunode",
        "node-b",
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status": {"gpus": 0}}',
        kubeconfig=agents["node-a"],
        check=False,
    )
    assert foreign.returncode != 0 and "ds01-agent-own-node" in foreign.stderr


def test_agent_cannot_write_spec_or_create_with_one(
    cluster: LocalCluster, admin: Kube, agents: dict[str, Path]
) -> None:
    spec_write = cluster.kubectl(
        "patch",
        "gpunode",
        "node-a",
        "--type=merge",
        "-p",
        '{"spec": {"enforcement": "Off"}}',
        kubeconfig=agents["node-a"],
        check=False,
    )
    assert spec_write.returncode != 0 and "forbidden" in spec_write.stderr
    admin.kubectl("delete", "gpunode", "node-b")
    loaded = json.dumps(
        {
            "apiVersion": "gpu.ds01.io/v1alpha1",
            "kind": "GPUNode",
            "metadata": {"name": "node-b"},
            "spec": {"enforcement": "Off"},
        }
    )
    created = cluster.kubectl(
        "create", "-f", "-", stdin=loaded, kubeconfig=agents["node-b"], check=False
    )
    assert created.returncode != 0 and "the operator writes the spec" in created.stderr
