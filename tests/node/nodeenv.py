"""The node tier's helpers: accounts, GPU probe pods, and reading the node's answers."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.agent.podresources import ContainerDevices, PodResourcesClient
from controller.devcluster import image, kubelet, podnode
from controller.devcluster.controlplane import LocalCluster
from controller.devcluster.fakegpu import ProcSpec, Topology
from controller.devcluster.process import wait_until
from controller.runtime.audit import read_records
from tests.controlplane.kube import Kube

NODE = "gpu-node-1"
GPU = "gpu.ds01.io/gpu"
MIG_2G = "gpu.ds01.io/mig-2g.20gb"
DEADLINE_S = 90
OPERATOR_ENV = {
    # Seconds, not minutes, so a test sees a whole reaping cycle (never by sleeping).
    "DS01_LIFECYCLE_INTERVAL": "1s",
    "DS01_USAGE_INTERVAL": "1s",
    # A checkpoint soon after records come, so its anchor is there to verify against.
    "DS01_AUDIT_CHECKPOINT_INTERVAL": "1s",
}
TEST_AGENT_ARGS = ["--interval=1s", "--enforce-interval=1s"]
PROBE = r"""
import errno, json, os, stat, sys, time
plan = json.loads(sys.argv[1])
out, held = {}, []
os.makedirs("/tmp/probe", exist_ok=True)
for label, major, minor in plan["numbers"]:
    if plan["dir"]:
        path = "%s/nvidia%d" % (plan["dir"], minor)
    else:
        path = "/tmp/probe/" + label
        if not os.path.exists(path):
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(major, minor))
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as error:
        out[label] = errno.errorcode.get(error.errno, str(error.errno))
        continue
    out[label] = "OK"
    if plan["hold"]:
        held.append(fd)
    else:
        os.close(fd)
visible = sorted(name for name in os.listdir("/dev") if name.startswith("nvidia"))
print("PROBE " + json.dumps({"open": out, "dev": visible}), flush=True)
time.sleep(plan["sleep"])
"""
"""Opens every GPU device number at the container's first instructions (mknod'ed, so
numbers the runtime did not map are tried too; or the nodes in a mounted device
directory), prints what the kernel answered, then holds what it opened (or not)
and sleeps."""


def allowed(answer: str) -> bool:
    """A device cgroup refuses with EPERM; anything else (OK, ENXIO, ENODEV: no driver
    behind the number) means the cgroup let the open through."""
    return answer != "EPERM"


@dataclass(frozen=True)
class Device:
    """One allocatable thing on the node: a whole GPU or a MIG slice, and its numbers."""

    uuid: str
    label: str
    """The probe's name for its GPU node (`gpu<minor>`)."""
    numbers: tuple[tuple[int, int], ...]


