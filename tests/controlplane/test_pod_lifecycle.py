"""Idle and max-runtime reaping of GPU pods, against the real control plane.

No kubelet runs here: kube-controller-manager makes the pods of Jobs and
Deployments, and the tests play the node agent by writing GPUNode status
(the pod as a workload, its devices' utilisation, processes on MIG slices).
The operator checks every second (OperatorEnv) and each test's GPURateLimit
makes the timeouts seconds long; every wait has a deadline.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from controller.cli.dev import add_simulated_node
from controller.devcluster import simnode
from controller.devcluster.process import wait_until
from tests.controlplane.accounts import create_pod, events, pod
from tests.controlplane.conftest import OperatorEnv
from tests.controlplane.kube import Kube
from tests.controlplane.test_account_limits import exemption
from tests.controlplane.test_account_quota import user_limit
from tests.controlplane.test_operator import make_account

NODE = "life-node"
GPU, MIG2 = "gpu.ds01.io/gpu", "gpu.ds01.io/mig-2g.20gb"
DEADLINE_S = 40
INVENTORY = simnode.inventory(NODE)
FULL = [d["uuid"] for d in INVENTORY if not d.get("migInstances")]
SLICES = [i["uuid"] for d in INVENTORY for i in d.get("migInstances", [])]


@pytest.fixture(scope="module")
def node(operator_env: OperatorEnv) -> str:
    add_simulated_node(operator_env.cluster, NODE)
    return NODE


def short_policy(
    env: OperatorEnv, user: str, name: str, *types: dict[str, Any], **lifecycle: Any
) -> None:
    """Seconds-long lifecycle for ``user``: no startup grace, idle after 2 checks."""
    user_limit(
        env,
        name,
        user,
        lifecycle={
            "startupGrace": "0s",
            "idle": {"consecutiveChecks": 2},
            "byWorkloadType": list(types),
            **lifecycle,
        },
    )


def lifecycle_account(
    env: OperatorEnv, tag: str, *types: dict[str, Any], **lifecycle: Any
) -> tuple[str, str, Kube]:
    """A researcher ``life-<tag>@lab.example`` with a seconds-long lifecycle policy."""
    user = f"life-{tag}@lab.example"
    namespace, kube = make_account(env, user, "researcher", f"life{tag}")
    short_policy(env, user, f"life-{tag}", *types, **lifecycle)
    return user, namespace, kube


def workload(
    pod_name: str,
    namespace: str,
    user: str,
    device: str,
    started: datetime | None = None,
    busy_slice: bool = False,
) -> dict[str, Any]:
    """A pod as the agent reports it."""
    out: dict[str, Any] = {
        "kind": "Pod",
        "name": pod_name,
        "namespace": namespace,
        "owner": user,
        "ownerSource": "Namespace",
        "devices": [device],
        "allocated": [device],
        "startedAt": (started or datetime.now(UTC)).isoformat(),
    }
    if busy_slice:
        out["processes"] = [{"pid": 4242, "deviceUUID": device}]
    return out


def play_agent(
    env: OperatorEnv, workloads: list[dict[str, Any]], utilization: dict[str, int] | None = None
) -> None:
    """Write the node's status as its agent would: these workloads, this utilisation."""
    report = simnode.status(NODE)
    for device in report["status"]["devices"]:
        device["utilizationPercent"] = (utilization or {}).get(device["uuid"], 0)
    report["status"]["workloads"] = workloads
    env.admin.kubectl(
        "patch", "gpunode", NODE, "--subresource=status", "--type=merge", "-p", json.dumps(report)
    )


def pods_of(kube: Kube, namespace: str, selector: str) -> list[Any]:
    return list(kube.core.list_namespaced_pod(namespace, label_selector=selector).items)


def one_pod(kube: Kube, namespace: str, selector: str) -> str:
    """The name of the single pod kube-controller-manager made for ``selector``."""
    found: list[Any] = []

    def made() -> bool:
        found[:] = pods_of(kube, namespace, selector)
        return len(found) == 1

    wait_until(made, DEADLINE_S, f"the pod of {selector} in {namespace}", 0.2)
    return str(found[0].metadata.name)


