"""The dashboard and alert rules name only metrics the real operator and agent expose.

`ds01 operator` and `ds01 agent` run as processes with `--metrics-port`, as in
production, against a real apiserver: the operator under its ServiceAccount,
the agent with a token bound to a pod on its node, the fake NVML library (the
only simulated part) reporting a real process of a real Linux user on a GPU. A
lab's day is played through so that every labelled series appears: a request
waiting for an approver, one refused by the daily rate, one active and then
revoked, GPU use reported by the agent. Both /metrics are scraped over HTTP
throughout; every metric the dashboard or a rule names must have appeared, with
every label the expression matches on.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from controller.cli.dev import start_operator
from controller.devcluster import simnode
from controller.devcluster.binaries import source_root
from controller.devcluster.controlplane import LocalCluster, free_port
from controller.devcluster.fakegpu import TOPOLOGY_ENV, a100_node
from controller.devcluster.fakegpu.devtree import make_devtree
from controller.devcluster.fakegpu.topology import ProcSpec
from controller.devcluster.process import wait_until
from controller.monitoring.render import expressions
from controller.policy.nodes import ENFORCEMENT_LABEL
from tests.agent.fakehost import fake_library
from tests.agent.users import ensure_user, run_as
from tests.controlplane.argocd import health
from tests.controlplane.kube import Kube, agent_kubeconfig
from tests.unit.promql import parse, selectors

NODE = "gpu-metrics"
LOGIN = "ds01-mona"
PROMETHEUS_LABELS = {"instance", "job"}
"""Labels Prometheus adds to every scraped series."""


@dataclass
class Scrapes:
    """Every series seen on the two endpoints so far: metric name -> label names."""

    urls: dict[str, str]
    seen: dict[str, set[str]] = field(default_factory=dict)

    def scrape(self) -> dict[str, str]:
        texts = {}
        for who, url in self.urls.items():
            with urllib.request.urlopen(url, timeout=5) as response:
                texts[who] = response.read().decode()
            for family in text_string_to_metric_families(texts[who]):
                for sample in family.samples:
                    self.seen.setdefault(sample.name, set()).update(sample.labels)
        return texts

    def has(self, metric: str, **labels: str) -> bool:
        """Whether a current sample of ``metric`` carries ``labels`` (scraping again)."""
        for text in self.scrape().values():
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == metric and labels.items() <= sample.labels.items():
                        return True
        return False


@pytest.fixture(scope="module")
def lab(
    cluster: LocalCluster, admin: Kube, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Scrapes, Kube, str]]:
    """The operator and one node's agent running, a user with a GPU process on that node."""
    root = tmp_path_factory.mktemp("metrics-node")
    operator_port, agent_port = free_port(), free_port()
    start_operator(cluster, f"--metrics-port={operator_port}", "--usage-interval=1s")
    # Audit: the agent reports what it would deny and changes no cgroup of this host.
    admin.apply(simnode.gpunode(NODE, {ENFORCEMENT_LABEL: "Audit"}))
    ensure_user(LOGIN)
    user = admin.account(LOGIN, "lab")
    admin.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "ds01-account-owner", "namespace": f"u-{LOGIN}"},
            "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}],
            "roleRef": {
                "kind": "ClusterRole",
                "name": "ds01-user",
                "apiGroup": "rbac.authorization.k8s.io",
            },
        }
    )
    holder = run_as(LOGIN, "sleep", "600")
    topology = a100_node()
    topology.processes = [ProcSpec(pid=holder.pid, gpu=3, used_mib=2048)]
    topology_file = root / "topology"
    topology.write(topology_file)
    tree = make_devtree(root / "host", topology)
    agent = cluster.spawn(
        "metrics-agent",
        [
            sys.executable,
            "-m",
            "controller.cli.main",
            "agent",
            f"--node={NODE}",
            f"--kubeconfig={agent_kubeconfig(cluster, admin, NODE)}",
            f"--nvml-library={fake_library()}",
            f"--driver-proc-root={tree.proc_root}",
            f"--dev-root={tree.dev_root}",
            f"--state-dir={root / 'state'}",
            f"--audit-log={root / 'audit.jsonl'}",
            f"--metrics-port={agent_port}",
            "--interval=1s",
        ],
        env={**os.environ, TOPOLOGY_ENV: str(topology_file)},
    )
    scrapes = Scrapes(
        {
            "operator": f"http://127.0.0.1:{operator_port}/metrics",
            "agent": f"http://127.0.0.1:{agent_port}/metrics",
        }
    )

    def agent_serves() -> bool:
        if not agent.alive():
            raise RuntimeError(f"the agent exited:\n{agent.log_tail()}")
        try:
            return scrapes.has("ds01_agent_info", node=NODE)
        except OSError:
            return False

    wait_until(agent_serves, 60, "the agent's metrics")
    try:
        yield scrapes, Kube(cluster, cluster.user_kubeconfig(user, ())), user
    finally:
        holder.kill()
        holder.wait()
        agent.stop()


def limit(name: str, group: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gpu.ds01.io/v1alpha1",
        "kind": "GPURateLimit",
        "metadata": {"name": name},
        "spec": {"subjects": [{"kind": "Group", "name": group}], "priority": 50, **spec},
    }


