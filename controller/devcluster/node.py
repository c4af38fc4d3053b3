"""A real Kubernetes node on this host: a private containerd, a kubelet and kube-scheduler.

`ds01 dev up` and the node test tier (`tests/node/`) run the project's manifests
on it: the operator as its Deployment, the agent as its DaemonSet pod, users'
GPU pods scheduled, given devices by the agent's device plugin through the real
kubelet, and reaped for real. Only the GPU is simulated (`agentnode`'s fake
NVML and device tree).

One per host: the kubelet's device-plugin directory is fixed, so a second node
(another state directory's `up`, a test tier) is refused while one runs, naming
the state directory it belongs to. The host needs root and the cgroup v1
devices controller (`unmet_requirements`); elsewhere `up` says why and runs
the operator and agent as host processes instead (`docs/local-control-plane.md`).

Teardown (`teardown`, called by `LocalCluster.stop` and `ds01 dev down`)
leaves no process, mount or cgroup: the pods' processes are killed through their
cgroups, the runc shims by the pids containerd recorded, every mount under the
kubelet's and containerd's directories is detached, the pod cgroups removed in
every hierarchy and the pod bridge deleted.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.devcluster import containerd as containerd_module
from controller.devcluster import kubelet as kubelet_module
from controller.devcluster.containerd import Containerd
from controller.devcluster.controlplane import LocalCluster, free_port, http_ok
from controller.devcluster.kubeconfig import write_kubeconfig
from controller.devcluster.process import ManagedProcess, wait_until

NODE_RECORD = "node.json"
"""In ``<workdir>/node``: what teardown needs (paths, the run directory)."""
HOST_RECORD = Path("/run/ds01-controller-node.json")
"""Which state directory's node this host runs now (one kubelet per host)."""
MARKER = ".ds01-dev"
"""In /var/lib/kubelet: this project made the directory (it wipes only its own)."""
GPU_NODE_LABEL = "gpu.ds01.io/gpu-node"


def unmet_requirements(cgroup_root: Path = Path("/sys/fs/cgroup")) -> list[str]:
    """What this host lacks to run a real node; empty when it can."""
    unmet = []
    if os.geteuid() != 0:
        unmet.append("root")
    if not (cgroup_root / "devices" / "devices.allow").exists():
        unmet.append("cgroup v1 device control (the kubelet runs here on cgroup v1 only)")
    tools = containerd_module.missing_tools()
    if shutil.which("mmdebstrap") is None:
        tools.append("mmdebstrap (mmdebstrap: builds the project's image)")
    if tools:
        unmet.append(", ".join(tools) + " (as root, `scripts/host-packages --install` adds them)")
    if (owner := running_elsewhere()) is not None:
        unmet.append(f"no other node on this host (one runs for {owner}; `ds01 dev down` it)")
    return unmet


def running_elsewhere(workdir: Path | None = None) -> str | None:
    """The state directory of a node that runs on this host now (not ``workdir``'s)."""
    try:
        record = json.loads(HOST_RECORD.read_text())
    except (OSError, ValueError):
        return None
    owner = str(record.get("workdir", ""))
    if workdir is not None and owner == str(Path(workdir).resolve()):
        return None
    process = ManagedProcess("kubelet", int(record.get("pid", 0)), record.get("start"), Path())
    return owner if record.get("pid") and process.alive() else None


def run_dir(workdir: Path) -> Path:
    """Short directory in /run for containerd's sockets and state (one per state directory)."""
    from controller.devcluster.agentnode import run_dir as engine_run_dir

    return Path(str(engine_run_dir(workdir)) + "-node")


@dataclass
class RealNode:
    """A started node: its name, containerd and the processes that run it."""

    name: str
    containerd: Containerd
    containerd_process: ManagedProcess
    kubelet_process: ManagedProcess
    scheduler_process: ManagedProcess
    cluster: LocalCluster

    # -- faults, for the tests ------------------------------------------------------

    def restart_kubelet(self, deadline_s: float = 120) -> None:
        """Stop the kubelet by its pid and start it again (running pods are untouched)."""
        self.kubelet_process = _restart(self.cluster, self.kubelet_process)
        wait_ready(self.cluster, self.name, self.kubelet_process, deadline_s)

    def restart_containerd(self, deadline_s: float = 60) -> None:
        """Stop containerd and start it again; containers keep running under their shims."""
        self.containerd_process = _restart(self.cluster, self.containerd_process)
        self.containerd.wait_ready(self.containerd_process, deadline_s)