def exists(kube: Kube, namespace: str, name: str) -> bool:
    try:
        kube.core.read_namespaced_pod(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def wait_gone(kube: Kube, namespace: str, name: str) -> None:
    wait_until(lambda: not exists(kube, namespace, name), DEADLINE_S, f"pod {name} gone", 0.2)


def annotations(kube: Kube, namespace: str, name: str) -> dict[str, str]:
    return dict(kube.core.read_namespaced_pod(name, namespace).metadata.annotations or {})


def audit(env: OperatorEnv, event_type: str, namespace: str, name: str) -> list[dict[str, Any]]:
    return [
        r
        for r in env.audit_events()
        if r["event_type"] == event_type
        and r["details"].get("namespace") == namespace
        and r["details"].get("pod") == name
    ]


def wait_audit(env: OperatorEnv, event_type: str, namespace: str, name: str) -> dict[str, Any]:
    wait_until(
        lambda: bool(audit(env, event_type, namespace, name)),
        DEADLINE_S,
        f"{event_type} for {namespace}/{name}",
        0.2,
    )
    return audit(env, event_type, namespace, name)[0]


def pod_events(env: OperatorEnv, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in events(env.admin, namespace, reason) if e["involvedObject"]["name"] == name]


def job(name: str, gpus: dict[str, int]) -> dict[str, Any]:
    template = pod(name, gpus)
    template["spec"]["restartPolicy"] = "Never"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {"metadata": {"labels": {"app": name}}, "spec": template["spec"]},
        },
    }


def deployment(name: str, gpus: dict[str, int]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": pod(name, gpus)["spec"],
            },
        },
    }


@pytest.fixture(scope="module")
def control(operator_env: OperatorEnv) -> tuple[str, str, Kube]:
    """A user whose idle bare pods go after 3 s: their removal shows the checks ran."""
    user, namespace, kube = lifecycle_account(
        operator_env, "control", {"type": "pod", "idleTimeout": "3s"}
    )
    return user, namespace, kube


def control_pod(env: OperatorEnv, control: tuple[str, str, Kube], name: str) -> dict[str, Any]:
    """Create an idle control pod; returns its workload report (on the last full GPU)."""
    user, namespace, kube = control
    create_pod(kube, namespace, pod(name, {GPU: 1}))
    return workload(name, namespace, user, FULL[-1])


def test_idle_job_is_warned_then_suspended(operator_env: OperatorEnv, node: str) -> None:
    user, namespace, kube = lifecycle_account(
        operator_env, "job", {"type": "job", "idleTimeout": "12s"}
    )
    create_pod(kube, namespace, job("train", {GPU: 1}))
    name = one_pod(kube, namespace, "app=train")
    play_agent(operator_env, [workload(name, namespace, user, FULL[0])])

    wait_until(
        lambda: (
            "idle-80" in annotations(kube, namespace, name).get("gpu.ds01.io/lifecycle-warned", "")
        ),
        DEADLINE_S,
        "the idle warning annotation",
        0.2,
    )
    seen = annotations(kube, namespace, name)
    assert "it will be stopped after 12s idle" in seen["gpu.ds01.io/lifecycle-warning"]
    assert datetime.fromisoformat(seen["gpu.ds01.io/idle-since"]) <= datetime.now(UTC)
    wait_until(
        lambda: bool(pod_events(operator_env, namespace, name, "IdleWarning")),
        DEADLINE_S,
        "the IdleWarning Event",
        0.2,
    )
    [warning] = pod_events(operator_env, namespace, name, "IdleWarning")[:1]
    assert warning["type"] == "Warning"
    assert "it will be stopped after 12s idle" in warning["message"]

    wait_until(
        lambda: kube.get("job", "train", "-n", namespace)["spec"].get("suspend") is True,
        DEADLINE_S,
        "the Job to be suspended",
        0.2,
    )
    wait_gone(kube, namespace, name)
    killed = wait_audit(operator_env, "maintenance.idle_kill", namespace, name)
    assert killed["details"]["stopped"] == "Job/train suspended"
    assert killed["user"] == user
    assert audit(operator_env, "maintenance.idle_warning", namespace, name)
    [stopped] = pod_events(operator_env, namespace, name, "StoppedIdle")[:1]
    assert "idle for" in stopped["message"]


