"""ResourceQuota works end to end: kube-controller-manager computes it, admission enforces it."""

from __future__ import annotations

from typing import Any

from controller.devcluster.process import wait_until
from tests.controlplane.kube import Kube


def pod(name: str, gpus: int) -> dict[str, Any]:
    requests = {"gpu.ds01.io/gpu": str(gpus)} if gpus else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "busybox:local",
                    "resources": {"requests": requests, "limits": requests},
                }
            ],
        },
    }


def test_pod_is_admitted_once_quota_is_computed_and_over_quota_is_refused(admin: Kube) -> None:
    namespace = admin.namespace("quota-check")
    admin.apply(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "gpu", "namespace": namespace},
            "spec": {"hard": {"pods": "2", "requests.gpu.ds01.io/gpu": "1"}},
        }
    )

    def computed() -> bool:
        status = admin.get("resourcequota", "gpu", "-n", namespace).get("status", {})
        return status.get("hard", {}).get("pods") == "2" and "used" in status

    wait_until(computed, 60, "kube-controller-manager to compute the quota")

    admin.kubectl("create", "-n", namespace, "-f", "-", stdin=_yaml(pod("one-gpu", 1)))
    refused = admin.kubectl(
        "create", "-n", namespace, "-f", "-", stdin=_yaml(pod("second-gpu", 1)), check=False
    )
    assert refused.returncode != 0
    assert "exceeded quota: gpu" in refused.stderr
    assert "requests.gpu.ds01.io/gpu" in refused.stderr

    def used_counted() -> bool:
        used = admin.get("resourcequota", "gpu", "-n", namespace)["status"].get("used", {})
        return used.get("pods") == "1" and used.get("requests.gpu.ds01.io/gpu") == "1"

    wait_until(used_counted, 60, "quota usage to count the admitted pod")

    admin.kubectl("create", "-n", namespace, "-f", "-", stdin=_yaml(pod("cpu-only", 0)))
    third = admin.kubectl(
        "create", "-n", namespace, "-f", "-", stdin=_yaml(pod("third", 0)), check=False
    )
    assert third.returncode != 0 and "exceeded quota" in third.stderr and "pods" in third.stderr


def _yaml(body: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(body)