def _restart(cluster: LocalCluster, process: ManagedProcess) -> ManagedProcess:
    argv = json.loads((cluster.workdir / "node" / f"{process.name}.argv").read_text())
    process.stop()
    cluster.processes.remove(process)
    return cluster.spawn(process.name, argv, stop_grace_s=process.stop_grace_s)


def _spawn(cluster: LocalCluster, name: str, argv: list[str], grace: float) -> ManagedProcess:
    (cluster.workdir / "node" / f"{name}.argv").write_text(json.dumps(argv))
    return cluster.spawn(name, argv, stop_grace_s=grace)


def _prepare_kubelet_root() -> None:
    """An empty kubelet root this project owns; refuse another installation's."""
    root = kubelet_module.ROOT_DIR
    if root.exists() and any(root.iterdir()) and not (root / MARKER).exists():
        raise RuntimeError(
            f"{root} exists and was not made by ds01 dev: this host has a kubelet of its own;"
            " run `ds01 dev up --no-node`"
        )
    detach_mounts_under(root)
    if root.exists():
        for entry in root.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("made by `ds01 dev up`; wiped at every start\n")


def start(
    cluster: LocalCluster,
    name: str,
    *,
    sandbox_image: str,
    image_archives: list[tuple[Path, str]],
    runc: str | None = None,
    labels: dict[str, str] | None = None,
    deadline_s: float = 120,
) -> RealNode:
    """Start containerd (importing ``image_archives``), the kubelet and the scheduler.

    Returns once the node is Ready. ``runc`` is the runtime binary containerd runs
    (the `ds01-runc` front, or Debian's runc when None).
    """
    if owner := running_elsewhere(cluster.workdir):
        raise RuntimeError(f"a node already runs on this host for {owner}; `ds01 dev down` it")
    workdir = cluster.workdir
    teardown(workdir)  # an earlier run that was killed before it could clean up
    root = workdir / "node"
    root.mkdir(parents=True, exist_ok=True)
    runtime = Containerd(
        root=root / "containerd",
        run_dir=run_dir(workdir),
        runc=runc or shutil.which("runc") or "runc",
        sandbox_image=sandbox_image,
    )
    record = {"containerd": runtime.record(), "name": name}
    (root / NODE_RECORD).write_text(json.dumps(record))
    _prepare_kubelet_root()
    containerd_module.ensure_bridge()
    runtime.write_config()
    containerd_process = _spawn(cluster, "containerd", runtime.argv(), 30)
    runtime.wait_ready(containerd_process, deadline_s)
    for archive, image in image_archives:
        runtime.import_image(archive, image)

    pki = workdir / "pki"
    authority = cluster._authority()
    authority.client(f"system:node:{name}", ("system:nodes",)).write(pki, "kubelet")
    authority.serving([containerd_module.NODE_ADDRESS, name]).write(pki, "kubelet-serving")
    ca = pki / "ca.crt"
    kubeconfig = write_kubeconfig(
        root / "kubelet.kubeconfig",
        cluster.server,
        ca.read_bytes(),
        f"system:node:{name}",
        _pair(pki, "kubelet"),
    )
    config = kubelet_module.configuration(
        address=containerd_module.NODE_ADDRESS,
        runtime_endpoint=runtime.endpoint,
        client_ca=ca,
    )
    config["tlsCertFile"] = str(pki / "kubelet-serving.crt")
    config["tlsPrivateKeyFile"] = str(pki / "kubelet-serving.key")
    config_path = kubelet_module.write_configuration(root / "kubelet.yaml", config)
    kubelet_process = _spawn(
        cluster,
        "kubelet",
        kubelet_module.argv(
            cluster.binaries.kubelet,
            config=config_path,
            kubeconfig=kubeconfig,
            node_name=name,
            node_ip=containerd_module.NODE_ADDRESS,
            labels={GPU_NODE_LABEL: "true", **(labels or {})},
            cert_dir=root / "kubelet-certs",
        ),
        30,
    )
    HOST_RECORD.write_text(
        json.dumps(
            {
                "workdir": str(workdir.resolve()),
                "pid": kubelet_process.pid,
                "start": kubelet_process.start_ticks,
            }
        )
    )
    scheduler_process = _start_scheduler(cluster, deadline_s)
    wait_ready(cluster, name, kubelet_process, deadline_s)
    return RealNode(name, runtime, containerd_process, kubelet_process, scheduler_process, cluster)


def _pair(pki: Path, stem: str) -> Any:
    from controller.devcluster.pki import KeyPair

    return KeyPair((pki / f"{stem}.crt").read_bytes(), (pki / f"{stem}.key").read_bytes())


def _start_scheduler(cluster: LocalCluster, deadline_s: float) -> ManagedProcess:
    pki = cluster.workdir / "pki"
    cluster._authority().client("system:kube-scheduler").write(pki, "scheduler")
    kubeconfig = write_kubeconfig(
        cluster.workdir / "scheduler.kubeconfig",
        cluster.server,
        (pki / "ca.crt").read_bytes(),
        "system:kube-scheduler",
        _pair(pki, "scheduler"),
    )
    port = free_port()
    process = _spawn(
        cluster,
        "kube-scheduler",
        [
            str(cluster.binaries.kube_scheduler),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            "--leader-elect=false",
            "--v=1",
        ],
        10,
    )

    def healthy() -> bool:
        if not process.alive():
            raise RuntimeError(f"kube-scheduler exited:\n{process.log_tail()}")
        return http_ok(f"https://127.0.0.1:{port}/healthz", insecure=True)

    wait_until(healthy, deadline_s, "kube-scheduler healthy", 0.2)
    return process


def node_ready(cluster: LocalCluster, name: str) -> bool:
    result = cluster.kubectl(
        "get",
        "node",
        name,
        "-o",
        'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
        check=False,
    )
    return result.returncode == 0 and result.stdout.strip() == "True"


def wait_ready(
    cluster: LocalCluster, name: str, kubelet: ManagedProcess, deadline_s: float
) -> None:
    def ready() -> bool:
        if not kubelet.alive():
            raise RuntimeError(f"the kubelet exited:\n{kubelet.log_tail()}")
        return node_ready(cluster, name)

    try:
        wait_until(ready, deadline_s, f"node {name} to be Ready", 0.5)
    except TimeoutError as error:
        raise RuntimeError(f"{error}; kubelet log {kubelet.log}:\n{kubelet.log_tail()}") from None


# -- teardown --------------------------------------------------------------------------


_MNT_DETACH = 2


def _umount(path: str) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.umount2(path.encode(), _MNT_DETACH) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), path)


def mounts_under(prefix: Path) -> list[str]:
    """Mount points at or below ``prefix``, deepest first."""
    resolved = str(prefix.resolve()) if prefix.exists() else str(prefix)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == resolved or point.startswith(resolved.rstrip("/") + "/"):
            found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def detach_mounts_under(prefix: Path) -> None:
    """Unmount everything at or below ``prefix`` (lazily: nothing may block `down`)."""
    for _ in range(5):  # a bind mount of itself (the kubelet's root) shows more than once
        points = mounts_under(prefix)
        if not points:
            return
        for point in points:
            try:
                _umount(point)
            except OSError:
                continue


def _kill_pod_processes(deadline_s: float = 20) -> None:
    """SIGKILL every process in the pod cgroups (pids hierarchy), until none is left."""
    hierarchy = Path("/sys/fs/cgroup/pids") / kubelet_module.CGROUP_PARENT

    def remaining() -> list[int]:
        if not hierarchy.is_dir():
            return []
        cgroups = [hierarchy, *(p for p in hierarchy.rglob("*") if p.is_dir())]
        return [pid for cgroup in cgroups for pid in kubelet_module.pids_in(cgroup)]

    def gone() -> bool:
        pids = remaining()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return not pids

    wait_until(gone, deadline_s, "the pods' processes to end", 0.1)


def _kill_shims(pids: list[int], sockets: list[Path]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.05)
    for path in sockets:
        path.unlink(missing_ok=True)


def teardown(workdir: Path) -> None:
    """Clean up after a stopped node (processes already stopped): see the module docstring.

    Idempotent, and a no-op for a state directory that never ran a node.
    """
    record_path = Path(workdir) / "node" / NODE_RECORD
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return
    if running_elsewhere(workdir) is not None:
        return  # another state directory's node runs now: its pods are not ours to end
    paths = record["containerd"]
    state = Path(paths["state"])
    shims = containerd_module.shim_pids(state, Path(paths["socket"]))
    sockets = containerd_module.shim_sockets(state)
    _kill_pod_processes()
    _kill_shims(shims, sockets)
    for prefix in (kubelet_module.ROOT_DIR, Path(paths["run_dir"]), Path(paths["root"])):
        detach_mounts_under(prefix)
    if stuck := kubelet_module.remove_cgroups():
        raise RuntimeError(f"pod cgroups left behind: {'; '.join(stuck)}")
    containerd_module.clear_ipam(Path(paths["run_dir"]))
    containerd_module.delete_bridge()
    try:
        if json.loads(HOST_RECORD.read_text()).get("workdir") == str(Path(workdir).resolve()):
            HOST_RECORD.unlink()
    except (OSError, ValueError):
        pass