def request(name: str, user: str, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": "gpu.ds01.io/v1alpha1",
        "kind": "GPUGrant",
        "metadata": {"name": name, "namespace": f"u-{LOGIN}"},
        "spec": {
            "subject": {"kind": "User", "name": user},
            "gpus": {"count": gpus},
            "duration": "1h",
            "reason": "metrics test",
        },
    }


def state(kube: Kube, name: str) -> str | None:
    found: str | None = (
        kube.get("gpugrant", name, "-n", f"u-{LOGIN}").get("status", {}).get("state")
    )
    return found


def test_every_metric_of_the_dashboard_and_rules_is_exposed(
    lab: tuple[Scrapes, Kube, str], admin: Kube
) -> None:
    scrapes, mona, user = lab
    admin.apply(
        limit(
            "metrics-lab",
            "lab",
            gpu={"maxGPUEquivalents": 2},
            grants={"approval": "Auto", "maxGPUEquivalents": 2},
            budget={"gpuHours": 100, "window": "168h"},
            rates={"grantRequestsPerDay": 2},
        )
    )
    # Beyond grants.maxGPUEquivalents: waits for an approver.
    mona.create(request("big", user, 4))
    wait_until(lambda: state(mona, "big") == "Pending", 30, "the big request to wait")
    mona.create(request("small", user, 1))
    wait_until(lambda: state(mona, "small") == "Active", 30, "the small request to be Active")
    # The third request of the day is over rates.grantRequestsPerDay.
    mona.create(request("third", user, 1))
    wait_until(lambda: state(mona, "third") == "Denied", 30, "the third request to be refused")

    wait_until(
        lambda: (
            scrapes.has("ds01_group_gpu_equivalents_in_use", group="lab")
            and scrapes.has("ds01_group_gpu_equivalents_granted", group="lab")
            and scrapes.has("ds01_grant_pending_created_timestamp_seconds", grant="big")
            and scrapes.has("ds01_denials_total", reason="RateLimited")
            and scrapes.has("ds01_node_heartbeat_timestamp_seconds", node=NODE)
        ),
        60,
        "the operator's series of a busy lab",
    )
    mona.kubectl(
        "patch",
        "gpugrant",
        "small",
        "-n",
        f"u-{LOGIN}",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"revocation": {"reason": "done early"}}}),
    )
    wait_until(
        lambda: scrapes.has("ds01_revocations_total", reason="Revoked"),
        30,
        "the revocation to be counted",
    )
    assert scrapes.has("ds01_node_enforcement", node=NODE, mode="Audit")

    missing = []
    for where, expression in expressions():
        parse(expression)
        for metric, labels in selectors(expression):
            if metric not in scrapes.seen:
                missing.append(f"{where}: {metric} is not exposed")
            elif unknown := labels - scrapes.seen[metric] - PROMETHEUS_LABELS:
                missing.append(f"{where}: {metric} has no label {sorted(unknown)}")
    assert not missing, "\n".join(missing)


def test_a_misspelt_metric_would_be_caught(lab: tuple[Scrapes, Kube, str]) -> None:
    scrapes, _, _ = lab
    scrapes.scrape()
    assert "ds01_agent_scan_duration_seconds_bucket" in scrapes.seen
    assert "ds01_operator_reconcile_duration_seconds_bucket" in scrapes.seen
    assert "ds01_operator_reconcile_duration_bucket" not in scrapes.seen
    assert [m for m, _ in selectors('ds01_node_enforcment{mode="Enforce"}')] == [
        "ds01_node_enforcment"
    ]


def test_argocd_sees_the_real_agents_audit_node_as_suspended(
    lab: tuple[Scrapes, Kube, str], admin: Kube
) -> None:
    found: dict[str, tuple[str, str]] = {}

    def judged() -> bool:
        found["health"] = health(admin.get("gpunode", NODE))
        return found["health"][0] != "Progressing"

    wait_until(judged, 60, "the agent to apply the operator's Audit spec")
    status, message = found["health"]
    assert status == "Suspended", message
    assert message.startswith("Audit mode: GPU access is reported, not enforced; 8 GPU(s)")


def test_monitoring_kustomization_carries_the_rules_dashboard_and_scrape(
    cluster: LocalCluster,
) -> None:
    root = source_root() / "deploy" / "monitoring"
    rendered = cluster.kubectl("kustomize", str(root)).stdout
    objects = {o["kind"]: o for o in yaml.safe_load_all(rendered) if o}
    assert set(objects) == {"ConfigMap", "PodMonitor", "PrometheusRule"}
    dashboard = objects["ConfigMap"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert (
        dashboard["data"]["grafana-dashboard.json"] == (root / "grafana-dashboard.json").read_text()
    )
    assert objects["PrometheusRule"]["spec"] == yaml.safe_load(
        (root / "prometheus-rules.yaml").read_text()
    )
    selected = objects["PodMonitor"]["spec"]["selector"]["matchExpressions"][0]["values"]
    for manifest in ("operator.yaml", "agent.yaml"):
        text = (source_root() / "manifests" / "base" / manifest).read_text()
        workload = next(
            o for o in yaml.safe_load_all(text) if o and o["kind"] in ("StatefulSet", "DaemonSet")
        )
        template = workload["spec"]["template"]
        assert template["metadata"]["labels"]["app.kubernetes.io/name"] in selected
        ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert "metrics" in ports
