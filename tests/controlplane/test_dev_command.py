"""`ds01 dev up|down|kubeconfig`, the README's first command, run as a newcomer would.

Where the host can (root, cgroup v1 device control, the host packages), `up`
runs a real node (containerd, kubelet, scheduler) with the operator and agent
as pods, and a dockerd behind the agent's gateway; the walk-through test walks
the README's walk-through on it (a GPU pod, then `docker run --gpus 1`). Under
CI=true a host that cannot is a failure (the skip counts as one).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller import __version__
from controller.devcluster import agentnode, simnode
from controller.devcluster import node as realnode
from controller.devcluster.binaries import planned
from controller.devcluster.dockerd import IMAGE
from controller.devcluster.fakegpu import Topology
from controller.devcluster.process import wait_until
from controller.runtime.audit import read_records
from tests.agent.users import ensure_user

DS01 = [sys.executable, "-m", "controller.cli.main"]
UNMET = agentnode.unmet_requirements()
REAL_NODE = not UNMET and not realnode.unmet_requirements()
CONTROL_PLANE = ["etcd", "kube-apiserver", "kube-controller-manager"]
PROCESSES = (
    [*CONTROL_PLANE, "operator"]
    if UNMET
    else [*CONTROL_PLANE, "dockerd", "containerd", "kubelet", "kube-scheduler", "api-relay"]
    if REAL_NODE
    else [*CONTROL_PLANE, "dockerd", "agent", "operator"]
)
AGENT_AUDIT = ("agent-audit", "audit.jsonl") if REAL_NODE else ("audit.jsonl",)
POD = """
apiVersion: v1
kind: Pod
metadata: {name: train, namespace: u-kim}
spec:
  containers:
    - name: train
      image: localhost/ds01/busybox:local
      imagePullPolicy: Never
      command: [sh, -c, 'for d in /dev/nvidia[0-9]*; do exec 3<>"$d" && echo "opened $d"; done; sleep 3600']
      resources: {limits: {gpu.ds01.io/gpu: 1, cpu: 100m, memory: 64Mi}}
