"""Per-account quota and published policy, written by the operator under its own ServiceAccount.

Usage is GPU pods created in the namespace (no kubelet: they are admitted and
counted, never run); kube-controller-manager computes quota status, so every
wait has a deadline and no test sleeps.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from controller.cli.dev import add_simulated_node
from controller.devcluster.process import wait_until
from tests.controlplane.accounts import (
    condition,
    create_pod,
    pod,
    quota,
    refused_with,
    wait_document,
    wait_event,
    wait_quota,
)
from tests.controlplane.conftest import OperatorEnv
from tests.controlplane.kube import Kube
from tests.controlplane.test_operator import grant_manifest, make_account, scrape, wait_state

USER = "quota@lab.example"
OBJECTS = (("resourcequota", "ds01"), ("limitrange", "ds01"), ("configmap", "ds01-policy"))
MIG1, MIG2 = "gpu.ds01.io/mig-1g.10gb", "gpu.ds01.io/mig-2g.20gb"
GPU = "gpu.ds01.io/gpu"


@pytest.fixture(scope="module")
def researcher(operator_env: OperatorEnv) -> tuple[str, Kube]:
    """A researcher (GPURateLimit/researcher: 4 GPU-equivalents, 5 pods, 240 CPUs, 320Gi)."""
    add_simulated_node(operator_env.cluster, "quota-node")
    return make_account(operator_env, USER, "researcher", "quota")


def reconciles(env: OperatorEnv) -> float:
    found = re.search(r"^ds01_operator_reconciles_total (\S+)$", scrape(env), re.MULTILINE)
    assert found is not None
    return float(found[1])


def user_limit(env: OperatorEnv, name: str, user: str, **spec: Any) -> None:
    env.admin.apply(
        {
            "apiVersion": "gpu.ds01.io/v1alpha1",
            "kind": "GPURateLimit",
            "metadata": {"name": name},
            "spec": {"subjects": [{"kind": "User", "name": user}], **spec},
        }
    )


def test_quota_and_limit_range_are_published_from_the_effective_policy(
    operator_env: OperatorEnv, researcher: tuple[str, Kube]
) -> None:
    namespace, kube = researcher
    wait_quota(
        kube,
        namespace,
        {
            f"requests.{GPU}": "4",
            f"requests.{MIG1}": "28",
            f"requests.{MIG2}": "14",
            "pods": "5",
            "limits.cpu": "240",
            "limits.memory": "320Gi",
        },
    )
    stored = quota(kube, namespace)
    assert stored["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "ds01-operator"
    limit_range = kube.get("limitrange", "ds01", "-n", namespace)["spec"]["limits"][0]
    assert limit_range["type"] == "Container"
    assert limit_range["default"] == {"cpu": "16", "memory": "32Gi"}
    assert limit_range["max"] == {"cpu": "48", "memory": "64Gi"}

    # Written only on change: passes that find nothing new write nothing.
    def version(kind: str, name: str) -> str:
        return str(kube.get(kind, name, "-n", namespace)["metadata"]["resourceVersion"])

    before = [version(k, n) for k, n in OBJECTS]
    for touch in range(3):
        passes = reconciles(operator_env)
        operator_env.admin.kubectl(
            "annotate", "namespace", "default", "--overwrite", f"ds01-test/touch={touch}"
        )
        wait_until(lambda p=passes: reconciles(operator_env) > p, 30, "another pass")
    assert [version(k, n) for k, n in OBJECTS] == before


def test_quota_lines_follow_usage(researcher: tuple[str, Kube]) -> None:
    namespace, kube = researcher
    create_pod(kube, namespace, pod("slice", {MIG2: 1}))
    # 2/7 used of 4: whole GPUs 0 + floor(26/7) = 3; 2g slices 1 + 13; 1g slices 0 + 26.
    wait_quota(
        kube,
        namespace,
        {f"requests.{GPU}": "3", f"requests.{MIG2}": "14", f"requests.{MIG1}": "26"},
    )
    create_pod(kube, namespace, pod("whole", {GPU: 2}))
    wait_quota(
        kube, namespace, {f"requests.{GPU}": "3", f"requests.{MIG2}": "7", f"requests.{MIG1}": "12"}
    )
    kube.kubectl("delete", "pod", "slice", "whole", "-n", namespace, "--wait=false")
    wait_quota(kube, namespace, {f"requests.{GPU}": "4", f"requests.{MIG2}": "14"})


def test_quota_lines_follow_policy_and_grants(
    operator_env: OperatorEnv, researcher: tuple[str, Kube]
) -> None:
    namespace, kube = researcher
    user_limit(
        operator_env,
        "quota-slices-only",
        USER,
        gpu={"maxGPUEquivalents": 1, "allowFullGPUs": False, "allowedMIGProfiles": ["2g.20gb"]},
    )
    wait_quota(
        kube, namespace, {f"requests.{GPU}": "0", f"requests.{MIG2}": "3", f"requests.{MIG1}": "0"}
    )
    refused_with(
        kube,
        namespace,
        pod("whole", {GPU: 1}),
        "gpu.ds01.io/gpu is not available to you; you may ask for: gpu.ds01.io/mig-2g.20gb",
    )
    # An active grant (researchers' requests are auto-approved) adds to the allowance.
    kube.create(
        grant_manifest(namespace, "more-slices", USER, gpus={"count": 2, "migProfile": "2g.20gb"})
    )
    wait_state(kube, namespace, "more-slices", "Active")
    # 1 + 4/7 GPU-equivalents: five 2g.20gb slices.
    wait_quota(kube, namespace, {f"requests.{MIG2}": "5"})
    doc = wait_document(
        kube, namespace, lambda d: d["allowance"]["grants"] == "0.571", "the grant in the document"
    )
    assert doc["allowance"]["baseSource"] == "GPURateLimit/quota-slices-only"
    assert [g["name"] for g in doc["grants"]] == ["more-slices"]
    kube.kubectl("delete", "gpugrant", "more-slices", "-n", namespace)
    operator_env.admin.kubectl("delete", "gpuratelimit", "quota-slices-only")
    wait_quota(kube, namespace, {f"requests.{GPU}": "4", f"requests.{MIG2}": "14"})


def test_the_published_policy_explains_limits_usage_and_requests(
    operator_env: OperatorEnv, researcher: tuple[str, Kube]
) -> None:
    namespace, kube = researcher
    # Longer than researchers' grants.maxDuration (336h): waits for an approver.
    kube.create(grant_manifest(namespace, "long-run", USER, duration="400h"))
    wait_state(kube, namespace, "long-run", "Pending")
    operator_env.admin.apply(
        {
            "apiVersion": "gpu.ds01.io/v1alpha1",
            "kind": "GPUExemption",
            "metadata": {"name": "quota-idle-waiver"},
            "spec": {
                "subject": {"kind": "User", "name": USER},
                "exemptFrom": ["IdleTimeout"],
                "category": "Waiver",
                "reason": "interactive notebook",
            },
        }
    )
    create_pod(kube, namespace, pod("counted", {GPU: 1}))
    doc = wait_document(
        kube,
        namespace,
        lambda d: bool(d["pending"]) and bool(d["exemptions"]) and d["usage"]["workloads"] == 1,
        "the pending request, the exemption and the pod in the published policy",
    )
    assert doc["format"] == "ds01.policy/v1"
    assert doc["user"] == USER and doc["groups"] == ["researcher"]
    assert doc["applied"] == ["workload-types", "researcher"]
    assert doc["limits"]["gpu.maxGPUEquivalents"] == {
        "value": 4,
        "source": "GPURateLimit/researcher",
    }
    assert doc["limits"]["lifecycle.byWorkloadType[devcontainer].maxRuntime"]["source"] == (
        "GPURateLimit/workload-types"
    )
    assert doc["allowance"] == {
        "base": "4",
        "baseSource": "GPURateLimit/researcher",
        "grants": "0",
        "total": "4",
        "inUse": "1",
        "remaining": "3",
    }
    lines = {q["resource"]: q for q in doc["quota"]}
    assert lines[f"requests.{GPU}"] == {
        "resource": f"requests.{GPU}",
        "hard": "4",
        "used": "1",
        "gpuEquivalentsEach": "1",
    }
    assert lines["limits.memory"]["used"] == "32Gi"
    assert doc["budget"]["gpuHours"] == "400" and doc["budget"]["window"] == "168h"
    assert doc["rates"]["workloadStartsPerHour"] == "30"
    assert [s["pod"] for s in doc["rates"]["starts"]][-1] == "counted"
    pending = doc["pending"][0]
    assert pending["name"] == "long-run" and pending["state"] == "Pending"
    assert "longer than grants.maxDuration 336h of GPURateLimit/researcher" in pending["message"]
    assert doc["exemptions"] == [
        {"name": "quota-idle-waiver", "exemptFrom": ["IdleTimeout"], "category": "Waiver"}
    ]
    assert condition(doc, "Ready")["status"] == "True"
    # Read by the user with their own certificate; stable while nothing changes.
    version = kube.get("configmap", "ds01-policy", "-n", namespace)["metadata"]["resourceVersion"]
    kube.kubectl("delete", "pod", "counted", "-n", namespace, "--wait=false")
    wait_document(kube, namespace, lambda d: d["usage"]["workloads"] == 0, "the pod to be gone")
    assert (
        kube.get("configmap", "ds01-policy", "-n", namespace)["metadata"]["resourceVersion"]
        != version
    )
    operator_env.admin.kubectl("delete", "gpuexemption", "quota-idle-waiver")
    kube.kubectl("delete", "gpugrant", "long-run", "-n", namespace)


def test_overuse_from_a_race_between_quota_lines_is_detected_and_reported(
    operator_env: OperatorEnv,
) -> None:
    """Two pods asking for different resources can each pass their own line.

    Pausing the operator widens the moment between two admissions and the
    recomputation into seconds, so the race happens every time.
    """
    namespace, kube = make_account(operator_env, "race@lab.example", "researcher", "race")
    user_limit(operator_env, "race-one-gpu", "race@lab.example", gpu={"maxGPUEquivalents": 1})
    wait_quota(kube, namespace, {f"requests.{GPU}": "1", f"requests.{MIG2}": "3"})
    operator_env.pause()
    try:
        create_pod(kube, namespace, pod("whole", {GPU: 1}))
        # The same resource again: the quota itself refuses, atomically.
        second = create_pod(kube, namespace, pod("whole-again", {GPU: 1}), check=False)
        assert second.returncode != 0
        assert "exceeded quota: ds01" in second.stderr and f"requests.{GPU}" in second.stderr
        # A different resource passes its own, not yet recomputed, line.
        create_pod(kube, namespace, pod("slice", {MIG2: 1}))
    finally:
        operator_env.resume()
    doc = wait_document(
        kube,
        namespace,
        lambda d: condition(d, "OverUse").get("status") == "True",
        "the over-use to be reported",
    )
    message = condition(doc, "OverUse")["message"]
    assert "your pods request 1.286 GPU-equivalents but your allowance is 1" in message
    # The newest pod by creation time; creation times have whole seconds, so when both
    # were created within one second either may be named.
    created = {
        name: kube.get("pod", name, "-n", namespace)["metadata"]["creationTimestamp"]
        for name in ("whole", "slice")
    }
    newest = {name for name, at in created.items() if at == max(created.values())}
    named = message.split("(the newest: ", 1)[1].split(")", 1)[0]
    assert "Delete GPU pods to get back within it (the newest: " in message
    assert named in newest, (named, created)
    [event] = wait_event(kube, namespace, "QuotaOverUse")
    assert event["type"] == "Warning" and event["involvedObject"]["name"] == "ds01-policy"
    wait_until(
        lambda: any(
            r["event_type"] == "quota.overuse" and r["details"]["namespace"] == namespace
            for r in operator_env.audit_events()
        ),
        30,
        "the quota.overuse audit record",
    )
    # No room is left on any line until the over-use is resolved.
    wait_quota(
        kube, namespace, {f"requests.{GPU}": "1", f"requests.{MIG2}": "1", f"requests.{MIG1}": "0"}
    )
    kube.kubectl("delete", "pod", "slice", "-n", namespace, "--wait=false")
    wait_event(kube, namespace, "QuotaOverUseResolved")
    operator_env.admin.kubectl("delete", "gpuratelimit", "race-one-gpu")


def test_the_operator_restores_its_quota_and_cleans_up_former_accounts(
    operator_env: OperatorEnv,
) -> None:
    namespace, kube = make_account(operator_env, "former@lab.example", "student", "former")
    wait_quota(kube, namespace, {"pods": "3"})
    admin = operator_env.admin
    admin.kubectl(
        "patch", "resourcequota", "ds01", "-n", namespace, "-p", '{"spec":{"hard":{"pods":"50"}}}'
    )
    wait_quota(kube, namespace, {"pods": "3"})
    admin.kubectl("label", "namespace", namespace, "gpu.ds01.io/user-")

    def gone() -> bool:
        listing = admin.get(
            "resourcequota,limitrange,configmap",
            "-n",
            namespace,
            "-l",
            "app.kubernetes.io/managed-by=ds01-operator",
        )
        return not listing["items"]

    wait_until(gone, 30, "the operator's objects to be removed from a former account")


def test_pods_in_an_account_fit_its_aggregate_memory(
    operator_env: OperatorEnv,
) -> None:
    namespace, kube = make_account(operator_env, "mem@lab.example", "student", "mem")
    user_limit(
        operator_env, "mem-cap", "mem@lab.example", resources={"perUser": {"memory": "20Gi"}}
    )
    wait_quota(kube, namespace, {"limits.memory": "20Gi"})
    create_pod(kube, namespace, pod("big", memory="16Gi"))
    over = create_pod(kube, namespace, pod("bigger", memory="8Gi"), check=False)
    assert over.returncode != 0 and "exceeded quota: ds01" in over.stderr
    assert "limits.memory" in over.stderr
    too_big = create_pod(kube, namespace, pod("huge", memory="33Gi"), check=False)
    assert (
        too_big.returncode != 0 and "maximum memory usage per Container is 32Gi" in too_big.stderr
    )
    operator_env.admin.kubectl("delete", "gpuratelimit", "mem-cap")
    wait_quota(kube, namespace, {"limits.memory": "96Gi"})
