"""The world the chaos run breaks: one control plane, two operator replicas, a real agent.

- a local control plane (`LocalCluster`) with ds01's CRDs, RBAC and admission;
- the GPU node `chaos-gpu`: a real `ds01 agent` process (fake NVML, real device
  cgroups, its own dockerd whose default runtime is `ds01-runc`), enforcing, its
  trail signed (`devcluster.agentnode`); two simulated nodes beside it, so the
  churn's reserving grants contest 16 whole GPUs on three nodes;
- two operator replicas electing a leader on short Lease timings, each with its
  own signed trail and anchor key (`tests/controlplane/failover.py`);
- the churn's accounts (users in group `chaos`, each acting with their own
  certificate, as `kubectl` users do) and an approver;
- containers holding GPUs: each holder account has a long grant reserving one GPU of
  `chaos-gpu`, and a container run as its Linux user keeps that device open.

Faults act on processes the run started, by their process group: SIGKILL for the
operator and the agent (a crash: nothing is handed back or flushed), and the
apiserver stopped and started again on its port.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from kubernetes import client, config

from controller.cli.dev import add_simulated_node, install
from controller.devcluster import agentnode
from controller.devcluster.controlplane import LocalCluster
from controller.devcluster.dockerd import IMAGE
from controller.devcluster.fakegpu import TOPOLOGY_ENV
from controller.devcluster.process import ManagedProcess, wait_until
from controller.operator.main import anchor_key
from tests.agent.users import ensure_user
from tests.controlplane import failover
from tests.controlplane.kube import GROUP, VERSION, Kube

AGENT_NODE = "chaos-gpu"
SIMULATED = ("chaos-sim-a", "chaos-sim-b")
LABEL = "gpu.ds01.io/chaos"
CHURN_GROUP = "chaos"
HOLDER_GROUP = "chaos-holder"
APPROVER = "chaos-approver@lab.example"
TIMINGS = ("5s", "4s", "500ms")
"""Lease duration, renew deadline, retry period: as the HA test, to keep takeovers short."""
IDENTITIES = ("replica-a", "replica-b")
ANCHORS = "ds01-audit-anchor"
RBAC = "rbac.authorization.k8s.io"


@dataclass
class Account:
    namespace: str
    user: str
    custom: client.CustomObjectsApi
    """The account owner's own client (their certificate)."""


@dataclass
class Holder:
    """A container run as the account's Linux user, holding its reserved GPU open."""

    account: Account
    grant: str
    login: str
    uid: int
    container: str
    device: str
    minor: int
    baseline: dict[str, Any] = field(default_factory=dict)
    """Running, Pid, StartedAt, RestartCount and the pid's start time, once it held the GPU."""