"""


def run(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DS01_DEV_DIR": str(workdir)}
    return subprocess.run(
        [*DS01, "dev", *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def kubectl(kubeconfig: str, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        [str(planned().kubectl), "--kubeconfig", kubeconfig, *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def recorded_pids(workdir: Path) -> list[int]:
    return [int(r["pid"]) for r in json.loads((workdir / "pids.json").read_text())]


def recorded_names(workdir: Path) -> list[str]:
    return [str(r["name"]) for r in json.loads((workdir / "pids.json").read_text())]


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie whose parent has already exited."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def test_up_detached_then_kubeconfig_then_down(tmp_path: Path) -> None:
    up = run(tmp_path, "up", "--detach")
    pids = recorded_pids(tmp_path) if (tmp_path / "pids.json").exists() else []
    try:
        assert up.returncode == 0, up.stderr
        kubeconfig = re.search(r"export KUBECONFIG=(\S+)", up.stdout)
        assert kubeconfig, up.stdout
        assert f"Kubernetes {planned().kubernetes_version}" in up.stdout
        assert recorded_names(tmp_path) == PROCESSES
        grants = kubectl(kubeconfig.group(1), "get", "gpugrants", "-A", "-o", "name")
        assert "gpugrant.gpu.ds01.io/neurips-deadline" in grants

        # A newcomer sees the operator at work on the samples: the researcher's Host grant
        # is auto-approved and active on the simulated node, the student's waits.
        def states() -> dict[str, str]:
            listing = json.loads(
                kubectl(kubeconfig.group(1), "get", "gpugrants", "-A", "-o", "json")
            )
            return {
                g["metadata"]["name"]: g.get("status", {}).get("state", "")
                for g in listing["items"]
            }

        wait_until(
            lambda: states() == {"neurips-deadline": "Pending", "nsight-profiling": "Active"},
            60,
            "the operator to decide the sample grants",
        )
        again = run(tmp_path, "up", "--detach")
        assert again.returncode == 1 and "already running" in again.stderr

        minted = run(tmp_path, "kubeconfig", "--user", "248835@lab.example", "--group", "student")
        assert minted.returncode == 0, minted.stderr
        student = re.search(r"export KUBECONFIG=(\S+)", minted.stdout)
        assert student
        whoami = kubectl(student.group(1), "auth", "whoami", "-o", "json")
        user = json.loads(whoami)["status"]["userInfo"]
        assert user["username"] == "248835@lab.example"
        assert "student" in user["groups"]
    finally:
        down = run(tmp_path, "down")
    assert down.returncode == 0 and f"stopped {len(PROCESSES)}" in down.stdout
    assert all(gone(pid) for pid in pids)
    assert not (tmp_path / "pids.json").exists()
    assert "nothing running" in run(tmp_path, "down").stdout


def test_up_in_the_foreground_stops_everything_on_interrupt(tmp_path: Path) -> None:
    env = {**os.environ, "DS01_DEV_DIR": str(tmp_path)}
    process = subprocess.Popen(
        [*DS01, "dev", "up", "--no-samples"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line)
            if line.startswith("running;"):
                break
        assert seen and seen[-1].startswith("running;"), "".join(seen)
        pids = recorded_pids(tmp_path)
        assert all(not gone(pid) for pid in pids)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    # The foreground process was the parent: its children are reaped, not zombies.
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
    wait_until(lambda: not (tmp_path / "pids.json").exists(), 5, "the pid file to be removed")


# The README's walk-through, as an admin and as the user (kim) would type it.
KIM = "kim@lab.example"
KIM_LOGIN = "ds01-kim"
ACCOUNT = f"""
apiVersion: v1
kind: Namespace
metadata:
  name: u-kim
  labels: {{gpu.ds01.io/user: kim-lab.example}}
  annotations:
    gpu.ds01.io/user-name: {KIM}
    gpu.ds01.io/groups: researcher
    gpu.ds01.io/linux-user: {KIM_LOGIN}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: ds01-account-owner, namespace: u-kim}}
subjects: [{{kind: User, name: {KIM}, apiGroup: rbac.authorization.k8s.io}}]
roleRef: {{kind: ClusterRole, name: ds01-user, apiGroup: rbac.authorization.k8s.io}}
---
apiVersion: gpu.ds01.io/v1alpha1
kind: GPURateLimit
metadata: {{name: kim}}
spec:
  subjects: [{{kind: User, name: {KIM}}}]
  priority: 50
  grants: {{approval: Auto, revocationGrace: 20s}}
"""
GRANT = f"""
apiVersion: gpu.ds01.io/v1alpha1
kind: GPUGrant
metadata: {{name: paper, namespace: u-kim}}
spec:
  subject: {{kind: User, name: {KIM}}}
  gpus: {{count: 1}}
  placement: {{reserve: true, nodeName: gpu-node-1}}
  duration: 1h
  reason: the README walk-through
"""


def exports(stdout: str) -> dict[str, str]:
    """The `export NAME=value` lines `up` printed."""
    return dict(re.findall(r"^\s*export (\w+)=(\S+)", stdout, re.MULTILINE))


def leftovers(*markers: str) -> list[str]:
    """Command lines of processes that mention any of ``markers`` (containerd, shims, ...)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if command and any(m in command for m in markers) and not gone(int(entry.name)):
            found.append(f"{entry.name}: {command}")
    return found


