"""The apiserver itself refuses pods that escape GPU control, acting as the student.

The student holds a real client certificate; Pod Security Admission (the
operator labels the account `baseline`), the ValidatingAdmissionPolicies in
manifests/core/admission.yaml (with the operator's per-account parameters) and
the ResourceQuota judge every request, as deployed: whichever layer refuses
first answers (test_pod_escapes.py proves each layer alone). Each refusal must
say what to do.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.cli.dev import add_simulated_node
from controller.devcluster.process import wait_until
from tests.controlplane.accounts import (
    create_pod,
    pod,
    published,
    refused_with,
    wait_document,
    wait_quota,
)
from tests.controlplane.conftest import OperatorEnv
from tests.controlplane.kube import Kube
from tests.controlplane.test_operator import make_account

USER = "adm@lab.example"


@pytest.fixture(scope="module")
def student(operator_env: OperatorEnv) -> tuple[str, Kube]:
    """A student account (GPURateLimit/student: 2 GPU-equivalents, 2 devices per pod)."""
    add_simulated_node(operator_env.cluster, "admission-node")
    namespace, kube = make_account(operator_env, USER, "student", "adm")
    wait_document(
        kube,
        namespace,
        lambda d: "requests.gpu.ds01.io/mig-2g.20gb" in {q["resource"] for q in d["quota"]},
        "the operator to publish the student's policy",
    )
    wait_quota(kube, namespace, {"requests.gpu.ds01.io/gpu": "2", "pods": "3"})
    refused_with(kube, namespace, pod("probe", {"gpu.ds01.io/gpu": 3}), "ds01-pod-limits")
    wait_until(
        lambda: (
            (operator_env.admin.core.read_namespace(namespace).metadata.labels or {}).get(
                "pod-security.kubernetes.io/enforce"
            )
            == "baseline"
        ),
        30,
        "the operator's Pod Security label on the student's account",
        0.2,
    )
    return namespace, kube


def refused(kube: Kube, namespace: str, body: dict[str, Any]) -> str:
    result = create_pod(kube, namespace, body, check=False)
    assert result.returncode != 0, f"pod {body['metadata']['name']} was admitted"
    return str(result.stderr)


FORBIDDEN = {
    "privileged": (
        pod("privileged", securityContext={"privileged": True}),
        "PodSecurity",
        'privileged (container "main" must not set securityContext.privileged=true)',
    ),
    "sys-admin-in-init-container": (
        {
            **pod("sysadmin"),
            "spec": {
                "initContainers": [
                    {
                        "name": "setup",
                        "image": "busybox:local",
                        "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}},
                    }
                ],
                "containers": [{"name": "main", "image": "busybox:local"}],
            },
        },
        "PodSecurity",
        'non-default capabilities (container "setup" must not include "SYS_ADMIN" in '
        "securityContext.capabilities.add)",
    ),
    "all-capabilities": (
        pod("allcaps", securityContext={"capabilities": {"add": ["ALL"]}}),
        "PodSecurity",
        'container "main" must not include "ALL" in securityContext.capabilities.add',
    ),
    "nvidia-visible-devices": (
        pod("nvenv", env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]),
        "ds01-pod-security",
        "spec.containers[name=main].env[name=NVIDIA_VISIBLE_DEVICES]: NVIDIA_* variables",
    ),
    "nvidia-env-prefix": (
        pod("nvprefix", envFrom=[{"prefix": "NVIDIA_", "configMapRef": {"name": "mine"}}]),
        "ds01-pod-security",
        "spec.containers[name=main].envFrom[prefix=NVIDIA_]",
    ),
    "hostpath-dev": (
        {
            **pod("devmount"),
            "spec": {
                "containers": [{"name": "main", "image": "busybox:local"}],
                "volumes": [{"name": "gpu", "hostPath": {"path": "/dev//nvidia0"}}],
            },
        },
        "PodSecurity",
        'hostPath volumes (volume "gpu")',
    ),
    "hostpath-root": (
        {
            **pod("rootmount"),
            "spec": {
                "containers": [{"name": "main", "image": "busybox:local"}],
                "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
            },
        },
        "PodSecurity",
        'hostPath volumes (volume "host")',
    ),
    "hostpath-cgroup": (
        {
            **pod("cgroupmount"),
            "spec": {
                "containers": [{"name": "main", "image": "busybox:local"}],
                "volumes": [{"name": "cg", "hostPath": {"path": "/sys/fs/cgroup"}}],
            },
        },
        "PodSecurity",
        'hostPath volumes (volume "cg")',
    ),
    "docker-socket": (
        {
            **pod("dockersock"),
            "spec": {
                "containers": [{"name": "main", "image": "busybox:local"}],
                "volumes": [{"name": "sock", "hostPath": {"path": "/var/run/docker.sock"}}],
            },
        },
        "PodSecurity",
        'hostPath volumes (volume "sock")',
    ),
    "vendor-gpus": (
        pod("vendor", {"nvidia.com/gpu": 8}),
        "ds01-pod-security",
        # The apiserver copies an extended resource's limit into its request.
        "spec.containers[name=main].resources.limits[nvidia.com/gpu], "
        "spec.containers[name=main].resources.requests[nvidia.com/gpu]: GPUs from other "
        "device plugins or resource claims are not counted by your ds01 allowance",
    ),
    "three-gpus": (
        pod("three", {"gpu.ds01.io/gpu": 3}),
        "ds01-pod-limits",
        "this pod asks for 3 GPU devices (gpu.ds01.io/ limits over all its containers); ask "
        "for at most 2 per pod (gpu.maxDevicesPerWorkload from GPURateLimit/student)",
    ),
    "devices-over-containers": (
        {
            **pod("spread"),
            "spec": {
                "containers": [
                    {
                        "name": f"c{i}",
                        "image": "busybox:local",
                        "resources": {"limits": {"gpu.ds01.io/mig-1g.10gb": "1"}},
                    }
                    for i in range(3)
                ]
            },
        },
        "ds01-pod-limits",
        "this pod asks for 3 GPU devices",
    ),
    "profile-not-offered": (
        pod("bigslice", {"gpu.ds01.io/mig-7g.80gb": 1}),
        "ds01-pod-limits",
        "gpu.ds01.io/mig-7g.80gb is not available to you; you may ask for: gpu.ds01.io/gpu, "
        "gpu.ds01.io/mig-1g.10gb, gpu.ds01.io/mig-2g.20gb",
    ),
}


@pytest.mark.parametrize("case", sorted(FORBIDDEN))
def test_the_apiserver_refuses_each_forbidden_pod(student: tuple[str, Kube], case: str) -> None:
    namespace, kube = student
    body, policy, message = FORBIDDEN[case]
    stderr = refused(kube, namespace, body)
    if policy == "PodSecurity":
        assert 'violates PodSecurity "baseline:latest"' in stderr, stderr
    else:
        assert f"ValidatingAdmissionPolicy '{policy}'" in stderr, stderr
    assert message in " ".join(stderr.split()), stderr


def test_a_compliant_gpu_pod_is_admitted_with_the_limit_range_defaults(
    student: tuple[str, Kube],
) -> None:
    namespace, kube = student
    body = pod("fine", {"gpu.ds01.io/mig-2g.20gb": 2}, env=[{"name": "CUDA_CACHE", "value": "1"}])
    body["spec"]["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": "sets"}}]
    create_pod(kube, namespace, body)
    stored = kube.core.read_namespaced_pod("fine", namespace)
    # LimitRange ds01 filled in GPURateLimit/student's per-container defaults.
    assert stored.spec.containers[0].resources.limits["cpu"] == "8"
    assert stored.spec.containers[0].resources.limits["memory"] == "16Gi"
    kube.kubectl("delete", "pod", "fine", "-n", namespace, "--wait=false")


def test_an_over_quota_gpu_pod_is_refused_with_what_to_do(student: tuple[str, Kube]) -> None:
    namespace, kube = student
    # Pods an earlier test deleted count until the operator's next pass.
    wait_document(
        kube, namespace, lambda d: d["allowance"]["remaining"] == "2", "the whole allowance"
    )
    create_pod(kube, namespace, pod("two-gpus", {"gpu.ds01.io/gpu": 2}))
    wait_document(
        kube,
        namespace,
        lambda d: d["allowance"]["remaining"] == "0",
        "the operator to see the allowance used up",
    )
    wait_quota(kube, namespace, {"requests.gpu.ds01.io/gpu": "2"})
    stderr = " ".join(
        refused(kube, namespace, pod("slice", {"gpu.ds01.io/mig-1g.10gb": 1})).split()
    )
    assert (
        "this pod needs 0.143 GPU-equivalents but only 0.000 of your 2 are left (2 in use by "
        "your pods; allowance from GPURateLimit/student); delete GPU pods you no longer need"
    ) in stderr
    # CPU-only work is not held back by the GPU allowance.
    create_pod(kube, namespace, pod("cpu-only"))
    kube.kubectl("delete", "pod", "two-gpus", "cpu-only", "-n", namespace, "--wait=false")
    wait_document(
        kube, namespace, lambda d: d["allowance"]["remaining"] == "2", "the allowance to return"
    )


def test_ephemeral_containers_are_judged_too(
    operator_env: OperatorEnv, student: tuple[str, Kube]
) -> None:
    namespace, kube = student
    create_pod(kube, namespace, pod("debug-me"))
    body = {
        "spec": {
            "ephemeralContainers": [
                {
                    "name": "dbg",
                    "image": "busybox:local",
                    "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}],
                }
            ]
        }
    }
    # The student's role has no pods/ephemeralcontainers; the admin's request reaches admission.
    with pytest.raises(ApiException) as by_student:
        kube.core.patch_namespaced_pod_ephemeralcontainers("debug-me", namespace, body)
    assert by_student.value.status == 403
    admin = client.CoreV1Api(operator_env.admin.api)
    with pytest.raises(ApiException) as by_admin:
        admin.patch_namespaced_pod_ephemeralcontainers("debug-me", namespace, body)
    assert "ds01-pod-security" in str(by_admin.value.body)
    assert "spec.ephemeralContainers[name=dbg].env[name=NVIDIA_VISIBLE_DEVICES]" in str(
        by_admin.value.body
    )
    kube.kubectl("delete", "pod", "debug-me", "-n", namespace, "--wait=false")


def test_pods_outside_accounts_are_not_judged(operator_env: OperatorEnv) -> None:
    admin = operator_env.admin
    namespace = admin.namespace("not-an-account")
    create_pod(admin, namespace, pod("privileged", securityContext={"privileged": True}))


def test_the_published_policy_is_read_only_for_its_user(student: tuple[str, Kube]) -> None:
    namespace, kube = student
    assert published(kube, namespace)["format"] == "ds01.policy/v1"
    edit = kube.kubectl(
        "patch",
        "configmap",
        "ds01-policy",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"data": {"maxDevicesPerWorkload": "Unlimited"}}',
        check=False,
    )
    assert edit.returncode != 0
    assert "ConfigMap ds01-policy is written by the ds01 operator only" in edit.stderr
    delete = kube.kubectl("delete", "configmap", "ds01-policy", "-n", namespace, check=False)
    assert delete.returncode != 0 and "ds01-operator-objects" in delete.stderr
    forged = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "looks-official",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "ds01-operator"},
        },
        "data": {},
    }
    assert kube.create(forged, check=False).returncode != 0
    quota = kube.kubectl(
        "patch",
        "resourcequota",
        "ds01",
        "-n",
        namespace,
        "-p",
        '{"spec":{"hard":{"pods":"99"}}}',
        check=False,
    )
    assert quota.returncode != 0 and "forbidden" in quota.stderr
    own = {**forged, "metadata": {"name": "mine", "namespace": namespace}}
    kube.create(own)  # the user's other ConfigMaps are theirs


def test_a_new_account_gets_its_limits_once_the_operator_publishes_them(
    operator_env: OperatorEnv,
) -> None:
    """Before the operator has published an account's parameters, the per-account
    checks fail open (pod creation is a user operation); the security rules do not."""
    operator_env.pause()
    try:
        namespace, kube = make_account(operator_env, "fresh@lab.example", "student", "fresh")
        create_pod(kube, namespace, pod("early", {"gpu.ds01.io/gpu": 3}))
        security = refused(kube, namespace, pod("priv", securityContext={"privileged": True}))
        assert "ds01-pod-security" in security
    finally:
        operator_env.resume()
    # Published: the early pod is over the allowance, and reported as such.
    doc = wait_document(
        kube,
        namespace,
        lambda d: any(c["type"] == "OverUse" and c["status"] == "True" for c in d["conditions"]),
        "the early pod to be reported as over-use",
    )
    assert doc["allowance"]["inUse"] == "3" and doc["allowance"]["total"] == "2"
    refused_with(kube, namespace, pod("late", {"gpu.ds01.io/gpu": 3}), "ask for at most 2 per pod")