def test_idle_deployment_is_scaled_to_zero(operator_env: OperatorEnv, node: str) -> None:
    user, namespace, kube = lifecycle_account(
        operator_env, "deploy", {"type": "pod", "idleTimeout": "4s"}
    )
    create_pod(kube, namespace, deployment("notebook", {GPU: 1}))
    name = one_pod(kube, namespace, "app=notebook")
    play_agent(operator_env, [workload(name, namespace, user, FULL[0])])

    wait_until(
        lambda: kube.get("deployment", "notebook", "-n", namespace)["spec"]["replicas"] == 0,
        DEADLINE_S,
        "the Deployment scaled to zero",
        0.2,
    )
    wait_gone(kube, namespace, name)
    killed = wait_audit(operator_env, "maintenance.idle_kill", namespace, name)
    assert killed["details"]["stopped"] == "Deployment/notebook scaled to 0"
    # The ReplicaSet was stopped through its Deployment, so nothing made a new pod.
    assert pods_of(kube, namespace, "app=notebook") == []


def test_busy_pods_are_kept(
    operator_env: OperatorEnv, node: str, control: tuple[str, str, Kube]
) -> None:
    """A full GPU above the threshold, a MIG slice with compute processes: both busy."""
    user, namespace, kube = lifecycle_account(
        operator_env, "busy", {"type": "pod", "idleTimeout": "3s"}
    )
    create_pod(kube, namespace, pod("busy-gpu", {GPU: 1}))
    create_pod(kube, namespace, pod("busy-slice", {MIG2: 1}))
    create_pod(kube, namespace, pod("idle-slice", {MIG2: 1}))
    reports = [
        workload("busy-gpu", namespace, user, FULL[0]),
        workload("busy-slice", namespace, user, SLICES[0], busy_slice=True),
        workload("idle-slice", namespace, user, SLICES[1]),
        control_pod(operator_env, control, "control-busy"),
    ]
    play_agent(operator_env, reports, utilization={FULL[0]: 90})

    _, control_ns, control_kube = control
    wait_gone(control_kube, control_ns, "control-busy")
    wait_gone(kube, namespace, "idle-slice")  # a slice without processes is idle
    for name in ("busy-gpu", "busy-slice"):
        assert exists(kube, namespace, name)
        assert "gpu.ds01.io/idle-since" not in annotations(kube, namespace, name)
        assert pod_events(operator_env, namespace, name, "IdleWarning") == []


def test_an_exempt_users_idle_pod_is_kept(
    operator_env: OperatorEnv, node: str, control: tuple[str, str, Kube]
) -> None:
    user, namespace, kube = lifecycle_account(
        operator_env, "exempt", {"type": "pod", "idleTimeout": "3s"}
    )
    exemption(operator_env, "life-exempt-idle", user, "IdleTimeout")
    wait_until(
        lambda: (
            operator_env.admin.get("gpuexemption", "life-exempt-idle")
            .get("status", {})
            .get("state")
            == "Active"
        ),
        DEADLINE_S,
        "the exemption in force",
        0.2,
    )
    create_pod(kube, namespace, pod("analysis", {GPU: 1}))
    reports = [
        workload("analysis", namespace, user, FULL[0]),
        control_pod(operator_env, control, "control-exempt"),
    ]
    play_agent(operator_env, reports)

    _, control_ns, control_kube = control
    wait_gone(control_kube, control_ns, "control-exempt")
    wait_until(
        lambda: annotations(kube, namespace, "analysis").get("gpu.ds01.io/idle-checks") == "2",
        DEADLINE_S,
        "the exempt pod judged idle",
        0.2,
    )
    assert exists(kube, namespace, "analysis")
    assert "gpu.ds01.io/lifecycle-warned" not in annotations(kube, namespace, "analysis")
    assert not audit(operator_env, "maintenance.idle_kill", namespace, "analysis")


