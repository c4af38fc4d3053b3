"""The kustomize overlays render and the real apiserver accepts them (server-side dry-run)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from controller.devcluster.binaries import source_root
from controller.devcluster.controlplane import LocalCluster
from tests.controlplane.kube import Kube

ROOT = source_root()


def render(cluster: LocalCluster, overlay: str) -> list[dict]:
    text = cluster.kubectl("kustomize", str(ROOT / "manifests" / "overlays" / overlay)).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.mark.parametrize("overlay", ["dev", "production"])
def test_overlay_is_accepted_by_the_apiserver(
    cluster: LocalCluster, admin: Kube, overlay: str
) -> None:
    objects = render(cluster, overlay)
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("Deployment", "ds01-operator") in kinds
    assert ("DaemonSet", "ds01-agent") in kinds
    assert ("CustomResourceDefinition", "gpugrants.gpu.ds01.io") in kinds
    assert ("ClusterRole", "ds01-approver") in kinds
    # Namespaces must exist for namespaced objects to pass a dry run.
    admin.kubectl(
        "apply", "--server-side", "-f", str(ROOT / "manifests" / "core" / "namespace.yaml")
    )
    result = admin.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--force-conflicts",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(objects),
    )
    assert "(server dry run)" in result.stdout
    assert result.stdout.count("(server dry run)") == len(objects)


def test_production_pins_an_image_and_bounds_memory(cluster: LocalCluster) -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in render(cluster, "production")}
    operator = objects[("Deployment", "ds01-operator")]["spec"]["template"]["spec"]["containers"][0]
    agent_pod = objects[("DaemonSet", "ds01-agent")]["spec"]["template"]["spec"]
    assert operator["image"].endswith(":v0.1.0")
    assert operator["resources"]["limits"]["memory"] == "256Mi"
    assert agent_pod["priorityClassName"] == "system-node-critical"
    assert agent_pod["containers"][0]["resources"]["limits"]["memory"] == "128Mi"


def test_agent_daemonset_mounts_what_the_agent_needs(cluster: LocalCluster) -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in render(cluster, "dev")}
    pod = objects[("DaemonSet", "ds01-agent")]["spec"]["template"]["spec"]
    host_paths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert {
        "/proc",
        "/sys/fs/cgroup",
        "/dev",
        "/var/lib/kubelet/device-plugins",
        "/var/lib/kubelet/pod-resources",
        "/var/lib/ds01",
    } <= host_paths
    assert pod["hostPID"] is True
    assert pod["nodeSelector"] == {"gpu.ds01.io/gpu-node": "true"}


@pytest.fixture(scope="module")
def kindcheck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build tools/kindcheck (kind's own config types, from the Go module proxy)."""
    out = tmp_path_factory.mktemp("kindcheck") / "kindcheck"
    subprocess.run(
        ["go", "build", "-o", str(out), "."],
        cwd=ROOT / "tools" / "kindcheck",
        check=True,
        env={**os.environ, "CGO_ENABLED": "0"},
    )
    return out


def test_kind_config_matches_kinds_schema(kindcheck: Path) -> None:
    result = subprocess.run(
        [str(kindcheck), str(ROOT / "kind-config.yaml")], capture_output=True, text=True, check=True
    )
    summary = json.loads(result.stdout)
    roles = [n["role"] for n in summary["nodes"]]
    assert roles == ["control-plane", "worker"]
    worker = summary["nodes"][1]
    assert worker["labels"] == {"gpu.ds01.io/gpu-node": "true"}
    # The label must select the agent DaemonSet onto the worker.
    agent = yaml.safe_load((ROOT / "manifests" / "base" / "agent.yaml").read_text())
    assert agent["spec"]["template"]["spec"]["nodeSelector"].items() <= worker["labels"].items()


def test_kindcheck_refuses_a_misspelt_field(kindcheck: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes:\n- role: worker\n  lables: {a: b}\n"
    )
    result = subprocess.run([str(kindcheck), str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "lables" in result.stderr
    no_control_plane = tmp_path / "workers.yaml"
    no_control_plane.write_text(
        "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes:\n- role: worker\n"
    )
    result = subprocess.run(
        [str(kindcheck), str(no_control_plane)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1 and "control-plane" in result.stderr
