"""GPU pods on the real node: scheduled, given a device by the agent's device plugin
through the kubelet, able to open exactly that device (the kernel's answer),
reported by PodResources, attributed to their user, and refused by quota and
admission where they should be. A pod with a GPU it was not allocated cannot
open it even at its first instruction: containerd runs `ds01-runc`."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controller.devcluster.fakegpu import ProcSpec
from controller.devcluster.process import wait_until
from tests.controlplane.kube import Kube
from tests.node.nodeenv import DEADLINE_S, GPU, MIG_2G, NODE, Device, NodeEnv, allowed

GROUP = "node-gpus"


@pytest.fixture(scope="module")
def alice(node_env: NodeEnv) -> tuple[str, str, Kube]:
    """A user whose policy allows three GPUs' worth (whole GPUs or 2g.20gb slices) at once."""
    node_env.limit(
        "node-gpus",
        GROUP,
        gpu={
            "maxGPUEquivalents": 3,
            "maxDevicesPerWorkload": 2,
            "allowFullGPUs": True,
            "allowedMIGProfiles": ["2g.20gb"],
        },
        rates={"maxWorkloads": 8, "workloadStartsPerHour": 100},
    )
    return node_env.account("gpu-alice", GROUP)


def by_uuid(devices: list[Device]) -> dict[str, Device]:
    return {d.uuid: d for d in devices}


def only_its_own(node_env: NodeEnv, answers: dict[str, str], own: Device) -> None:
    """The probe opened its own GPU's number and was refused every other GPU's."""
    assert allowed(answers[own.label]), answers
    others = {label for label, _, _ in node_env.gpu_numbers()} - {own.label}
    assert others and all(answers[label] == "EPERM" for label in others), answers


def test_a_pod_opens_the_gpu_it_was_allocated_and_no_other(
    node_env: NodeEnv, alice: tuple[str, str, Kube]
) -> None:
    _, namespace, kube = alice
    kube.create(node_env.probe_pod(namespace, "one-gpu", resources={GPU: 1}))
    result = node_env.probed(namespace, "one-gpu")
    [entry] = node_env.pod_devices(namespace, "one-gpu")  # the kubelet's PodResources
    assert entry.resource == GPU and len(entry.device_ids) == 1
    own = by_uuid(node_env.whole_gpus())[entry.device_ids[0]]
    only_its_own(node_env, result["open"], own)
    # The container's /dev has its GPU and the driver's control devices, nothing else.
    assert result["dev"] == sorted(
        [f"nvidia{own.numbers[0][1]}", "nvidia-uvm", "nvidia-uvm-tools", "nvidiactl"]
    )


def test_the_agent_attributes_a_pods_gpu_process_to_its_user(
    node_env: NodeEnv, alice: tuple[str, str, Kube]
) -> None:
    user, namespace, _ = alice
    wait_until(lambda: node_env.phase(namespace, "one-gpu") == "Running", DEADLINE_S, "one-gpu")
    [entry] = node_env.pod_devices(namespace, "one-gpu")
    pid = node_env.container_pid(namespace, "one-gpu")
    index = next(
        d["index"] for d in node_env.status()["devices"] if d["uuid"] == entry.device_ids[0]
    )
    node_env.gpu_processes([ProcSpec(pid=pid, gpu=index, used_mib=1024)])
    try:

        def attributed() -> dict[str, Any] | None:
            for workload in node_env.status().get("workloads") or []:
                if workload.get("kind") == "Pod" and workload.get("name") == "one-gpu":
                    return workload  # type: ignore[no-any-return]
            return None

        wait_until(lambda: attributed() is not None, DEADLINE_S, "the pod in GPUNode status")
        workload = attributed()
        assert workload is not None
        assert workload["owner"] == user
        assert workload["namespace"] == namespace
        assert workload["devices"] == [entry.device_ids[0]]
        assert not [
            v for v in node_env.status().get("violations") or [] if v.get("workload") == "one-gpu"
        ]
    finally:
        node_env.gpu_processes([])


