"""The node and the manifests on it: a real kubelet registers the project's device
plugin, and the operator and agent run as pods from the project's image with
exactly the identities, security contexts, host paths and probes a lab gets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from controller import __version__
from controller.devcluster import kubelet, podnode
from controller.devcluster.process import wait_until
from tests.node.nodeenv import (
    DEADLINE_S,
    NODE,
    NodeEnv,
    host_status,
    root_mount_options,
    same_namespace,
)

SYSTEM = "ds01-system"


def test_the_kubelet_reports_the_node_ready_with_the_plugins_gpus_allocatable(
    node_env: NodeEnv,
) -> None:
    body = node_env.admin.get("node", NODE)
    ready = next(c for c in body["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert body["status"]["nodeInfo"]["kubeletVersion"] == "v1.36.3"
    assert body["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    whole = len(node_env.whole_gpus())
    slices = node_env.slices()
    allocatable = body["status"]["allocatable"]
    assert allocatable["gpu.ds01.io/gpu"] == str(whole)
    assert allocatable["gpu.ds01.io/mig-2g.20gb"] == str(
        sum(
            1
            for s in node_env.status()["devices"]
            for m in s.get("migInstances") or []
            if m["profile"] == "2g.20gb"
        )
    )
    assert allocatable["gpu.ds01.io/mig-1g.10gb"] == str(
        len(slices) - int(allocatable["gpu.ds01.io/mig-2g.20gb"])
    )
    # Registered through the kubelet's own socket, each resource on its own.
    sockets = {p.name for p in kubelet.DEVICE_PLUGIN_DIR.glob("*.sock")}
    assert {"kubelet.sock", "ds01-gpu.sock", "ds01-mig-2g.20gb.sock"} <= sockets


def test_the_operator_and_agent_run_as_pods_of_their_workloads_from_the_image(
    node_env: NodeEnv,
) -> None:
    for selector, kind in (
        ("app.kubernetes.io/name=ds01-operator", "StatefulSet"),
        ("app.kubernetes.io/name=ds01-agent", "DaemonSet"),
    ):
        name = node_env.one_pod(SYSTEM, selector)
        pod = node_env.pod(SYSTEM, name)
        assert pod["spec"]["nodeName"] == NODE
        assert pod["metadata"]["ownerReferences"][0]["kind"] == kind
        status = pod["status"]["containerStatuses"][0]
        assert status["image"].endswith(f"ds01-controller:{__version__}")
        assert status["ready"] is True and "running" in status["state"]


def test_the_operator_runs_confined_as_its_manifest_says(node_env: NodeEnv) -> None:
    name = node_env.one_pod(SYSTEM, "app.kubernetes.io/name=ds01-operator")
    assert node_env.pod(SYSTEM, name)["spec"]["serviceAccountName"] == "ds01-operator"
    status = host_status(node_env.container_pid(SYSTEM, name))
    assert status["Uid"].split()[:2] == ["65532", "65532"]  # runAsUser, never root
    assert int(status["CapEff"], 16) == 0  # capabilities: drop ALL
    assert status["NoNewPrivs"] == "1"  # allowPrivilegeEscalation: false
    assert status["Seccomp"] == "2"  # RuntimeDefault: a filter
    assert "ro" in root_mount_options(node_env.container_pid(SYSTEM, name))


def test_the_agent_runs_privileged_in_the_hosts_pid_namespace(node_env: NodeEnv) -> None:
    name = node_env.agent_pod()
    assert node_env.pod(SYSTEM, name)["spec"]["serviceAccountName"] == "ds01-agent"
    pid = node_env.container_pid(SYSTEM, name)
    assert same_namespace(pid, "pid")  # hostPID
    assert not same_namespace(pid, "mnt")
    status = host_status(pid)
    assert status["Uid"].split()[0] == "0"
    # privileged: every capability the host lets anyone have
    assert int(status["CapEff"], 16) == int(host_status(os.getpid())["CapBnd"], 16)


def test_the_probes_in_the_manifests_pass_on_the_node(node_env: NodeEnv) -> None:
    name = node_env.one_pod(SYSTEM, "app.kubernetes.io/name=ds01-operator")
    pod = node_env.pod(SYSTEM, name)
    container = pod["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # Ready only once the kubelet's readiness probe (GET /healthz) answered.
    wait_until(
        lambda: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in node_env.pod(SYSTEM, name)["status"]["conditions"]
        ),
        DEADLINE_S,
        "the operator pod to be Ready",
    )
    assert node_env.restarts(SYSTEM, name) == 0


def test_the_agent_writes_its_nodes_status_with_its_pods_bound_token(node_env: NodeEnv) -> None:
    status = node_env.status()
    assert status["agent"]["version"] == __version__
    assert status["gpus"] == len(node_env.whole_gpus()) + len(
        {s.numbers[0] for s in node_env.slices()}
    )
    # The status was written by the pod: the GPUNode's managed fields name the agent.
    managers = {
        m["manager"]
        for m in node_env.admin.get("gpunode", NODE, "--show-managed-fields")["metadata"][
            "managedFields"
        ]
        if m.get("subresource") == "status"
    }
    assert "ds01-agent" in managers


def test_the_operators_trail_is_chained_signed_anchored_and_on_stdout(node_env: NodeEnv) -> None:
    """The manifests' trail: the pod writes it where its volume is (a host directory
    here, a PersistentVolumeClaim in a lab), signs it with the Secret's key, anchors
    it under its pod name, and prints it for the log collector."""
    name, namespace, user = node_env.account("audit-ann")
    user.apply(
        {
            "apiVersion": "gpu.ds01.io/v1alpha1",
            "kind": "GPUGrant",
            "metadata": {"name": "trail", "namespace": namespace},
            "spec": {
                "subject": {"kind": "User", "name": name},
                "gpus": {"count": 1},
                "duration": "1h",
                "reason": "audit trail test",
            },
        }
    )
    pod = node_env.one_pod(SYSTEM, "app.kubernetes.io/name=ds01-operator")
    assert pod == "ds01-operator-0"  # a StatefulSet's stable name: the anchor's key

    def anchored() -> str | None:
        found = node_env.admin.kubectl(
            "get", "configmap", "ds01-audit-anchor", "-n", SYSTEM, "-o", "json", check=False
        )
        data = json.loads(found.stdout).get("data") or {} if found.returncode == 0 else {}
        return data.get(pod)

    wait_until(lambda: anchored() is not None, DEADLINE_S, "the operator pod to anchor its trail")
    trail = node_env.node.operator_audit_log
    workdir = node_env.cluster.workdir
    result = subprocess.run(
        [sys.executable, "-m", "controller.cli.main", "audit", "verify", "--file", str(trail),
         "--key-file", str(podnode.audit_key(workdir)), "--anchor-from",
         "configmap/ds01-system/ds01-audit-anchor", "--kubeconfig", str(node_env.cluster.kubeconfig)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "signed through seq" in result.stdout
    # The same records on the container's stdout (`kubectl logs`), for a collector.
    logged = node_env.admin.kubectl("logs", "-n", SYSTEM, pod).stdout
    records = [json.loads(line) for line in logged.splitlines() if line.startswith('{"')]
    on_disk = {line["seq"] for line in map(json.loads, trail.read_text().splitlines())}
    assert {r["seq"] for r in records if "seq" in r and "event_type" in r} & on_disk
