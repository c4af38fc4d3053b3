"""`ds01 dev up|down|kubeconfig`: the embedded local default.

`up` builds the control-plane binaries when missing, starts etcd, the
apiserver and the controller-manager on loopback, installs the CRDs, RBAC and
samples, prints how to reach the cluster, and keeps running until interrupted
(or returns at once with --detach; `down` stops it from anywhere).

The state directory outlives `down` (etcd's data: grants, accounts, the
node's GPUNode), and `up` is idempotent over it: it writes as the field
manager `ds01-dev` (`LocalCluster.apply`), its values win over earlier runs'
on its own objects, and it never applies a field the operator or the agent
owns. `up --fresh` starts over from an empty state directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controller.api import names
from controller.api.account import LABEL_USER
from controller.api.accountpolicy import POLICY_CONFIGMAP
from controller.api.base import API_VERSION
from controller.devcluster import agentnode, binaries, dockerd, image, node, podnode, simnode
from controller.devcluster.controlplane import (
    ADMIN_USER,
    ControlPlaneError,
    KubectlError,
    LocalCluster,
    free_port,
    http_ok,
    stop_recorded,
)
from controller.devcluster.process import ManagedProcess, PidFile, wait_until
from controller.runtime import fieldmanager


def default_workdir() -> Path:
    """$DS01_DEV_DIR, else $XDG_STATE_HOME/ds01-controller/dev."""
    if explicit := os.environ.get("DS01_DEV_DIR"):
        return Path(explicit)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "ds01-controller" / "dev"


_PROBE = """
apiVersion: gpu.ds01.io/v1alpha1
kind: GPUGrant
metadata: {{name: admission-probe, namespace: ds01-system}}
spec:
  subject: {{kind: User, name: {subject}}}
  gpus: {{count: 1}}
  reason: checks that the admission policies are in force
  requestedBy: forged
{approval}"""


PROBE_NAMESPACE = "ds01-admission-probe"


def wait_for_admission(cluster: LocalCluster, deadline_s: float = 60) -> None:
    """Wait until the admission policies judge requests (they load asynchronously).

    Server-side dry runs go through admission without storing anything: the
    mutating policy must stamp `requestedBy` over a forged value, and the
    validating policies must refuse the admin's approval of a grant for themself,
    a GPUNode written by an agent whose token is bound to no node, and a
    privileged pod or one over its device cap in an account namespace (a
    throwaway one with hand-written parameters, deleted afterwards).
    """
    stamp = _PROBE.format(subject="admission-probe", approval="")
    own = _PROBE.format(subject=ADMIN_USER, approval="  approval: {decision: Approved}\n")
    node = json.dumps(
        {
            "apiVersion": API_VERSION,
            "kind": "GPUNode",
            "metadata": {"name": "admission-probe"},
            "spec": {"enforcement": "Audit"},
        }
    )
    agent = "--as=system:serviceaccount:ds01-system:ds01-agent"

    def dry_run(manifest: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return cluster.kubectl(
            "create", "--dry-run=server", *extra, "-f", "-", stdin=manifest, check=False
        )

    # An account namespace with parameters that allow anything but two devices in one pod.
    probe_params = {
        "podsBlocked": "",
        "gpuBlocked": "",
        "gpuResources": "gpu",
        "gpuResourcesNote": "probe",
        "maxDevicesPerWorkload": "1",
        "maxDevicesPerWorkloadSource": "probe",
        "gpuRemaining": "Unlimited",
        "gpuAllowance": "Unlimited",
        "gpuAllowanceSource": "probe",
        "gpuInUse": "0",
    }
    # An earlier `up` deletes its probe namespace without waiting; creating content
    # in it while it still terminates would be refused.
    wait_until(
        lambda: (
            cluster.kubectl(
                "get",
                "namespace",
                PROBE_NAMESPACE,
                "--ignore-not-found",
                "-o=jsonpath={.status.phase}",
            ).stdout
            != "Terminating"
        ),
        deadline_s,
        f"an earlier run's namespace {PROBE_NAMESPACE} to be deleted",
        0.25,
    )
    for manifest in (
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": PROBE_NAMESPACE, "labels": {LABEL_USER: "admission-probe"}},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": POLICY_CONFIGMAP, "namespace": PROBE_NAMESPACE},
            "data": probe_params,
        },
    ):
        cluster.apply("-f", "-", stdin=json.dumps(manifest))

    def pod(name: str, privileged: bool, gpus: int) -> str:
        container = {
            "name": "probe",
            "image": "probe",
            "securityContext": {"privileged": privileged},
            "resources": {"limits": {names.GPU_RESOURCE: str(gpus)}},
        }
        return json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": PROBE_NAMESPACE},
                "spec": {"containers": [container]},
            }
        )

    def in_force() -> bool:
        stamped = dry_run(stamp, "-o", "jsonpath={.spec.requestedBy}")
        return (
            stamped.stdout == ADMIN_USER
            and "ds01-grant-approval" in dry_run(own).stderr
            and "ds01-agent-own-node" in dry_run(node, agent).stderr
            and "ds01-pod-security" in dry_run(pod("privileged", True, 1)).stderr
            and "ds01-pod-limits" in dry_run(pod("two-gpus", False, 2)).stderr
        )

    wait_until(in_force, deadline_s, "the ds01 admission policies to be in force", 0.25)
    cluster.kubectl("delete", "namespace", PROBE_NAMESPACE, "--wait=false")


def install(cluster: LocalCluster, samples: bool = True) -> None:
    """Apply the CRDs, wait until served; RBAC and admission, wait until in force; samples."""
    root = binaries.source_root()
    cluster.apply("-k", str(root / "crds"))
    crds = sorted((root / "crds").glob("*.gpu.ds01.io.yaml"))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *(f"crd/{p.name.removesuffix('.yaml')}" for p in crds),
    )
    cluster.apply("-k", str(root / "manifests" / "core"))
    wait_for_admission(cluster)
    if samples:
        cluster.apply("-k", str(root / "manifests" / "samples"))


SIMULATED_NODE = "gpu-node-1"


def add_simulated_node(
    cluster: LocalCluster, name: str, labels: Mapping[str, str] | None = None
) -> None:
    """Create a GPUNode and write its status as an agent would (no agent runs locally yet)."""
    body = json.dumps(simnode.gpunode(name, labels))
    cluster.apply("-f", "-", stdin=body, force=False)
    cluster.kubectl(
        "patch",
        "gpunode",
        name,
        f"--field-manager={fieldmanager.DEV}",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(simnode.status(name)),
    )


DevNode = podnode.PodNode | agentnode.AgentNode | str
"""What `up` runs the GPU node with: a real node (pods), host processes, or nothing (why)."""


def add_dev_node(cluster: LocalCluster, agent: bool = True, real: bool = True) -> DevNode:
    """The simulated GPU node, as far as this host allows.

    - a real node (kubelet, containerd) running the manifests: the operator and the
      agent as pods, from the project's image (`devcluster.podnode`);
    - else the agent as a host process with its own dockerd (`devcluster.agentnode`;
      the caller then runs the operator as a host process too);
    - else a GPUNode whose status is written once, as an agent would.

    Returns the running node, or why no agent runs (for one line of output).
    """
    unmet = agentnode.unmet_requirements() if agent else []
    if agent and not unmet:
        if real and not (without := node.unmet_requirements()):
            return podnode.start(cluster, SIMULATED_NODE)
        if real:
            print(f"no real node: needs {'; '.join(without)}; the agent runs as a host process")
        return agentnode.start(cluster, SIMULATED_NODE)
    add_simulated_node(cluster, SIMULATED_NODE)
    return f"needs {'; '.join(unmet)}" if unmet else "--no-agent given"


def start_operator(
    cluster: LocalCluster, *extra: str, deadline_s: float = 60, name: str = "operator"
) -> ManagedProcess:
    """Run `ds01 operator` as the ds01-operator ServiceAccount, so RBAC applies to it.

    ``name`` names its log (`logs/<name>.log`) and its identity in the leader Lease:
    replicas of one cluster need their own; a restart under the same name leads again
    at once (the process it replaces is gone), without waiting for the Lease to expire.
    """
    kubeconfig = cluster.service_account_kubeconfig("ds01-system", "ds01-operator")
    port = free_port()
    process = cluster.spawn(
        name,
        [
            sys.executable,
            "-m",
            "controller.cli.main",
            "operator",
            f"--kubeconfig={kubeconfig}",
            f"--audit-log={cluster.workdir / 'audit.jsonl'}",
            f"--liveness=http://127.0.0.1:{port}/healthz",
            "--default-enforcement=Audit",
            f"--leader-identity={name}",
            *extra,
        ],
    )

    def live() -> bool:
        if not process.alive():
            raise RuntimeError(f"the operator exited:\n{process.log_tail()}")
        return http_ok(f"http://127.0.0.1:{port}/healthz")

    wait_until(live, deadline_s, "the operator to report live")
    return process


def _up(args: argparse.Namespace) -> int:
    workdir: Path = args.workdir or default_workdir()
    if any(p.alive() for p in PidFile(workdir / "pids.json").read()):
        print(
            f"a local cluster is already running in {workdir}; `ds01 dev down` stops it",
            file=sys.stderr,
        )
        return 1
    if args.fresh and (refused := clear_state(workdir)):
        print(refused, file=sys.stderr)
        return 1
    started = time.monotonic()
    built = binaries.ensure()
    cluster = LocalCluster(workdir, binaries=built)
    try:
        cluster.start()
        install(cluster, samples=not args.no_samples)
        dev_node = add_dev_node(cluster, agent=not args.no_agent, real=not args.no_node)
        if not isinstance(dev_node, podnode.PodNode):
            start_operator(cluster)
    except (ControlPlaneError, KubectlError, RuntimeError, TimeoutError) as error:
        cluster.stop()
        print(
            f"ds01 dev up failed: {error}\n"
            f"  logs: {workdir / 'logs'}\n"
            f"  `ds01 dev up --fresh` starts over from an empty state directory ({workdir})",
            file=sys.stderr,
        )
        return 1
    except BaseException:
        cluster.stop()
        raise
    elapsed = time.monotonic() - started
    kubectl_dir = built.kubectl.parent
    audit = (
        dev_node.operator_audit_log
        if isinstance(dev_node, podnode.PodNode)
        else workdir / "audit.jsonl"
    )
    print(
        f"\nds01 local control plane is up in {elapsed:.1f}s "
        f"(Kubernetes {built.kubernetes_version}, etcd {built.etcd_version})\n"
        f"  API server:  {cluster.server}\n"
        f"{_operator_line(dev_node)}"
        f"  GPU node:    {SIMULATED_NODE} (simulated: {_gpus(dev_node)} x A100-80GB,"
        " GPUs 0-1 in MIG mode)\n"
        f"{_node_lines(dev_node)}"
        f"  logs:        {workdir / 'logs'}   audit: {audit}\n"
        f"{_verify_line(dev_node, audit)}\n"
        f"  export KUBECONFIG={shlex.quote(str(cluster.kubeconfig))}\n"
        f"  export PATH={shlex.quote(str(kubectl_dir))}:$PATH"
        f"   # kubectl {built.kubernetes_version}\n"
        f"{_node_exports(dev_node)}\n"
        "  kubectl get ds01 -A\n"
        "  ds01 dev kubeconfig --user 248835@lab.example --group student   # act as a student\n",
        flush=True,
    )
    if args.detach:
        print("detached; `ds01 dev down` stops it")
        return 0
    return _serve(cluster)


def clear_state(workdir: Path) -> str | None:
    """`up --fresh`: delete what earlier runs left in ``workdir``; why not, if refused.

    By default `up` keeps the state (etcd's data: grants, accounts, usage) and
    is idempotent over it; this is for starting over. Nothing may run there,
    and nothing may be mounted below it (a dockerd that did not stop cleanly
    leaves its container filesystems mounted).
    """
    if any(p.alive() for p in PidFile(workdir / "pids.json").read()):
        return f"a local cluster is running in {workdir}; `ds01 dev down` first"
    resolved = workdir.resolve()
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    below = [m.split()[1] for m in mounts if Path(m.split()[1]).is_relative_to(resolved)]
    if below:
        return f"not deleting {workdir}: mounted below it: {', '.join(below)}"
    if workdir.exists():
        shutil.rmtree(workdir)
        print(f"deleted the earlier state in {workdir}")
    return None


def _verify_line(dev_node: DevNode, audit: Path) -> str:
    if not isinstance(dev_node, podnode.PodNode):
        return ""
    key = podnode.audit_key(dev_node.real.cluster.workdir)
    return (
        f"  verify it:   ds01 audit verify --file {audit} --key-file {key}"
        " --anchor-from configmap/ds01-system/ds01-audit-anchor\n"
    )


def _operator_line(dev_node: DevNode) -> str:
    if isinstance(dev_node, podnode.PodNode):
        return (
            "  operator:    StatefulSet ds01-system/ds01-operator, image"
            f" {dev_node.image.name} (`kubectl get pods -n ds01-system`)\n"
        )
    return "  operator:    a host process, as ServiceAccount ds01-system/ds01-operator\n"


def _node_lines(node: DevNode) -> str:
    if isinstance(node, podnode.PodNode):
        return (
            f"  node:        {node.name} Ready: kubelet and containerd"
            f" (logs {node.real.cluster.workdir / 'logs'})\n"
            f"  node agent:  DaemonSet ds01-system/ds01-agent on {node.name}, enforcing"
            f" (fake NVML; audit {node.agent_audit_log})\n"
            f"  docker:      {node.gateway_host} (the Docker gateway: users' docker CLI; root and"
            " admins pass through)\n"
            f"               {node.engine.host} (the node's own dockerd, root only; images"
            f" {dockerd.IMAGE}, {node.image.name})\n"
            f"  GPU devices: {node.dev_root}/nvidia<minor>\n"
        )
    if isinstance(node, str):
        return (
            f"  no agent:    {node}\n"
            f"               so {SIMULATED_NODE} runs WITHOUT enforcement: its status is written"
            " once and no kernel rule is applied\n"
        )
    return (
        f"  node agent:  `ds01 agent` as ServiceAccount ds01-system/ds01-agent, enforcing"
        f" (fake NVML; log {node.log}, audit {node.audit_log})\n"
        f"  docker:      {node.gateway_host} (the Docker gateway: users' docker CLI; root and"
        " admins pass through)\n"
        f"               {node.docker_host} (the node's own dockerd, root only; image"
        f" {dockerd.IMAGE})\n"
        f"  GPU devices: {node.dev_root}/nvidia<minor>\n"
    )


def _gpus(node: DevNode) -> int:
    return len(simnode.inventory(SIMULATED_NODE)) if isinstance(node, str) else node.gpus


def _node_exports(node: DevNode) -> str:
    if isinstance(node, str):
        return ""
    engine = node.engine.host if isinstance(node, podnode.PodNode) else node.docker_host
    return (
        f"  export DOCKER_HOST={shlex.quote(node.gateway_host)}   # the node's Docker gateway\n"
        f"  export DS01_ENGINE={shlex.quote(engine)}   # its dockerd (root only)\n"
        f"  export DS01_GPU_DEV={shlex.quote(str(node.dev_root))}   # its device nodes\n"
        "  # a user's docker CLI: runuser -u <login> -- env DOCKER_HOST=$DOCKER_HOST docker ...\n"
        "  # (a Linux login named in an account's gpu.ds01.io/linux-user; README walk-through)\n"
    )


def _serve(cluster: LocalCluster) -> int:
    """Block until SIGINT/SIGTERM or until a control-plane process dies."""
    stop = False

    def request_stop(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    print("running; press Ctrl-C to stop", flush=True)
    try:
        while not stop:
            dead = [p for p in cluster.processes if not p.alive()]
            if dead:
                for process in dead:
                    print(f"{process.name} exited:\n{process.log_tail()}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    finally:
        cluster.stop()
        print("stopped")
    return 0


def _build(args: argparse.Namespace) -> int:
    started = time.monotonic()
    built = binaries.ensure()
    print(
        f"Kubernetes {built.kubernetes_version} in {built.kubernetes_dir}\n"
        f"etcd {built.etcd_version} in {built.etcd_dir}"
    )
    if unmet := node.unmet_requirements():
        print(f"no image: the node it is for needs {'; '.join(unmet)}")
    else:
        made = image.build()
        print(f"{made.name} in {made.archive} ({made.size_bytes / 2**20:.0f} MiB)")
    print(f"ready in {time.monotonic() - started:.1f}s")
    return 0


def _down(args: argparse.Namespace) -> int:
    workdir: Path = args.workdir or default_workdir()
    stopped = stop_recorded(workdir)
    print(f"stopped {stopped} process(es)" if stopped else f"nothing running in {workdir}")
    return 0


def _kubeconfig(args: argparse.Namespace) -> int:
    workdir: Path = args.workdir or default_workdir()
    if not (workdir / "server").is_file():
        print(f"no local cluster in {workdir}; run `ds01 dev up` first", file=sys.stderr)
        return 1
    path = LocalCluster.attach(workdir).user_kubeconfig(args.user, tuple(args.group))
    print(
        f"export KUBECONFIG={shlex.quote(str(path))}   # {args.user} in {args.group or 'no groups'}"
    )
    return 0
