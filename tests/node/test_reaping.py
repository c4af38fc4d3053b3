"""The operator's lifecycle rules and grant revocation acting on really running pods.

The agent reports a pod as a workload when the driver (the fake NVML: only the
GPU is simulated) lists one of its processes on its GPU; the operator then
judges it with seconds-long policies and stops its owner, and the pod's
process really ends (the kernel's answer: the pid is gone). A grant revoked
under a running pod closes its device and ends the hold after the grace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.devcluster.fakegpu import ProcSpec
from controller.devcluster.process import wait_until
from tests.controlplane.kube import Kube
from tests.node.nodeenv import DEADLINE_S, GPU, NODE, NodeEnv, allowed

GROUP = "node-reap"


@pytest.fixture(scope="module")
def erin(node_env: NodeEnv) -> tuple[str, str, Kube]:
    node_env.limit(
        "node-reap",
        GROUP,
        gpu={"maxGPUEquivalents": 3, "maxDevicesPerWorkload": 1, "allowFullGPUs": True},
        grants={"approval": "Auto", "revocationGrace": "3s", "maxGPUEquivalents": 3},
        rates={"maxWorkloads": 8, "workloadStartsPerHour": 100},
        lifecycle={
            "startupGrace": "0s",
            "idle": {"consecutiveChecks": 2, "gpuUtilizationBelowPercent": 5},
            "byWorkloadType": [
                {
                    "type": "job",
                    "idleTimeout": "Unlimited",
                    "maxRuntime": "12s",
                    "stopGracePeriod": "2s",
                },
                {
                    "type": "pod",
                    "idleTimeout": "6s",
                    "maxRuntime": "Unlimited",
                    "stopGracePeriod": "2s",
                },
            ],
        },
    )
    return node_env.account("reap-erin", GROUP)


def gpu_index(node_env: NodeEnv, uuid: str) -> int:
    return int(next(d["index"] for d in node_env.status()["devices"] if d["uuid"] == uuid))


def on_gpu(node_env: NodeEnv, namespace: str, pod: str) -> ProcSpec:
    """The pod's process as the driver would list it: a CUDA context on its GPU."""
    [entry] = node_env.pod_devices_when_admitted(namespace, pod)
    wait_until(lambda: node_env.phase(namespace, pod) == "Running", DEADLINE_S, pod)
    return ProcSpec(
        pid=node_env.container_pid(namespace, pod),
        gpu=gpu_index(node_env, entry.device_ids[0]),
        used_mib=512,
    )


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def workload(name: str, namespace: str, spec: dict[str, Any], kind: str) -> dict[str, Any]:
    template = {"metadata": {"labels": {"w": name}}, "spec": spec}
    if kind == "Job":
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"backoffLimit": 0, "template": template},
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"w": name}}, "template": template},
    }


def test_max_runtime_suspends_a_running_job_and_its_pod_really_ends(
    node_env: NodeEnv, erin: tuple[str, str, Kube]
) -> None:
    _, namespace, kube = erin
    kube.create(workload("long-train", namespace, node_env.probe_spec({GPU: 1}), "Job"))
    pod = node_env.one_pod(namespace, "w=long-train")
    process = on_gpu(node_env, namespace, pod)
    node_env.gpu_processes([process])
    try:
        wait_until(
            lambda: (
                node_env.admin.get("job", "long-train", "-n", namespace)["spec"].get("suspend")
                is True
            ),
            DEADLINE_S,
            "the operator to suspend the Job at its maximum runtime",
        )
        wait_until(lambda: gone(process.pid), DEADLINE_S, "the Job's pod process to end")
        wait_until(
            lambda: not node_env.pods(namespace, "w=long-train"), DEADLINE_S, "the pod to go"
        )
    finally:
        node_env.gpu_processes([])


def test_an_idle_deployment_is_scaled_to_zero_and_its_pod_really_ends(
    node_env: NodeEnv, erin: tuple[str, str, Kube]
) -> None:
    _, namespace, kube = erin
    spec = {**node_env.probe_spec({GPU: 1}), "restartPolicy": "Always"}
    kube.create(workload("notebook", namespace, spec, "Deployment"))
    pod = node_env.one_pod(namespace, "w=notebook")
    process = on_gpu(node_env, namespace, pod)  # utilisation 0 %: idle
    node_env.gpu_processes([process])
    try:
        wait_until(
            lambda: (
                node_env.admin.get("deployment", "notebook", "-n", namespace)["spec"]["replicas"]
                == 0
            ),
            DEADLINE_S,
            "the operator to scale the idle Deployment to zero",
        )
        wait_until(lambda: gone(process.pid), DEADLINE_S, "the Deployment's pod process to end")
        events = node_env.admin.get(
            "events", "-n", namespace, "--field-selector", f"involvedObject.name={pod}"
        )["items"]
        assert any(e["reason"] == "StoppedIdle" for e in events)
    finally:
        node_env.gpu_processes([])


def test_a_grant_revoked_under_a_running_pod_ends_its_hold_after_the_grace(
    node_env: NodeEnv, erin: tuple[str, str, Kube]
) -> None:
    user, namespace, kube = erin
    kube.create(
        {
            "apiVersion": "gpu.ds01.io/v1alpha1",
            "kind": "GPUGrant",
            "metadata": {"name": "paper", "namespace": namespace},
            "spec": {
                "subject": {"kind": "User", "name": user},
                "gpus": {"count": 1},
                "placement": {"reserve": True, "nodeName": NODE},
                "duration": "1h",
                "reason": "node tier: revocation under a running pod",
            },
        }
    )

    def grant() -> dict[str, Any]:
        return node_env.admin.get("gpugrant", "paper", "-n", namespace)

    wait_until(
        lambda: grant().get("status", {}).get("state") == "Active", DEADLINE_S, "grant Active"
    )
    reserved = grant()["status"]["allocations"][0]["devices"][0]["uuid"]
    wait_until(
        lambda: any(
            r["deviceUUID"] == reserved
            for r in node_env.admin.get("gpunode", NODE)["spec"].get("reservations") or []
        ),
        DEADLINE_S,
        "the reservation in the node's spec",
    )
    kube.create(node_env.probe_pod(namespace, "holder", resources={GPU: 1}, hold=True))
    [entry] = node_env.pod_devices_when_admitted(namespace, "holder")
    # The kubelet took the reserved GPU: the plugin ranked its owner's reservation first.
    assert entry.device_ids == (reserved,)
    own = next(d for d in node_env.whole_gpus() if d.uuid == reserved)
    assert allowed(node_env.probed(namespace, "holder")["open"][own.label])
    pid = node_env.container_pid(namespace, "holder")

    kube.kubectl(
        "patch",
        "gpugrant",
        "paper",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"revocation":{"reason":"node tier"}}}',
    )
    wait_until(lambda: gone(pid), DEADLINE_S, "the holder to be ended after the grace")
    ended = [
        r
        for r in node_env.agent_audit()
        if r["event_type"].startswith("access.") and r["user"] == user
    ]
    assert ended, "no audit record of the agent ending the hold"
    # The kubelet sees its container's process gone: the pod (restartPolicy Never) ends.
    wait_until(
        lambda: node_env.phase(namespace, "holder") in ("Failed", "Succeeded"),
        DEADLINE_S,
        "the kubelet to report the holder's pod ended",
    )
