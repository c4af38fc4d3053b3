"""`ds01 dev up`'s GPU node, run from the manifests: the operator and agent as pods.

On a real node (`devcluster.node`: containerd, kubelet, scheduler) this applies
the `local` overlay, generated into the state directory from
`manifests/overlays/dev`: the operator runs as its StatefulSet and the agent as
its DaemonSet pod on `gpu-node-1`, from the project's image
(`devcluster.image`), with the ServiceAccounts, RBAC, security contexts,
hostPaths and probes a lab gets. What the overlay changes, and why:

- **The simulated GPUs** (only the GPU is simulated): the agent's `/host/dev`
  and NVML volumes point at the state directory's device tree and the fake
  NVML library instead of the host's /dev and driver library (same mount paths
  in the container), plus the fake's topology and `/proc/devices`, and
  `--host-dev-root` names the tree's host path, so the device plugin hands the
  kubelet paths that exist on this host.
- **The API address**: there is no kube-proxy, so `KUBERNETES_SERVICE_HOST` and
  `PORT` name the relay on the pod bridge (`devcluster.relay`).
- **This state directory**: the agent's state and both audit trails are host
  directories under it (a lab's are /var/lib/ds01 and /var/log/ds01), and the
  agent serves the Docker gateway of the dev dockerd (the README's Docker
  walk-through; users and groups from the host's /etc, `--gateway-host-etc`, as
  the container's own are the image's) and answers `ds01-runc` in the engine's
  runtime directory, for the engine and the node's containerd alike.
- **One node**: one operator replica (two would both be on this node;
  `docs/operator.md` covers leader election), its audit trail in a host
  directory instead of a PersistentVolumeClaim (no storage provisioner here),
  and its signing key a random one kept with the state (`audit_key`) instead of
  the dev overlay's fixed one, so `ds01 audit verify --key-file` can check it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import ssl
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from controller import __version__
from controller.devcluster import binaries, dockerd, image, node, simnode
from controller.devcluster.agentnode import (
    gateway_key,
    gateway_socket,
    run_dir,
    topology,
)
from controller.devcluster.containerd import NODE_ADDRESS
from controller.devcluster.controlplane import LocalCluster, free_port
from controller.devcluster.fakegpu import LIBRARY_NAME, TOPOLOGY_ENV, build
from controller.devcluster.fakegpu.devtree import make_devtree
from controller.devcluster.process import wait_until
from controller.policy.nodes import ENFORCEMENT_LABEL
from controller.runtime import runcfront

SYSTEM_NAMESPACE = "ds01-system"
SIM_MOUNT = "/var/lib/ds01-sim"
"""Where the agent container sees the simulation's files (topology, /proc/devices, key)."""
OPERATOR_AUDIT_UID = 65532
"""The operator's user (manifests/base/operator.yaml): its audit directory is its own."""


@dataclass(frozen=True)
class PodNode:
    """The node as a person uses it."""

    real: node.RealNode
    image: image.Image
    sim_root: Path
    """Host directory of the simulation: proc/, dev/, topology, the NVML library."""
    engine: dockerd.Dockerd
    gpus: int
    overlay: Path

    @property
    def name(self) -> str:
        return self.real.name

    @property
    def dev_root(self) -> Path:
        return self.sim_root / "dev"

    @property
    def agent_audit_log(self) -> Path:
        return self.real.cluster.workdir / "node" / "agent-audit" / "audit.jsonl"

    @property
    def operator_audit_log(self) -> Path:
        return operator_audit_dir(self.real.cluster.workdir) / "audit.jsonl"

    @property
    def gateway_host(self) -> str:
        return f"unix://{gateway_socket(self.real.cluster.workdir)}"


def operator_audit_dir(workdir: Path) -> Path:
    return workdir / "operator-audit"


def audit_key(workdir: Path) -> Path:
    """The operator's signing key for this state directory (made once, 0600)."""
    path = workdir / "node" / "operator-audit.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
    return path


def _host_run(path: Path) -> str:
    """``path`` (under /run) as the agent container sees it (/run is mounted at /host/run)."""
    return "/host/run/" + str(path.relative_to("/run"))