@dataclass
class Rig:
    cluster: LocalCluster
    admin: Kube
    node: agentnode.AgentNode
    operator_key: Path
    agent_key: Path
    replicas: dict[str, failover.Replica]
    accounts: list[Account]
    approver: client.CustomObjectsApi
    holders: list[Holder] = field(default_factory=list)

    # -- the operator ------------------------------------------------------------

    def operator_flags(self) -> tuple[str, ...]:
        return (
            f"--audit-key={self.operator_key}",
            "--audit-checkpoint-every=50",
            "--audit-checkpoint-interval=5s",
        )

    def start_replica(self, identity: str) -> failover.Replica:
        """Start (or restart) a replica: the same identity, trail and anchor key as before."""
        replica = failover.start_replica(self.cluster, identity, TIMINGS, *self.operator_flags())
        self.replicas[identity] = replica
        return replica

    def kill_replica(self, identity: str) -> None:
        replica = self.replicas[identity]
        if replica.process.alive():  # one that gave up earlier is a finding of its own
            replica.kill()
        _forget(self.cluster, replica.process)

    def lease(self) -> client.V1LeaseSpec:
        return failover.lease(self.admin)

    def anchors(self) -> dict[str, str]:
        """Each replica's anchor (SEQ:SHA256) as the ConfigMap holds it."""
        found = self.admin.core.read_namespaced_config_map(ANCHORS, "ds01-system")
        data = found.data or {}
        return {i: data[anchor_key(i)] for i in IDENTITIES if anchor_key(i) in data}

    # -- the agent ------------------------------------------------------------------

    def agent_process(self) -> ManagedProcess:
        return next(p for p in reversed(self.cluster.processes) if p.name == "agent")

    def agent_starts(self) -> int:
        """How many times an agent logged its start (the log is appended to across restarts)."""
        return self.node.log.read_bytes().count(b'"agent started"')

    def kill_agent(self) -> list[str]:
        """SIGKILL the agent; its command line, for the restart."""
        process = self.agent_process()
        assert process.popen is not None
        argv = [str(a) for a in process.popen.args]  # type: ignore[union-attr]
        os.killpg(process.pid, signal.SIGKILL)
        wait_until(lambda: not process.alive(), 10, "the agent to die")
        process.stop()
        _forget(self.cluster, process)
        return argv

    def start_agent(self, argv: list[str]) -> None:
        """Start the agent again with the same command line, as its service manager would."""
        before = self.agent_starts()
        topology = self.cluster.workdir / "node" / "topology"
        process = self.cluster.spawn("agent", argv, env={**os.environ, TOPOLOGY_ENV: str(topology)})

        def started() -> bool:
            if not process.alive():
                raise RuntimeError(f"the restarted agent exited:\n{process.log_tail()}")
            return self.agent_starts() > before

        wait_until(started, 60, "the restarted agent to start")

    def gpunode(self, name: str = AGENT_NODE) -> dict[str, Any]:
        found = self.admin.custom.get_cluster_custom_object(
            GROUP, VERSION, "gpunodes", name, _request_timeout=10
        )
        return cast(dict[str, Any], found)

    def listing(self, plural: str, timeout_s: float = 10) -> list[dict[str, Any]]:
        """Every object of a ds01 kind, as one consistent snapshot."""
        found = self.admin.custom.list_cluster_custom_object(
            GROUP, VERSION, plural, _request_timeout=timeout_s
        )
        return cast(list[dict[str, Any]], cast(dict[str, Any], found)["items"])

    # -- the engine --------------------------------------------------------------------

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["docker", f"--host={self.node.docker_host}", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {result.stderr.strip()}")
        return result

    def container_state(self, name: str) -> dict[str, Any]:
        """What `docker inspect` says of the container, and the start time of its pid."""
        out = self.docker("inspect", "-f", "{{json .State}}|{{.RestartCount}}", name).stdout
        state_json, _, restarts = out.strip().rpartition("|")
        state = json.loads(state_json)
        pid = int(state.get("Pid") or 0)
        return {
            "running": bool(state.get("Running")),
            "pid": pid,
            "startedAt": state.get("StartedAt"),
            "restartCount": int(restarts),
            "pidStart": _start_ticks(pid) if pid else None,
        }

    def opens(self, name: str) -> bool:
        """Whether a new open of the container's GPU succeeds now."""
        tried = self.docker("exec", name, "sh", "-c", "exec 4<>/dev/gpu0 && echo OPEN", check=False)
        return "OPEN" in tried.stdout


def _forget(cluster: LocalCluster, process: ManagedProcess) -> None:
    """Drop a dead process from the cluster's record (its replacement is recorded anew)."""
    if process in cluster.processes:
        cluster.processes.remove(process)
        cluster.pid_file.write(cluster.processes)


def _start_ticks(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _key(path: Path, text: str) -> Path:
    path.touch(mode=0o600)
    path.write_text(text)
    return path


def _limits(admin: Kube) -> None:
    """Churn accounts: auto-approved up to 2h, so 3h requests wait for an approver; holders:
    auto-approved without a duration limit. Nobody is rate-limited, budgeted or reaped."""
    unlimited: dict[str, Any] = {
        "gpu": {"maxGPUEquivalents": "Unlimited"},
        "rates": {"grantRequestsPerDay": "Unlimited"},
        "budget": {"gpuHours": "Unlimited"},
        "lifecycle": {"idleTimeout": "Unlimited", "maxRuntime": "Unlimited"},
    }
    for name, group, priority, duration in (
        (CHURN_GROUP, CHURN_GROUP, 50, "2h"),
        (HOLDER_GROUP, HOLDER_GROUP, 60, "Unlimited"),
    ):
        admin.apply(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "GPURateLimit",
                "metadata": {"name": name},
                "spec": {
                    "subjects": [{"kind": "Group", "name": group}],
                    "priority": priority,
                    "grants": {
                        "approval": "Auto",
                        "maxDuration": duration,
                        "maxGPUEquivalents": "Unlimited",
                    },
                    **unlimited,
                },
            }
        )


def _account(cluster: LocalCluster, admin: Kube, login: str, group: str) -> Account:
    """An account namespace whose owner may manage their grants (`ds01-user`), and their client."""
    user = admin.account(login, group)
    binding = client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="ds01-account-owner"),
        subjects=[client.RbacV1Subject(kind="User", name=user, api_group=RBAC)],
        role_ref=client.V1RoleRef(kind="ClusterRole", name="ds01-user", api_group=RBAC),
    )
    client.RbacAuthorizationV1Api(admin.api).create_namespaced_role_binding(f"u-{login}", binding)
    return Account(f"u-{login}", user, _custom(cluster.user_kubeconfig(user)))