def test_max_runtime_stops_a_busy_pod(operator_env: OperatorEnv, node: str) -> None:
    user, namespace, kube = lifecycle_account(
        operator_env, "runtime", {"type": "pod", "idleTimeout": "Unlimited", "maxRuntime": "6s"}
    )
    create_pod(kube, namespace, pod("long", {GPU: 1}))
    started = datetime.now(UTC)
    play_agent(
        operator_env,
        [workload("long", namespace, user, FULL[0], started=started)],
        utilization={FULL[0]: 95},
    )

    wait_gone(kube, namespace, "long")
    killed = wait_audit(operator_env, "maintenance.runtime_kill", namespace, "long")
    assert killed["details"]["stopped"] == "Pod/long deleted"
    assert killed["details"]["reason"] == "MaxRuntime"
    assert datetime.fromisoformat(killed["timestamp"]) >= started + timedelta(seconds=6)
    warned = audit(operator_env, "maintenance.runtime_warning", namespace, "long")
    assert {w for r in warned for w in r["details"]["warnings"]} == {"runtime-75", "runtime-90"}
    assert pod_events(operator_env, namespace, "long", "MaxRuntimeWarning")
    assert pod_events(operator_env, namespace, "long", "StoppedMaxRuntime")


def test_a_cpu_only_pod_is_untouched(
    operator_env: OperatorEnv, node: str, control: tuple[str, str, Kube]
) -> None:
    """Even when an agent wrongly reports it on a GPU, a pod asking for none is not judged."""
    user, namespace, kube = control
    create_pod(kube, namespace, pod("cpu-only"))
    reports = [
        workload("cpu-only", namespace, user, FULL[0]),
        control_pod(operator_env, control, "control-cpu"),
    ]
    play_agent(operator_env, reports)

    wait_gone(kube, namespace, "control-cpu")
    assert exists(kube, namespace, "cpu-only")
    assert not any(k.startswith("gpu.ds01.io/") for k in annotations(kube, namespace, "cpu-only"))


def test_keep_alive_is_honoured_for_at_most_keep_alive_max(
    operator_env: OperatorEnv, node: str
) -> None:
    user, namespace, kube = lifecycle_account(
        operator_env, "keep", {"type": "pod", "idleTimeout": "2s"}, keepAliveMax="10s"
    )
    create_pod(kube, namespace, pod("kept", {GPU: 1}))
    create_pod(kube, namespace, pod("plain", {GPU: 1}))
    # The user asks for a day; the policy honours 10 s from the pod's start.
    until = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    kube.kubectl("annotate", "pod", "kept", "-n", namespace, f"gpu.ds01.io/keep-alive={until}")
    started = datetime.now(UTC)
    play_agent(
        operator_env,
        [
            workload("kept", namespace, user, FULL[0], started=started),
            workload("plain", namespace, user, FULL[1], started=started),
        ],
    )

    wait_gone(kube, namespace, "plain")
    assert exists(kube, namespace, "kept")
    wait_gone(kube, namespace, "kept")
    plain = wait_audit(operator_env, "maintenance.idle_kill", namespace, "plain")
    kept = wait_audit(operator_env, "maintenance.idle_kill", namespace, "kept")
    assert datetime.fromisoformat(plain["timestamp"]) < started + timedelta(seconds=10)
    assert datetime.fromisoformat(kept["timestamp"]) >= started + timedelta(seconds=10)


def test_the_idle_clock_survives_an_operator_restart(operator_env: OperatorEnv, node: str) -> None:
    user, namespace, kube = lifecycle_account(
        operator_env, "restart", {"type": "pod", "idleTimeout": "8s"}
    )
    create_pod(kube, namespace, pod("resumed", {GPU: 1}))
    play_agent(operator_env, [workload("resumed", namespace, user, FULL[0])])
    wait_until(
        lambda: annotations(kube, namespace, "resumed").get("gpu.ds01.io/idle-checks") == "2",
        DEADLINE_S,
        "the idle streak recorded on the pod",
        0.2,
    )
    since = datetime.fromisoformat(
        annotations(kube, namespace, "resumed")["gpu.ds01.io/idle-since"]
    )

    operator_env.kill()
    operator_env.start()
    back = datetime.now(UTC)
    killed = wait_audit(operator_env, "maintenance.idle_kill", namespace, "resumed")
    at = datetime.fromisoformat(killed["timestamp"])
    assert at >= since + timedelta(seconds=8)
    # With the state lost, the clock would start again after the restart: two more
    # idle checks, then 8 s more.
    assert at < back + timedelta(seconds=8)
    wait_gone(kube, namespace, "resumed")