def overlay(
    workdir: Path,
    *,
    sim_root: Path,
    image_tag: str,
    api_port: int,
    engine: dockerd.Dockerd,
    agent_args: list[str] = (),  # type: ignore[assignment]
    operator_env: dict[str, str] | None = None,
) -> Path:
    """Write the `local` overlay (see the module docstring) and return its directory."""
    root = binaries.source_root()
    state = workdir / "node"
    api_env = [
        {"name": "KUBERNETES_SERVICE_HOST", "value": NODE_ADDRESS},
        {"name": "KUBERNETES_SERVICE_PORT", "value": str(api_port)},
    ]
    simulated_agent = [
        # Later flags win: these override the base's host paths for the simulation.
        f"--driver-proc-root={SIM_MOUNT}/proc",
        f"--host-dev-root={sim_root / 'dev'}",
        f"--docker-socket={_host_run(engine.socket)}",
        f"--gateway-socket={_host_run(gateway_socket(workdir))}",
        f"--gateway-key={SIM_MOUNT}/gateway.key",
        f"--gateway-runtime={runcfront.NAME}",
        "--gateway-host-etc=/host/etc",  # users: the host's, not the container's
        f"--runtime-dir={_host_run(engine.runtime_dir)}",
        *agent_args,
    ]
    agent_patch = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "ds01-agent", "namespace": SYSTEM_NAMESPACE},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "agent",
                            "env": [
                                *api_env,
                                {"name": TOPOLOGY_ENV, "value": f"{SIM_MOUNT}/topology"},
                            ],
                            "volumeMounts": [
                                {"name": "simulation", "mountPath": SIM_MOUNT, "readOnly": True}
                            ],
                        }
                    ],
                    "volumes": [
                        _host_dir("dev", sim_root / "dev", "Directory"),
                        _host_dir("nvml", sim_root / LIBRARY_NAME, "File"),
                        _host_dir("simulation", sim_root, "Directory"),
                        _host_dir("state", state / "agent-state", "DirectoryOrCreate"),
                        _host_dir("audit", state / "agent-audit", "DirectoryOrCreate"),
                    ],
                }
            }
        },
    }
    operator_patch = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "ds01-operator", "namespace": SYSTEM_NAMESPACE},
        "spec": {
            "replicas": 1,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "operator",
                            "env": [
                                *api_env,
                                *({"name": k, "value": v} for k, v in (operator_env or {}).items()),
                            ],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "audit",
                            "hostPath": {
                                "path": str(operator_audit_dir(workdir)),
                                "type": "DirectoryOrCreate",
                            },
                        }
                    ],
                }
            },
        },
    }
    out = workdir / "manifests"
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        # kustomize takes no absolute paths; a relative one reaches the checkout from anywhere.
        "resources": [os.path.relpath(root / "manifests" / "overlays" / "dev", out)],
        "images": [{"name": "ds01-controller", "newName": image.NAME, "newTag": image_tag}],
        "patches": [
            {"path": "agent.yaml"},
            {"path": "operator.yaml"},
            {
                # The claim template gives way to the host directory above.
                "target": {"kind": "StatefulSet", "name": "ds01-operator"},
                "patch": yaml.safe_dump([{"op": "remove", "path": "/spec/volumeClaimTemplates"}]),
            },
            {
                "target": {"kind": "DaemonSet", "name": "ds01-agent"},
                "patch": yaml.safe_dump(
                    [
                        {
                            "op": "add",
                            "path": "/spec/template/spec/containers/0/command/-",
                            "value": arg,
                        }
                        for arg in simulated_agent
                    ]
                ),
            },
        ],
        "secretGenerator": [
            {
                "name": "ds01-audit-key",
                "namespace": SYSTEM_NAMESPACE,
                "behavior": "replace",
                "files": ["key=operator-audit.key"],
                "options": {"disableNameSuffixHash": True},
            }
        ],
    }
    out.mkdir(parents=True, exist_ok=True)
    # kustomize reads files only under the kustomization's directory.
    key = out / "operator-audit.key"
    key.unlink(missing_ok=True)
    shutil.copy(audit_key(workdir), key)
    key.chmod(0o600)
    (out / "kustomization.yaml").write_text(
        "# Generated by `ds01 dev up` (controller/devcluster/podnode.py); rewritten each run.\n"
        + yaml.safe_dump(kustomization, sort_keys=False)
    )
    (out / "agent.yaml").write_text(yaml.safe_dump(agent_patch, sort_keys=False))
    (out / "operator.yaml").write_text(yaml.safe_dump(operator_patch, sort_keys=False))
    return out


def _host_dir(name: str, path: Path, kind: str) -> dict[str, Any]:
    # `emptyDir: null` drops the base's source when it is not a hostPath (the audit one).
    return {"name": name, "hostPath": {"path": str(path), "type": kind}, "emptyDir": None}


def prepare_simulation(workdir: Path) -> tuple[Path, int]:
    """The device tree, fake NVML library, topology and gateway key, under ``workdir/node/sim``."""
    sim_root = workdir / "node" / "sim"
    shutil.rmtree(sim_root / "dev", ignore_errors=True)  # an earlier run's device nodes
    sim_root.mkdir(parents=True, exist_ok=True)
    library = build(binaries.cache_root() / "fakenvml")
    shutil.copy(library, sim_root / f".{LIBRARY_NAME}.new")
    os.replace(sim_root / f".{LIBRARY_NAME}.new", sim_root / LIBRARY_NAME)
    layout = topology()
    layout.write(sim_root / "topology")
    make_devtree(sim_root, layout, misc=True)
    gateway_key(sim_root / "gateway.key")
    return sim_root, len(layout.gpus)


def containerd_front(run: Path, runtime_dir: Path) -> Path:
    """`ds01-runc` for the node's containerd: the same front Docker gets, asking the same agent."""
    runc = shutil.which("runc")
    if runc is None:
        raise RuntimeError("runc not found: install Debian's runc")
    front = run / f"{runcfront.NAME}-cri"
    run.mkdir(parents=True, exist_ok=True)
    front.write_text(
        runcfront.front_script(
            python=sys.executable,
            package_root=str(binaries.source_root()),
            runtime_dir=str(runtime_dir),
            runc=runc,
            source=runcfront.CRI,
        )
    )
    front.chmod(0o755)
    return front


def relay_port(workdir: Path) -> int:
    """The relay's port, chosen once per state directory.

    The pods are told it in their environment; were it the apiserver's (a new one
    each start), every `up` would change the operator's pod template and roll it out.
    """
    path = workdir / "node" / "api-relay.port"
    if path.exists():
        return int(path.read_text())
    port = free_port()
    path.write_text(str(port))
    return port


def start_relay(cluster: LocalCluster) -> int:
    """The pods' way to the apiserver (see `devcluster.relay`), recorded with the cluster."""
    port = relay_port(cluster.workdir)
    relay = [sys.executable, "-m", "controller.devcluster.relay"]
    process = cluster.spawn(
        "api-relay", [*relay, NODE_ADDRESS, str(port), "127.0.0.1", str(cluster.port)]
    )

    def relays() -> bool:
        if not process.alive():
            raise RuntimeError(f"the API relay exited:\n{process.log_tail()}")
        return _answers_tls(NODE_ADDRESS, port)

    wait_until(relays, 30, "the API relay to answer on the pod bridge", 0.1)
    return port