@dataclass
class NodeEnv:
    cluster: LocalCluster
    node: podnode.PodNode
    admin: Kube = field(init=False)

    def __post_init__(self) -> None:
        self.admin = Kube(self.cluster, self.cluster.kubeconfig)

    # -- the node's GPUs -------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self.admin.get("gpunode", NODE).get("status") or {}

    def whole_gpus(self) -> list[Device]:
        out = []
        for gpu in self.status()["devices"]:
            if gpu.get("migInstances"):
                continue
            number = (gpu["device"]["major"], gpu["device"]["minor"])
            out.append(Device(gpu["uuid"], f"gpu{number[1]}", (number,)))
        return out

    def slices(self) -> list[Device]:
        out = []
        for gpu in self.status()["devices"]:
            number = (gpu["device"]["major"], gpu["device"]["minor"])
            for mig in gpu.get("migInstances") or []:
                cap = mig.get("capabilityDevice") or {}
                numbers = [number] + ([(cap["major"], cap["minor"])] if cap else [])
                out.append(Device(mig["uuid"], f"gpu{number[1]}", tuple(numbers)))
        return out

    def gpu_numbers(self) -> list[tuple[str, int, int]]:
        """Every GPU's device number, labelled as the probe reports it."""
        return [(d.label, *d.numbers[0]) for d in self.whole_gpus()] + sorted(
            {(s.label, *s.numbers[0]) for s in self.slices()}
        )

    # -- accounts and pods ---------------------------------------------------------

    def limit(self, name: str, group: str, **spec: Any) -> None:
        """A GPURateLimit for ``group`` (high priority), small enough for this 2-core node."""
        body = {
            "subjects": [{"kind": "Group", "name": group}],
            "priority": 50,
            "resources": {
                "perWorkload": {
                    "cpu": {"default": "100m", "max": "1"},
                    "memory": {"default": "96Mi", "max": "1Gi"},
                },
            },
            **spec,
        }
        self.admin.apply(
            {
                "apiVersion": "gpu.ds01.io/v1alpha1",
                "kind": "GPURateLimit",
                "metadata": {"name": name},
                "spec": body,
            }
        )

    def account(self, login: str, groups: str = "researcher") -> tuple[str, str, Kube]:
        """An account namespace for ``login``, once the operator keeps its quota."""
        user = self.admin.account(login, groups)
        namespace = f"u-{login}"
        self.admin.apply(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "ds01-account-owner", "namespace": namespace},
                "subjects": [
                    {"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}
                ],
                "roleRef": {
                    "kind": "ClusterRole",
                    "name": "ds01-user",
                    "apiGroup": "rbac.authorization.k8s.io",
                },
            }
        )
        wait_until(
            lambda: bool(
                self.admin.kubectl(
                    "get", "resourcequota", "ds01", "-n", namespace, "--ignore-not-found"
                ).stdout
            ),
            DEADLINE_S,
            f"the operator to set the quota of {namespace}",
        )
        return user, namespace, Kube(self.cluster, self.cluster.user_kubeconfig(user))

    def probe_spec(
        self,
        resources: dict[str, int] | None = None,
        *,
        hold: bool = False,
        sleep_s: int = 3600,
        privileged: bool = False,
        device_dir: bool = False,
    ) -> dict[str, Any]:
        """A pod spec whose one container runs `PROBE` against every GPU number.

        ``device_dir``: mount the node's GPU device nodes (a hostPath, as only an
        admin may) and open those instead of making nodes.
        """
        plan = {
            "numbers": self.gpu_numbers(),
            "hold": hold,
            "sleep": sleep_s,
            "dir": "/gpus" if device_dir else "",
        }
        limits = {
            "cpu": "100m",
            "memory": "96Mi",
            **{k: str(v) for k, v in (resources or {}).items()},
        }
        security: dict[str, Any] = (
            {"privileged": True}
            if privileged
            else {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"], "add": ["MKNOD"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            }
        )
        mounts: dict[str, Any] = (
            {
                "volumes": [{"name": "gpus", "hostPath": {"path": str(self.node.dev_root)}}],
            }
            if device_dir
            else {}
        )
        return {
            **mounts,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "probe",
                    "image": self.node.image.name,
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", PROBE, json.dumps(plan)],
                    "resources": {"limits": limits},
                    "securityContext": {"runAsUser": 0, **security},
                    **(
                        {"volumeMounts": [{"name": "gpus", "mountPath": "/gpus"}]}
                        if device_dir
                        else {}
                    ),
                }
            ],
        }

    def probe_pod(self, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"probe": name}},
            "spec": self.probe_spec(**spec),
        }

    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        return self.admin.get("pod", name, "-n", namespace)

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        listing = self.admin.get("pods", "-n", namespace, "-l", selector)
        return list(listing["items"])

    def one_pod(self, namespace: str, selector: str) -> str:
        found: list[dict[str, Any]] = []

        def made() -> bool:
            found[:] = [
                p
                for p in self.pods(namespace, selector)
                if not p["metadata"].get("deletionTimestamp")
            ]
            return len(found) == 1

        wait_until(made, DEADLINE_S, f"one pod of {selector} in {namespace}", 0.2)
        return str(found[0]["metadata"]["name"])

    def probed(self, namespace: str, name: str) -> dict[str, Any]:
        """What the probe printed (waits for it), from `kubectl logs` through the kubelet."""
        found: dict[str, Any] = {}

        def printed() -> bool:
            result = self.admin.kubectl("logs", "-n", namespace, name, check=False)
            for line in result.stdout.splitlines():
                if line.startswith("PROBE "):
                    found.update(json.loads(line[len("PROBE ") :]))
                    return True
            return False

        wait_until(printed, DEADLINE_S, f"the probe in {namespace}/{name} to report", 0.3)
        return found

    def phase(self, namespace: str, name: str) -> str | None:
        result = self.admin.kubectl(
            "get",
            "pod",
            name,
            "-n",
            namespace,
            "--ignore-not-found",
            "-o",
            "jsonpath={.status.phase}",
        )
        return result.stdout or None

    def restarts(self, namespace: str, name: str) -> int:
        statuses = self.pod(namespace, name)["status"].get("containerStatuses") or []
        return sum(int(s.get("restartCount", 0)) for s in statuses)

    # -- the node's answers --------------------------------------------------------

    def pod_devices(self, namespace: str, name: str) -> list[ContainerDevices]:
        """The kubelet's PodResources answer for one pod (our resources only)."""
        result = PodResourcesClient(kubelet.POD_RESOURCES_SOCKET).list()
        assert result.error is None, result.error
        return [c for c in result.containers if (c.ref.namespace, c.ref.pod) == (namespace, name)]

    def pod_devices_when_admitted(self, namespace: str, name: str) -> list[ContainerDevices]:
        """PodResources for the pod, once the kubelet admitted it (allocated its devices)."""
        found: list[ContainerDevices] = []

        def admitted() -> bool:
            found[:] = self.pod_devices(namespace, name)
            return bool(found)

        wait_until(admitted, DEADLINE_S, f"the kubelet to allocate {namespace}/{name}", 0.3)
        return found

    def container_id(self, namespace: str, name: str) -> str:
        statuses = self.pod(namespace, name)["status"].get("containerStatuses") or []
        return str(statuses[0]["containerID"]).removeprefix("containerd://")

    def container_pid(self, namespace: str, name: str) -> int:
        """The host pid of the pod's (first) container's main process, from containerd."""
        wanted = self.container_id(namespace, name)
        listing = self.node.real.containerd.ctr("tasks", "list")
        for line in listing.splitlines()[1:]:
            task, pid, *_ = line.split()
            if task == wanted:
                return int(pid)
        raise AssertionError(f"no task {wanted} in containerd")

    def bundle(self, namespace: str, name: str) -> dict[str, Any]:
        """The OCI bundle runc built the container from (after `ds01-runc` rewrote it)."""
        task = (
            self.node.real.containerd.state
            / "io.containerd.runtime.v2.task"
            / "k8s.io"
            / self.container_id(namespace, name)
        )
        return json.loads((task / "config.json").read_text())  # type: ignore[no-any-return]

    def agent_audit(self) -> list[dict[str, Any]]:
        return read_records(self.node.agent_audit_log)

    def agent_pod(self) -> str:
        return self.one_pod("ds01-system", "app.kubernetes.io/name=ds01-agent")

    def gpu_processes(self, processes: list[ProcSpec]) -> None:
        """Tell the fake NVML which processes hold a CUDA context on which GPU (as the
        driver would report them); only the GPU is simulated, the processes are real."""
        path = self.node.sim_root / "topology"
        layout = podnode_topology()
        layout.processes = processes
        layout.write(path)


def podnode_topology() -> Topology:
    from controller.devcluster.agentnode import topology

    return topology()


def host_status(pid: int) -> dict[str, str]:
    """/proc/<pid>/status as a dict."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def same_namespace(pid: int, kind: str) -> bool:
    """Whether ``pid`` shares this (host) process's namespace of ``kind``."""
    return os.readlink(f"/proc/{pid}/ns/{kind}") == os.readlink(f"/proc/self/ns/{kind}")


def root_mount_options(pid: int) -> list[str]:
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return fields[5].split(",")
    raise AssertionError(f"no root mount for {pid}")


def image_name() -> str:
    return image.image_name()


def run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout
