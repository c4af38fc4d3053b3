"""The kustomize overlays render and the real apiserver accepts them (server-side dry-run)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.devcluster.agentnode import run_dir
from controller.devcluster.binaries import source_root
from controller.devcluster.controlplane import LocalCluster
from controller.devcluster.dockerd import Dockerd
from controller.devcluster.podnode import audit_key, overlay
from tests.controlplane.kube import Kube

ROOT = source_root()


def render(cluster: LocalCluster, overlay: str | Path) -> list[dict]:
    directory = overlay if isinstance(overlay, Path) else ROOT / "manifests" / "overlays" / overlay
    text = cluster.kubectl("kustomize", str(directory)).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def selects(pod: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a pod's required node affinity admits a node with ``labels`` (terms OR'ed,
    expressions AND'ed; only the `In` operator is used)."""
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    return any(
        all(
            e["operator"] == "In" and labels.get(e["key"]) in e["values"]
            for e in term["matchExpressions"]
        )
        for term in terms
    )


@pytest.mark.parametrize("overlay", ["dev", "production"])
def test_overlay_is_accepted_by_the_apiserver(
    cluster: LocalCluster, admin: Kube, overlay: str
) -> None:
    objects = render(cluster, overlay)
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("StatefulSet", "ds01-operator") in kinds
    assert ("Service", "ds01-operator") in kinds
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
    operator = objects[("StatefulSet", "ds01-operator")]["spec"]["template"]["spec"]["containers"][
        0
    ]
    agent_pod = objects[("DaemonSet", "ds01-agent")]["spec"]["template"]["spec"]
    assert operator["image"].endswith(":v0.1.0")
    assert operator["resources"]["limits"]["memory"] == "256Mi"
    assert agent_pod["priorityClassName"] == "system-node-critical"
    assert agent_pod["containers"][0]["resources"]["limits"]["memory"] == "128Mi"
    # The admin's own signing key: production generates none.
    assert not any(o["kind"] == "Secret" for o in objects.values())


@pytest.mark.parametrize("overlay", ["dev", "production"])
def test_the_operators_audit_trail_is_durable_chained_signed_and_collected(
    cluster: LocalCluster, overlay: str
) -> None:
    """Each replica's trail on its own claim (it follows the pod), signed with the
    Secret's key, and on stdout for the log collector (issue: nothing lost)."""
    objects = {(o["kind"], o["metadata"]["name"]): o for o in render(cluster, overlay)}
    operator = objects[("StatefulSet", "ds01-operator")]["spec"]
    assert operator["serviceName"] == "ds01-operator"
    assert objects[("Service", "ds01-operator")]["spec"]["clusterIP"] == "None"
    assert operator["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
    (claim,) = operator["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    pod = operator["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env["DS01_AUDIT_LOG"]["value"].startswith(mounts[claim["metadata"]["name"]] + "/")
    # The Lease identity is the pod's stable name, so is the trail's anchor key.
    assert env["DS01_LEADER_IDENTITY"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "--audit-stdout" in container["command"]
    key_arg = next(a for a in container["command"] if a.startswith("--audit-key="))
    volume = next(v for v in pod["volumes"] if v["name"] == "audit-key")
    assert key_arg.removeprefix("--audit-key=") == mounts["audit-key"] + "/key"
    assert volume["secret"]["secretName"] == "ds01-audit-key"
    # 0440 for the operator's group (fsGroup): what `read_key` accepts, nothing wider.
    assert volume["secret"]["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]
    if overlay == "dev":
        assert ("Secret", "ds01-audit-key") in objects


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
    # /etc as a directory: a file mount of /etc/passwd would keep showing the file
    # `useradd` replaced (by a rename), and new logins would stay unknown.
    etc = next(v for v in pod["volumes"] if v.get("hostPath", {}).get("path") == "/etc")
    assert etc["hostPath"]["type"] == "Directory"
    assert "--passwd=/host/etc/passwd" in pod["containers"][0]["command"]
    assert "--audit-stdout" in pod["containers"][0]["command"]  # a copy off the node
    assert pod["hostPID"] is True
    # GPU nodes, found by NFD, by the GPU operator, or labelled by an admin; no others.
    assert selects(pod, {"feature.node.kubernetes.io/pci-10de.present": "true"})
    assert selects(pod, {"nvidia.com/gpu.present": "true"})
    assert selects(pod, {"gpu.ds01.io/gpu-node": "true"})
    assert not selects(pod, {"feature.node.kubernetes.io/pci-1002.present": "true"})
    assert not selects(pod, {})
    # The driver's NVML library, from the host, where the agent loads it.
    nvml = next(v for v in pod["volumes"] if v["name"] == "nvml")
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "nvml")
    assert nvml["hostPath"] == {
        "path": "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
        "type": "File",
    }
    assert mount["readOnly"] is True
    assert f"--nvml-library={mount['mountPath']}" in pod["containers"][0]["command"]


def test_the_local_overlay_changes_only_what_the_simulated_node_needs(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """`ds01 dev up`'s overlay: identities, security contexts, probes and container paths
    stay the dev overlay's; host paths move to the simulation and the state directory."""
    engine = Dockerd(tmp_path / "docker", run_dir(tmp_path))  # sockets under /run
    local = overlay(
        tmp_path, sim_root=tmp_path / "sim", image_tag="0.1.0", api_port=6443, engine=engine
    )
    dev = {(o["kind"], o["metadata"]["name"]): o for o in render(cluster, "dev")}
    made = {(o["kind"], o["metadata"]["name"]): o for o in render(cluster, local)}
    assert made.keys() == dev.keys()
    for key in (("DaemonSet", "ds01-agent"), ("StatefulSet", "ds01-operator")):
        ours, theirs = made[key]["spec"]["template"]["spec"], dev[key]["spec"]["template"]["spec"]
        assert ours["serviceAccountName"] == theirs["serviceAccountName"]
        assert ours.get("securityContext") == theirs.get("securityContext")
        assert ours.get("hostPID") == theirs.get("hostPID")
        for mine, base in zip(ours["containers"], theirs["containers"], strict=True):
            assert mine["image"] == "ds01-controller:0.1.0"
            assert mine.get("securityContext") == base.get("securityContext")
            assert mine.get("livenessProbe") == base.get("livenessProbe")
            assert mine.get("readinessProbe") == base.get("readinessProbe")
            assert mine["command"][: len(base["command"])] == base["command"]
            base_mounts = {m["mountPath"] for m in base["volumeMounts"]}
            assert base_mounts <= {m["mountPath"] for m in mine["volumeMounts"]}
    agent = made[("DaemonSet", "ds01-agent")]["spec"]["template"]["spec"]
    paths = {v["name"]: v["hostPath"]["path"] for v in agent["volumes"] if "hostPath" in v}
    assert paths["dev"] == str(tmp_path / "sim" / "dev")
    assert paths["nvml"] == str(tmp_path / "sim" / "libnvidia-ml.so.1")
    assert paths["proc"] == "/proc" and paths["cgroup"] == "/sys/fs/cgroup"
    assert paths["device-plugins"] == "/var/lib/kubelet/device-plugins"
    assert all("emptyDir" not in v for v in agent["volumes"] if "hostPath" in v)
    # No storage provisioner here: the operator's claim gives way to a host directory,
    # and its signing key is the state directory's own, not the dev overlay's.
    operator = made[("StatefulSet", "ds01-operator")]["spec"]
    assert "volumeClaimTemplates" not in operator
    (audit,) = [v for v in operator["template"]["spec"]["volumes"] if v["name"] == "audit"]
    assert audit["hostPath"]["path"] == str(tmp_path / "operator-audit")
    secret = made[("Secret", "ds01-audit-key")]
    assert base64.b64decode(secret["data"]["key"]) == audit_key(tmp_path).read_bytes()


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
    assert selects(agent["spec"]["template"]["spec"], worker["labels"])


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