def _answers_tls(host: str, port: int) -> bool:
    """Whether a TLS server (the apiserver, through the relay) completes a handshake."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=2) as raw, context.wrap_socket(raw):
            return True
    except OSError:
        return False


def start(
    cluster: LocalCluster,
    name: str,
    *,
    agent_args: list[str] = (),  # type: ignore[assignment]
    operator_env: dict[str, str] | None = None,
    deadline_s: float = 240,
) -> PodNode:
    """Start the node and its dockerd, apply the local overlay, wait until the agent reports."""
    workdir = cluster.workdir
    built = image.build()
    pause = image.busybox_image()
    # Created by the admin, labelled Enforce: the operator writes an enforcing spec
    # for this node only, whatever the dev overlay's default enforcement says.
    gpunode = simnode.gpunode(name, {ENFORCEMENT_LABEL: "Enforce"})
    cluster.apply("-f", "-", stdin=json.dumps(gpunode), force=False)
    sim_root, gpus = prepare_simulation(workdir)

    engine = dockerd.Dockerd(workdir / "node" / "docker", run_dir(workdir))
    engine.start(lambda argv: cluster.spawn("dockerd", argv, stop_grace_s=dockerd.STOP_GRACE_S))
    engine.load(built.archive, built.name)

    front = containerd_front(node.run_dir(workdir), engine.runtime_dir)
    real = node.start(
        cluster,
        name,
        sandbox_image=pause.name,
        image_archives=[(pause.archive, pause.name), (built.archive, built.name)],
        runc=str(front),
        deadline_s=deadline_s,
    )
    api_port = start_relay(cluster)
    audit = operator_audit_dir(workdir)
    audit.mkdir(parents=True, exist_ok=True)
    os.chown(audit, OPERATOR_AUDIT_UID, OPERATOR_AUDIT_UID)
    started = datetime.now(UTC).replace(microsecond=0)
    directory = overlay(
        workdir,
        sim_root=sim_root,
        image_tag=built.name.split(":", 1)[1],
        api_port=api_port,
        engine=engine,
        agent_args=list(agent_args),
        operator_env=operator_env,
    )
    cluster.apply("-k", str(directory))
    result = PodNode(real, built, sim_root, engine, gpus, directory)
    wait_running(cluster, name, gpus, started, deadline_s)
    return result


def wait_running(
    cluster: LocalCluster, name: str, gpus: int, since: datetime, deadline_s: float = 240
) -> None:
    """Operator available, agent reporting all GPUs since ``since``, the GPUs allocatable."""
    cluster.kubectl(
        "rollout",
        "status",
        "-n",
        SYSTEM_NAMESPACE,
        "statefulset/ds01-operator",
        f"--timeout={int(deadline_s)}s",
    )
    cluster.kubectl(
        "rollout",
        "status",
        "-n",
        SYSTEM_NAMESPACE,
        "daemonset/ds01-agent",
        f"--timeout={int(deadline_s)}s",
    )

    def reported() -> bool:
        status = _gpunode_status(cluster, name)
        agent = status.get("agent") or {}
        heartbeat = agent.get("heartbeatTime")
        return (
            agent.get("version") == __version__
            and status.get("gpus") == gpus
            and heartbeat is not None
            and datetime.fromisoformat(heartbeat) >= since
        )

    wait_until(reported, deadline_s, f"the agent pod on {name} to report its GPUs", 0.5)
    # Pods kept in etcd from an earlier run look available before this kubelet has
    # started their containers again: wait for containers started since ``since``.
    wait_until(
        lambda: _started_and_ready(cluster, "app.kubernetes.io/name=ds01-operator", since),
        deadline_s,
        "the operator's pod to run and be ready",
        0.5,
    )
    wait_until(
        lambda: allocatable(cluster, name).get("gpu.ds01.io/gpu") not in (None, "0"),
        deadline_s,
        f"{name} to have allocatable gpu.ds01.io/gpu (the agent's device plugin)",
        0.5,
    )


def _started_and_ready(cluster: LocalCluster, selector: str, since: datetime) -> bool:
    """Some pod of ``selector`` is Ready, every container of it running since ``since``."""
    result = cluster.kubectl(
        "get", "pods", "-n", SYSTEM_NAMESPACE, "-l", selector, "-o", "json", check=False
    )
    if result.returncode != 0:
        return False
    for pod in json.loads(result.stdout)["items"]:
        statuses = pod["status"].get("containerStatuses") or []
        started = [(s.get("state") or {}).get("running", {}).get("startedAt") for s in statuses]
        if (
            statuses
            and all(s.get("ready") for s in statuses)
            and all(t is not None and datetime.fromisoformat(t) >= since for t in started)
        ):
            return True
    return False


def allocatable(cluster: LocalCluster, name: str) -> dict[str, str]:
    result = cluster.kubectl("get", "node", name, "-o", "json", check=False)
    if result.returncode != 0:
        return {}
    found: dict[str, str] = json.loads(result.stdout)["status"].get("allocatable") or {}
    return found


def _gpunode_status(cluster: LocalCluster, name: str) -> dict[str, Any]:
    result = cluster.kubectl("get", "gpunode", name, "-o", "json", check=False)
    if result.returncode != 0:
        return {}
    status: dict[str, Any] = json.loads(result.stdout).get("status") or {}
    return status
