"""A thin test helper over kubectl and the official client, as one identity."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from controller.devcluster.controlplane import LocalCluster
from controller.devcluster.process import wait_until

GROUP, VERSION = "gpu.ds01.io", "v1alpha1"


class Kube:
    """Acts as one identity: kubectl with its kubeconfig, or the Python client."""

    def __init__(self, cluster: LocalCluster, kubeconfig: Path) -> None:
        self.cluster = cluster
        self.kubeconfig = kubeconfig
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, kubeconfig=self.kubeconfig, stdin=stdin, check=check)

    def create(
        self, manifest: dict[str, Any] | str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`kubectl create -f -` with the manifest; the user-facing path, messages included."""
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        return self.kubectl("create", "-f", "-", stdin=text, check=check)

    def apply(
        self, manifest: dict[str, Any] | str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        return self.kubectl("apply", "-f", "-", stdin=text, check=check)

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", "-o", "json", *args).stdout)  # type: ignore[no-any-return]

    def account(self, login: str, groups: str, user: str | None = None) -> str:
        """An account namespace `u-<login>` for ``user`` (default `<login>@lab.example`)."""
        user = user or f"{login}@lab.example"
        self.namespace(
            f"u-{login}",
            {"gpu.ds01.io/user": user.replace("@", "-")},
            {
                "gpu.ds01.io/user-name": user,
                "gpu.ds01.io/groups": groups,
                "gpu.ds01.io/linux-user": login,
            },
        )
        return user

    def namespace(
        self,
        name: str,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> str:
        """Create a namespace and wait for its default ServiceAccount (pods need it)."""
        self.core.create_namespace(
            client.V1Namespace(
                metadata=client.V1ObjectMeta(
                    name=name, labels=labels or {}, annotations=annotations or {}
                )
            )
        )

        def has_default_sa() -> bool:
            return any(
                sa.metadata.name == "default"
                for sa in self.core.list_namespaced_service_account(name).items
            )

        wait_until(has_default_sa, 60, f"ServiceAccount default in {name}")
        return name


def agent_kubeconfig(cluster: LocalCluster, admin: Kube, node: str) -> Path:
    pod = f"ds01-agent-{node}"
    admin.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod, "namespace": "ds01-system"},
            "spec": {
                "nodeName": node,
                "serviceAccountName": "ds01-agent",
                "containers": [{"name": "agent", "image": "ds01-controller:dev"}],
            },
        }
    )
    token = admin.kubectl(
        "create",
        "token",
        "ds01-agent",
        "-n",
        "ds01-system",
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        pod,
    ).stdout.strip()
    return cluster.token_kubeconfig(f"agent-{node}", token)