def _custom(kubeconfig: Path) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(config.new_client_from_config(config_file=str(kubeconfig)))


def start(cluster: LocalCluster, users: int, holders: int) -> Rig:
    """Install, start the agent's node and both replicas, make the accounts and the holders."""
    install(cluster, samples=False)
    admin = Kube(cluster, cluster.kubeconfig)
    operator_key = _key(cluster.workdir / "operator-audit.key", "chaos-operator-audit-key")
    agent_key = _key(cluster.workdir / "agent-audit.key", "chaos-agent-audit-key")
    node = agentnode.start(
        cluster,
        AGENT_NODE,
        extra_args=(
            f"--audit-key={agent_key}",
            "--audit-checkpoint-every=20",
            "--audit-checkpoint-interval=5s",
        ),
    )
    admin.kubectl("label", "gpunode", AGENT_NODE, f"{LABEL}=true")
    for name in SIMULATED:
        add_simulated_node(cluster, name, {LABEL: "true"})
    _limits(admin)
    accounts = [_account(cluster, admin, f"cu{i:03d}", CHURN_GROUP) for i in range(users)]
    approver = _custom(cluster.user_kubeconfig(APPROVER, ("ds01:approvers",)))
    rig = Rig(cluster, admin, node, operator_key, agent_key, {}, accounts, approver)
    rig.start_replica(IDENTITIES[0])
    wait_until(lambda: rig.lease().holder_identity == IDENTITIES[0], 60, "replica-a to lead")
    second = rig.start_replica(IDENTITIES[1])
    wait_until(lambda: second.leader_metric() == 0.0, 30, "replica-b to follow")
    rig.holders = [_holder(rig, i) for i in range(holders)]
    return rig


def _holder(rig: Rig, index: int) -> Holder:
    """A grant reserving one GPU of the agent's node, and a container holding it open."""
    login = f"chold{index}"
    uid = ensure_user(login)
    account = _account(rig.cluster, rig.admin, login, HOLDER_GROUP)
    grant = f"hold-{index}"
    account.custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        account.namespace,
        "gpugrants",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "GPUGrant",
            "metadata": {"name": grant},
            "spec": {
                "subject": {"kind": "User", "name": account.user},
                "gpus": {"count": 1},
                "placement": {"reserve": True, "nodeName": AGENT_NODE},
                "duration": "24h",
                "reason": "chaos: a container holds this GPU through every fault",
            },
        },
    )

    def held() -> dict[str, Any] | None:
        body = rig.admin.custom.get_namespaced_custom_object(
            GROUP, VERSION, account.namespace, "gpugrants", grant
        )
        status = cast(dict[str, Any], body).get("status") or {}
        return status if status.get("state") == "Active" else None

    wait_until(lambda: held() is not None, 60, f"{grant} to be Active")
    status = held()
    assert status is not None
    device = status["allocations"][0]["devices"][0]["uuid"]

    def applied() -> bool:
        node = rig.gpunode()
        mine = any(r["user"] == account.user for r in node["spec"].get("reservations") or ())
        return (
            mine
            and (node.get("status") or {}).get("appliedGeneration")
            == node["metadata"]["generation"]
        )

    wait_until(applied, 60, f"the agent to apply {grant}")
    minor = next(
        d["device"]["minor"] for d in rig.gpunode()["status"]["devices"] if d["uuid"] == device
    )
    name = f"chaos-hold-{index}"
    rig.docker("rm", "-f", name, check=False)
    # Opens until the agent, which learns the account's Linux user on its own clock, lets
    # it; then keeps the descriptor open for the rest of the run as its only process.
    script = (
        "until (exec 4<>/dev/gpu0) 2>/dev/null; do sleep 1; done; "
        "exec 3<>/dev/gpu0; exec sleep 2147483647"
    )
    rig.docker(
        "run", "-d", "--name", name, "--network", "none", "--user", str(uid),
        "--restart", "on-failure",
        "--device", f"{rig.node.gpu_path(minor)}:/dev/gpu0",
        IMAGE, "sh", "-c", script,
    )  # fmt: skip
    holder = Holder(account, grant, login, uid, name, device, minor)

    def holding() -> bool:
        state = rig.container_state(name)
        try:
            return Path(f"/proc/{state['pid']}/comm").read_text().strip() == "sleep"
        except OSError:
            return False

    wait_until(holding, 60, f"{name} to hold its GPU open")
    holder.baseline = rig.container_state(name)
    return holder