def test_a_job_and_a_deployment_get_their_gpus_the_same_way(
    node_env: NodeEnv, alice: tuple[str, str, Kube]
) -> None:
    _, namespace, kube = alice
    job_spec = node_env.probe_spec({GPU: 1})
    kube.create(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "train", "namespace": namespace},
            "spec": {
                "backoffLimit": 0,
                "template": {"metadata": {"labels": {"w": "train"}}, "spec": job_spec},
            },
        }
    )
    serve_spec = {**node_env.probe_spec({MIG_2G: 1}), "restartPolicy": "Always"}
    kube.create(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "serve", "namespace": namespace},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"w": "serve"}},
                "template": {"metadata": {"labels": {"w": "serve"}}, "spec": serve_spec},
            },
        }
    )
    job_pod = node_env.one_pod(namespace, "w=train")
    [job_entry] = node_env.pod_devices_when_admitted(namespace, job_pod)
    only_its_own(
        node_env,
        node_env.probed(namespace, job_pod)["open"],
        by_uuid(node_env.whole_gpus())[job_entry.device_ids[0]],
    )
    serve_pod = node_env.one_pod(namespace, "w=serve")
    [serve_entry] = node_env.pod_devices_when_admitted(namespace, serve_pod)
    assert serve_entry.resource == MIG_2G
    piece = by_uuid(node_env.slices())[serve_entry.device_ids[0]]
    answers = node_env.probed(namespace, serve_pod)["open"]
    only_its_own(node_env, answers, piece)  # the slice's GPU, no other GPU
    kube.kubectl("delete", "job", "train", "-n", namespace, "--wait=false")
    kube.kubectl("delete", "deployment", "serve", "-n", namespace, "--wait=false")


def test_quota_refuses_a_real_pod_beyond_the_users_allowance(node_env: NodeEnv) -> None:
    node_env.limit(
        "node-gpus-one",
        "node-gpus-one",
        gpu={"maxGPUEquivalents": 1, "maxDevicesPerWorkload": 1, "allowFullGPUs": True},
    )
    _, namespace, kube = node_env.account("gpu-bob", "node-gpus-one")
    kube.create(node_env.probe_pod(namespace, "first", resources={GPU: 1}))
    wait_until(lambda: node_env.phase(namespace, "first") == "Running", DEADLINE_S, "first pod")
    refused = kube.create(node_env.probe_pod(namespace, "second", resources={GPU: 1}), check=False)
    assert refused.returncode != 0
    assert "exceeded quota" in refused.stderr or "ds01-pod-limits" in refused.stderr
    assert node_env.phase(namespace, "second") is None
    assert node_env.phase(namespace, "first") == "Running"


def test_admission_refuses_privileged_and_vendor_gpu_pods_in_an_account(
    node_env: NodeEnv, alice: tuple[str, str, Kube]
) -> None:
    _, namespace, kube = alice
    privileged = node_env.probe_pod(namespace, "root", privileged=True)
    refused = kube.create(privileged, check=False)
    # Pod Security Admission ("baseline") or ds01-pod-security, whichever judges first.
    assert refused.returncode != 0 and "privileged" in refused.stderr
    vendor = node_env.probe_pod(namespace, "vendor", resources={"nvidia.com/gpu": 1})
    refused = kube.create(vendor, check=False)
    assert refused.returncode != 0 and "nvidia.com/gpu" in refused.stderr


def test_a_privileged_container_is_closed_to_unallocated_gpus_from_its_first_instruction(
    node_env: NodeEnv,
) -> None:
    """An admin's privileged pod outside any account: the runtime would open every
    device to it; `ds01-runc` (containerd's runc here) asks the agent and closes the
    GPUs before the container's first process runs."""
    namespace = node_env.admin.namespace("ops-privileged")
    node_env.admin.create(
        node_env.probe_pod(namespace, "debug-shell", privileged=True, device_dir=True, sleep_s=30)
    )
    answers = node_env.probed(namespace, "debug-shell")["open"]
    assert answers and all(answer == "EPERM" for answer in answers.values()), answers
    # The bundle runc read: every GPU number denied, after an allow-all.
    rules = node_env.bundle(namespace, "debug-shell")["linux"]["resources"]["devices"]
    denied = {(r.get("major"), r.get("minor")) for r in rules if not r["allow"]}
    assert {(major, minor) for _, major, minor in node_env.gpu_numbers()} <= denied
    container = node_env.container_id(namespace, "debug-shell")
    assert any(
        r["event_type"] == "access.closed_at_create" and r["details"]["container"] == container
        for r in node_env.agent_audit()
    ), "the agent recorded no closing of this container at its creation"


def test_pods_asking_for_gpus_run_on_the_node_the_scheduler_chose(
    node_env: NodeEnv, alice: tuple[str, str, Kube]
) -> None:
    _, namespace, _ = alice
    pod = node_env.pod(namespace, "one-gpu")
    assert pod["spec"]["nodeName"] == NODE
    scheduled = json.dumps(pod["status"]["conditions"])
    assert '"PodScheduled"' in scheduled