class Node:
    """The simulated node as `up` printed it: kubectl as admin, docker through its gateway."""

    def __init__(self, stdout: str) -> None:
        env = exports(stdout)
        self.admin = env["KUBECONFIG"]
        self.dev = Path(env["DS01_GPU_DEV"])
        self.gateway = env["DOCKER_HOST"]
        self.engine = env["DS01_ENGINE"]
        self.docker_env = {**os.environ, "DOCKER_HOST": self.gateway}  # root passes through

    def docker_as(self, login: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """The docker CLI as the Linux user ``login`` through the gateway, as the README shows."""
        return subprocess.run(
            ["runuser", "-u", login, "--", "env", f"DOCKER_HOST={self.gateway}", f"HOME={home}",
             "docker", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )  # fmt: skip

    def gpunode(self) -> dict[str, Any]:
        return json.loads(kubectl(self.admin, "get", "gpunode", "gpu-node-1", "-o", "json"))

    def docker(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", *args],
            env=self.docker_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def running(self, name: str) -> str:
        return self.docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip()

    def opens(self, name: str, device: str = "/dev/gpu0") -> str:
        """Open the container's GPU once more: 'OPEN' or the shell's error."""
        tried = self.docker("exec", name, "sh", "-c", f"exec 4<>{device} && echo OPEN")
        return tried.stdout + tried.stderr

    def applied(self, user: str) -> bool:
        """A reservation for ``user`` is in the spec, and the agent applied that spec."""
        node = self.gpunode()
        reserved = any(r["user"] == user for r in node["spec"].get("reservations") or [])
        return (
            reserved and node["status"].get("appliedGeneration") == node["metadata"]["generation"]
        )


def check_the_agents_report(node: Node) -> None:
    """The status is the agent's own: its version, the fake driver, 80GB boards, simnode's MIG."""
    status = node.gpunode()["status"]
    assert status["agent"]["version"] == __version__
    assert status["agent"]["driverVersion"] == Topology(gpus=[]).driver
    assert status["gpus"] == len(agentnode.topology().gpus)  # 8 where the host has the devices
    assert {d["model"] for d in status["devices"]} == {"NVIDIA A100-SXM4-80GB"}
    layouts = [[m["profile"] for m in d.get("migInstances", [])] for d in status["devices"][:2]]
    assert layouts == [list(simnode.MIG_LAYOUT)] * 2


def walk_through(workdir: Path, node: Node) -> None:
    """The README's walk-through: kim's `docker run --gpus 1` through the gateway opens the
    GPU her grant reserved, what policy forbids is refused, and the grant's end closes it."""
    ensure_user(KIM_LOGIN)
    home = workdir / "kim-home"
    home.mkdir(exist_ok=True)
    shutil.chown(home, KIM_LOGIN)
    kubectl(node.admin, "apply", "-f", "-", stdin=ACCOUNT)
    minted = re.search(r"export KUBECONFIG=(\S+)", run(workdir, "kubeconfig", "--user", KIM).stdout)
    assert minted
    kim = minted.group(1)
    kubectl(kim, "apply", "-f", "-", stdin=GRANT)

    def grant() -> dict[str, Any]:
        return json.loads(kubectl(kim, "get", "gpugrant", "paper", "-n", "u-kim", "-o", "json"))

    wait_until(lambda: grant().get("status", {}).get("state") == "Active", 60, "an Active grant")
    gpu = grant()["status"]["allocations"][0]["devices"][0]["uuid"]
    minor = next(
        d["device"]["minor"] for d in node.gpunode()["status"]["devices"] if d["uuid"] == gpu
    )
    wait_until(lambda: node.applied(KIM), 60, "the agent to apply kim's reservation")
    if REAL_NODE:  # kim's GPU pod: the kubelet gives it the GPU her grant reserved
        kubectl(kim, "apply", "-f", "-", stdin=POD)
        wait_until(
            lambda: f"opened /dev/nvidia{minor}" in pod_log(kim),
            90,
            "kim's pod to open her reserved GPU",
        )
        assert pod_log(kim).count("opened") == 1  # that GPU and no other
        kubectl(kim, "delete", "pod", "train", "-n", "u-kim", "--wait=true")
    started = node.docker_as(
        KIM_LOGIN, home, "run", "-d", "--init", "--name", "kim-job", "--network", "none",
        "--gpus", "1", IMAGE,
        "sh", "-c", 'for d in /dev/nvidia[0-9]*; do exec 3<>"$d"; done; sleep 3600',
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    device = f"/dev/nvidia{minor}"  # the gateway gave kim the GPU her grant reserved
    mapped = json.loads(node.docker("inspect", "kim-job").stdout)[0]["HostConfig"]["Devices"]
    assert f"{node.dev}/nvidia{minor}" in [d["PathOnHost"] for d in mapped]
    assert "OPEN" in node.opens("kim-job", device) and node.running("kim-job") == "true"
    refused = node.docker_as(KIM_LOGIN, home, "run", "--rm", "--privileged", IMAGE, "true")
    assert refused.returncode != 0 and "--privileged" in refused.stderr, refused.stderr
    beyond = node.docker_as(
        KIM_LOGIN, home, "run", "--rm", "--network", "none", "--gpus", "4", IMAGE, "true"
    )
    assert beyond.returncode != 0 and "Error response from daemon" in beyond.stderr

    kubectl(kim, "delete", "gpugrant", "paper", "-n", "u-kim")
    wait_until(
        lambda: "Operation not permitted" in node.opens("kim-job", device), 30, "opens refused"
    )
    assert node.running("kim-job") == "true"  # the holder keeps its descriptor during the grace
    wait_until(lambda: node.running("kim-job") == "false", 120, "the agent to stop the holder")
    # Across the daily rotation: a run that spans midnight UTC splits the records.
    audit = {r["event_type"] for r in read_records(workdir.joinpath("node", *AGENT_AUDIT))}
    assert "access.revoke_warning" in audit and "access.revoke" in audit


def pod_log(kubeconfig: str) -> str:
    result = subprocess.run(
        [str(planned().kubectl), "--kubeconfig", kubeconfig, "logs", "train", "-n", "u-kim"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return result.stdout


def test_up_runs_a_real_agent_whose_gpu_opens_and_closes(tmp_path: Path) -> None:
    if UNMET:
        pytest.skip(f"no agent on this host: needs {'; '.join(UNMET)}")
    up = run(tmp_path, "up", "--detach")
    pids = recorded_pids(tmp_path) if (tmp_path / "pids.json").exists() else []
    try:
        assert up.returncode == 0, up.stderr
        assert recorded_names(tmp_path) == PROCESSES
        node = Node(up.stdout)
        check_the_agents_report(node)
        walk_through(tmp_path, node)
    finally:
        down = run(tmp_path, "down")
    assert down.returncode == 0 and f"stopped {len(PROCESSES)}" in down.stdout, down.stdout
    assert all(gone(pid) for pid in pids)
    # dockerd stopped cleanly: its containerd and container shims went with it.
    assert leftovers(str(tmp_path), str(agentnode.run_dir(tmp_path))) == []


# `up` survives its own history: the state directory (etcd's data) outlives `down`.
OLD_STYLE_NODE = json.dumps(
    {
        "apiVersion": "gpu.ds01.io/v1alpha1",
        "kind": "GPUNode",
        "metadata": {"name": "gpu-node-1"},
        "spec": {"enforcement": "Audit"},
    }
)
NAMED_WRITERS = {"ds01-dev", "ds01-operator", "ds01-agent", "kopf"}


def managers(admin: str, *what: str) -> set[str]:
    """The field managers recorded on the objects ``what`` names."""
    listing = json.loads(kubectl(admin, "get", *what, "--show-managed-fields", "-o", "json"))
    items = listing.get("items", [listing])
    return {m["manager"] for item in items for m in item["metadata"].get("managedFields", [])}


def spec_enforcement_owners(admin: str) -> set[str]:
    """Who owns the GPUNode's `spec.enforcement` in its managedFields."""
    listing = json.loads(
        kubectl(admin, "get", "gpunode", "gpu-node-1", "--show-managed-fields", "-o", "json")
    )
    return {
        m["manager"]
        for m in listing["metadata"]["managedFields"]
        if "f:enforcement" in m.get("fieldsV1", {}).get("f:spec", {})
    }


def enforcing_since(node: Node, started: datetime) -> bool:
    """This run's agent reports the operator's Enforce spec applied, with a fresh heartbeat."""
    gpunode = node.gpunode()
    status = gpunode.get("status") or {}
    heartbeat = (status.get("agent") or {}).get("heartbeatTime")
    return (
        gpunode["spec"].get("enforcement") == "Enforce"
        and status.get("enforcement") == "Enforce"
        and status.get("appliedGeneration") == gpunode["metadata"]["generation"]
        and heartbeat is not None
        and datetime.fromisoformat(heartbeat) >= started
    )


def denies_a_gpu_without_a_grant(node: Node, name: str) -> None:
    """The kernel refuses the GPU to a container whose user holds no grant."""
    started = node.docker(
        "run", "-d", "--rm", "--name", name, "--network", "none", "--user", "65534",
        "--device", f"{node.dev}/nvidia{agentnode.topology().gpus[2].minor}:/dev/gpu0",
        IMAGE, "sleep", "600",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    wait_until(lambda: "Operation not permitted" in node.opens(name), 30, f"{name} to be refused")


def test_up_and_down_repeatedly_over_one_state_directory_always_enforce(tmp_path: Path) -> None:
    """Three cycles: state kept between them, an earlier run's history in it, then --fresh.

    After the first cycle the state holds what made `up` fail before its writers
    were named: the node applied by kubectl's default manager with an Audit
    spec, then the operator's Enforce written over it. `up` must not conflict
    with it, run its agent enforcing each time, and `down` leave nothing behind.
    """
    if UNMET:
        pytest.skip(f"no agent on this host: needs {'; '.join(UNMET)}")
    for cycle, extra in enumerate([(), (), ("--fresh",)]):
        started = datetime.now(UTC).replace(microsecond=0)
        up = run(tmp_path, "up", "--detach", *extra)
        pids = recorded_pids(tmp_path) if (tmp_path / "pids.json").exists() else []
        try:
            assert up.returncode == 0, up.stderr
            assert "node agent:" in up.stdout and recorded_names(tmp_path) == PROCESSES
            node = Node(up.stdout)
            enforcing = functools.partial(enforcing_since, node, started)
            wait_until(enforcing, 60, "the agent to enforce")
            denies_a_gpu_without_a_grant(node, f"no-grant-{cycle}")
            # The spec is the operator's: `up` never took it, not even by forcing a conflict.
            assert spec_enforcement_owners(node.admin) == {"ds01-operator"}
            kept = kubectl(node.admin, "get", "configmap", "-n", "default", "-o", "name")
            assert ("configmap/earlier-run" in kept) == (cycle == 1)
            if cycle == 0:
                assert managers(node.admin, "gpunode", "gpu-node-1") <= NAMED_WRITERS
                assert managers(node.admin, "gpugrants", "-A") <= NAMED_WRITERS
                leave_an_earlier_runs_history(node)
        finally:
            down = run(tmp_path, "down")
        assert down.returncode == 0 and f"stopped {len(PROCESSES)}" in down.stdout, down.stdout
        assert all(gone(pid) for pid in pids)
        assert leftovers(str(tmp_path), str(agentnode.run_dir(tmp_path))) == []


def leave_an_earlier_runs_history(node: Node) -> None:
    """What `up` used to do (apply the node's spec as `kubectl`), then the operator's write."""
    kubectl(node.admin, "create", "configmap", "earlier-run", "-n", "default")
    kubectl(
        node.admin, "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=OLD_STYLE_NODE
    )
    wait_until(lambda: node.gpunode()["spec"]["enforcement"] == "Enforce", 30, "the operator")
    # The state now makes the old way fail: proof that this history is the one that broke `up`.
    old_way = subprocess.run(
        [str(planned().kubectl), "--kubeconfig", node.admin, "apply", "--server-side", "-f", "-"],
        input=OLD_STYLE_NODE,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert old_way.returncode != 0 and "conflict" in old_way.stderr.lower(), old_way.stderr
