"""A simulated GPU node with a real node agent, for `ds01 dev up`.

Only the GPU is simulated: the agent is `ds01 agent` itself, loading the fake
NVML library through pynvml, reading a fake /proc/devices, watching its own
Docker engine and writing this host's real device cgroups. So a newcomer can
apply a grant, start a container and see the kernel open the GPU, then close
it again when the grant ends.

The node is DS01's kind of server, as `simnode` describes it: 8 x
A100-SXM4-80GB on NVSwitch, GPUs 0 and 1 in MIG mode (fewer boards, at least
4, on a host with fewer devices to hold). Its "GPUs" are misc devices of this
host's kernel that are harmless to hold open (fuse, loop-control, kvm, ...;
chosen at run time by `fakegpu.holdable`), because a device cgroup can only be
shown to refuse an open that would otherwise succeed, and revocation to end a
process that holds one. Everything lives under ``<workdir>/node`` except the
engine's sockets (`Dockerd.run_dir`), and every process is spawned through
the cluster, so `ds01 dev down` stops it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import config

from controller import __version__
from controller.devcluster import binaries, dockerd, simnode
from controller.devcluster.controlplane import LocalCluster
from controller.devcluster.fakegpu import (
    A100_SXM4_80GB,
    TOPOLOGY_ENV,
    Topology,
    a100_node,
    build,
    packed,
)
from controller.devcluster.fakegpu.devtree import make_devtree
from controller.devcluster.fakegpu.holdable import gpu_minors, unsuitable_reason
from controller.devcluster.process import wait_until
from controller.policy.nodes import ENFORCEMENT_LABEL
from controller.runtime import agentenrollment, fieldmanager, runcfront
from controller.runtime.agentcredentials import PendingRequest

AGENT_NAMESPACE = "ds01-system"
AGENT_ACCOUNT = "ds01-agent"


def unmet_requirements(cgroup_root: Path = Path("/sys/fs/cgroup")) -> list[str]:
    """What this host lacks to run the agent's node; empty when it can.

    Root makes device nodes, cgroups and a dockerd; kernel enforcement is
    written for the cgroup v1 devices controller (v2 is issue 6); gcc builds
    the fake NVML; the engine needs docker.io and busybox-static; the GPUs
    need misc devices to hold (`fakegpu.holdable`). `scripts/host-packages
    --install` installs the packages.
    """
    unmet = []
    if os.geteuid() != 0:
        unmet.append("root")
    if not (cgroup_root / "devices" / "devices.allow").exists():
        unmet.append("cgroup v1 device control")
    tools = dockerd.missing_tools()
    if shutil.which("gcc") is None:
        tools.append("gcc")
    if tools:
        unmet.append(", ".join(tools) + " (as root, `scripts/host-packages --install` adds them)")
    if reason := unsuitable_reason():
        unmet.append(reason)
    return unmet


def topology() -> Topology:
    """`simnode`'s node for the fake NVML: same boards and MIG layout, one GPU per
    holdable device of this host (8 where it has them)."""
    layout = packed(A100_SXM4_80GB, simnode.MIG_LAYOUT)
    return a100_node(model=A100_SXM4_80GB, minors=gpu_minors(), mig={0: layout, 1: layout})


def run_dir(workdir: Path) -> Path:
    """A short directory for the engine's sockets, one per state directory (see `Dockerd`)."""
    digest = hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:10]
    base = Path("/run") if Path("/run").is_dir() else Path(tempfile.gettempdir())
    return base / f"ds01-dev-{digest}"


def agent_kubeconfig(cluster: LocalCluster, node: str) -> Path:
    """The agent's credentials, enrolled as a Docker host's agent is (`docs/docker-host.md`).

    The agent runs as a host process, not in a pod, so it holds what a Docker
    host's agent holds: a client certificate naming its node (user
    ``ds01-agent:node:<node>``, group ``ds01:agents``), issued through the
    CertificateSigningRequest API by the cluster's own signer and approved by
    the admin running `up`. RBAC and the admission policy `ds01-agent-own-node`
    judge it exactly as they judge a lab's Docker host. (A token bound to a
    stand-in pod, as before, dies with that pod, which a real cluster's pod
    garbage collector deletes when no kubelet runs it.)
    """
    path = cluster.workdir / "node" / "agent.kubeconfig"
    # A request an earlier `up` left would be signed by that run's CA.
    PendingRequest.discard(path)
    admin = fieldmanager.name_writes(
        config.new_client_from_config(config_file=str(cluster.kubeconfig)), fieldmanager.DEV
    )
    try:
        agentenrollment.enroll(admin, node, path, approve_it=True, wait_s=60)
    finally:
        admin.close()
    # An earlier `up`'s stand-in pod: nothing runs it, and a kubelet of this name would try.
    cluster.kubectl(
        "delete",
        "pod",
        f"{AGENT_ACCOUNT}-{node}",
        f"--namespace={AGENT_NAMESPACE}",
        "--ignore-not-found",
        "--wait=false",
    )
    return path


def gateway_key(path: Path) -> Path:
    """A root-only key for the Docker gateway's owner labels, made once per state directory.

    The node's agent serves the gateway (`gateway_socket`): users' containers
    are created through it and carry labels signed with this key. Containers
    created on the engine's own socket (root) carry none, and the agent gives
    such a container exactly the GPUs its owner (found by the process UID) has
    reserved by grants.
    """
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    return path


def gateway_socket(workdir: Path) -> Path:
    """The Docker gateway's socket: what users' docker CLI talks to (short path, world-usable)."""
    return run_dir(workdir) / "gateway.sock"


@dataclass(frozen=True)
class AgentNode:
    """What a person needs to use the node: its gateway and engine, device nodes and logs."""

    name: str
    docker_host: str
    """The engine's own socket (root only)."""
    gateway_host: str
    """The Docker gateway users talk to (root passes through it unchanged)."""
    dev_root: Path
    audit_log: Path
    log: Path
    gpus: int

    def gpu_path(self, minor: int) -> Path:
        """The host device node of the GPU with this minor (`status.devices[].device.minor`)."""
        return self.dev_root / f"nvidia{minor}"


def start(
    cluster: LocalCluster, name: str, deadline_s: float = 120, extra_args: Sequence[str] = ()
) -> AgentNode:
    """Create the node's GPUNode (Enforce), start its dockerd and agent, wait for its report.

    ``extra_args`` are added to the agent's command line (the chaos tier signs its trail).
    """
    root = cluster.workdir / "node"
    root.mkdir(parents=True, exist_ok=True)
    # Created by the admin, labelled Enforce: the operator then writes an enforcing
    # spec for this node only, whatever --default-enforcement says.
    gpunode = simnode.gpunode(name, {ENFORCEMENT_LABEL: "Enforce"})
    cluster.apply("-f", "-", stdin=json.dumps(gpunode), force=False)

    engine = dockerd.Dockerd(root / "docker", run_dir(cluster.workdir))
    engine.start(lambda argv: cluster.spawn("dockerd", argv, stop_grace_s=dockerd.STOP_GRACE_S))

    library = build(binaries.cache_root() / "fakenvml")
    topology_file = root / "topology"
    topology().write(topology_file)
    host = root / "host"
    shutil.rmtree(host, ignore_errors=True)  # device nodes of an earlier `up`
    tree = make_devtree(host, topology(), misc=True)

    audit = root / "audit.jsonl"
    key = gateway_key(root / "gateway.key")
    started = datetime.now(UTC).replace(microsecond=0)
    process = cluster.spawn(
        "agent",
        [
            sys.executable,
            "-m",
            "controller.cli.main",
            "agent",
            f"--node={name}",
            f"--kubeconfig={agent_kubeconfig(cluster, name)}",
            f"--nvml-library={library}",
            f"--driver-proc-root={tree.proc_root}",
            f"--dev-root={tree.dev_root}",
            f"--docker-socket={engine.socket}",
            f"--gateway-key={key}",
            f"--gateway-socket={gateway_socket(cluster.workdir)}",
            f"--gateway-runtime={runcfront.NAME}",
            f"--runtime-dir={engine.runtime_dir}",
            f"--state-dir={root / 'state'}",
            f"--audit-log={audit}",
            *extra_args,
        ],
        env={**os.environ, TOPOLOGY_ENV: str(topology_file)},
    )

    def reported() -> bool:
        if not process.alive():
            raise RuntimeError(f"the agent on {name} exited:\n{process.log_tail()}")
        return _reported_since(_status(cluster, name), started)

    wait_until(reported, deadline_s, f"the agent on {name} to report its GPUs", 0.25)
    return AgentNode(
        name,
        engine.host,
        f"unix://{gateway_socket(cluster.workdir)}",
        tree.dev_root,
        audit,
        process.log,
        len(topology().gpus),
    )


def _status(cluster: LocalCluster, name: str) -> dict[str, Any]:
    result = cluster.kubectl("get", "gpunode", name, "-o", "json", check=False)
    if result.returncode != 0:
        return {}
    status: dict[str, Any] = json.loads(result.stdout).get("status") or {}
    return status


def _reported_since(status: dict[str, Any], started: datetime) -> bool:
    """This agent's report: its version, all its GPUs, a heartbeat from after it started.

    The heartbeat matters because etcd's data outlives `ds01 dev down`: the
    status an earlier run's agent wrote is still there.
    """
    agent = status.get("agent") or {}
    heartbeat = agent.get("heartbeatTime")
    return (
        agent.get("version") == __version__
        and status.get("gpus") == len(gpu_minors())
        and heartbeat is not None
        and datetime.fromisoformat(heartbeat) >= started
    )
