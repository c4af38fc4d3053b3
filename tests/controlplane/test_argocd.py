"""Argo CD: the health checks on objects the real operator made, in every state; the synced overlay.

Grants, exemptions and limits are created through the apiserver (admission
policies and CEL rules included) as their users, approvers and admins would,
and the running operator decides them; GPUNode statuses are written the way
an agent writes them (the real agent's report is judged in
tests/agent/test_monitoring.py). Each object is read back whole and given to
the Lua script Argo CD would run (`tests/controlplane/argocd.py`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from controller.cli.dev import add_simulated_node
from controller.devcluster import simnode
from controller.devcluster.binaries import source_root
from controller.devcluster.controlplane import LocalCluster
from controller.devcluster.process import wait_until
from controller.policy.nodes import ENFORCEMENT_LABEL
from tests.controlplane.argocd import health, scripts
from tests.controlplane.conftest import OperatorEnv
from tests.controlplane.kube import Kube
from tests.controlplane.test_operator import grant_manifest, make_account

NODE = "zz-argo-node"
"""Last by name, so other tests' grants without a node are never placed here."""
ARGOCD = source_root() / "deploy" / "argocd"


def in_(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def settled(
    kube: Kube, kind: str, name: str, namespace: str | None, done: Callable[[Any], bool]
) -> dict[str, Any]:
    where = ("-n", namespace) if namespace else ()
    found: dict[str, Any] = {}

    def check() -> bool:
        found.clear()
        found.update(kube.get(kind, name, *where))
        return done(found)

    wait_until(check, 30, f"{kind} {name} to settle")
    return found


def patch(kube: Kube, namespace: str, name: str, spec: dict[str, Any]) -> None:
    kube.kubectl(
        "patch", "gpugrant", name, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": spec})
    )


def state_is(state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: obj.get("status", {}).get("state") == state


Account = tuple[str, Kube, str]
"""(namespace, the user's Kube, the user)."""


@pytest.fixture(scope="module")
def accounts(operator_env: OperatorEnv) -> Iterator[dict[str, Account]]:
    """Three accounts and a node of this module's own; removed afterwards, so the tests
    sharing the operator's cluster see neither its nodes nor its reservations."""
    add_simulated_node(operator_env.cluster, NODE, {ENFORCEMENT_LABEL: "Enforce"})
    made = {}
    for who, user, group, login in (
        ("res", "argo-res@lab.example", "researcher", "argores"),
        ("res2", "argo-two@lab.example", "researcher", None),  # no Linux login
        ("stu", "argo-stu@lab.example", "student", "argostu"),
    ):
        namespace, kube = make_account(operator_env, user, group, login)
        made[who] = (namespace, kube, user)
    yield made
    admin = operator_env.admin
    namespaces = [namespace for namespace, _, _ in made.values()] + ["u-argo-course"]
    admin.kubectl("delete", "namespace", *namespaces, "--ignore-not-found", "--wait=false")
    admin.kubectl(
        "delete", "gpuexemption", "argo-later", "argo-now", "argo-brief", "--ignore-not-found"
    )
    admin.kubectl("delete", "gpunode", NODE, "zz-argo-silent", "--ignore-not-found")


def test_grant_health_in_every_state(
    operator_env: OperatorEnv, accounts: dict[str, Account]
) -> None:
    seen: dict[str, tuple[str, str]] = {}

    def judge(who: str, name: str, state: str, **spec: Any) -> dict[str, Any]:
        namespace, kube, user = accounts[who]
        kube.create(grant_manifest(namespace, name, user, **spec))
        obj = settled(kube, "gpugrant", name, namespace, state_is(state))
        seen[state] = health(obj)
        return obj

    here = {"nodeName": NODE, "reserve": True}
    judge("res", "active", "Active")
    judge("res", "scheduled", "Scheduled", start=in_(3600))
    judge("res", "holds", "Active", gpus={"count": 4}, placement=here)
    judge("res", "waits", "Approved", gpus={"count": 4}, placement=here)
    judge("res2", "expired", "Expired", duration="3s")
    judge("res2", "invalid", "Invalid", access="Host", placement={"nodeName": NODE})
    judge("stu", "pending", "Pending")

    stu_ns, _, _ = accounts["stu"]
    cluster = operator_env.cluster
    approver = Kube(
        cluster, cluster.user_kubeconfig("argo-approver@lab.example", ("ds01:approvers",))
    )
    patch(
        approver, stu_ns, "pending", {"approval": {"decision": "Denied", "note": "not this week"}}
    )
    denied = settled(approver, "gpugrant", "pending", stu_ns, state_is("Denied"))
    seen["Denied"] = health(denied)

    res_ns, res, _ = accounts["res"]
    patch(res, res_ns, "active", {"revocation": {"reason": "paper submitted"}})
    seen["Revoked"] = health(settled(res, "gpugrant", "active", res_ns, state_is("Revoked")))

    # Before the operator has seen it: no status at all.
    operator_env.pause()
    try:
        res.create(grant_manifest(res_ns, "unseen", "argo-res@lab.example"))
        seen["(none)"] = health(res.get("gpugrant", "unseen", "-n", res_ns))
    finally:
        operator_env.resume()

    assert seen["Active"][0] == "Healthy" and "active until" in seen["Active"][1]
    assert seen["Scheduled"][0] == "Healthy" and "starts at" in seen["Scheduled"][1]
    assert seen["Approved"][0] == "Progressing"
    assert seen["Pending"][0] == "Progressing"
    assert seen["Pending"][1].startswith("waiting for an approver: ")
    assert seen["Denied"] == ("Degraded", "denied by argo-approver@lab.example: not this week")
    assert seen["Invalid"][0] == "Degraded" and "linux-user" in seen["Invalid"][1]
    assert seen["Expired"][0] == "Suspended" and "expired at" in seen["Expired"][1]
    assert seen["Revoked"] == ("Suspended", "revoked: paper submitted")
    assert seen["(none)"] == ("Progressing", "waiting for the ds01 operator to decide")


def test_grant_the_operator_set_aside_is_degraded(accounts: dict[str, Account]) -> None:
    # The CRD schemas refuse what the operator cannot decide, so this status is the real
    # Active one with its Ready condition as `controller.policy.isolation` rewrites it.
    namespace, res, _ = accounts["res2"]
    res.create(grant_manifest(namespace, "set-aside", "argo-two@lab.example"))
    obj = settled(res, "gpugrant", "set-aside", namespace, state_is("Active"))
    for condition in obj["status"]["conditions"]:
        if condition["type"] == "Ready":
            condition.update(status="False", reason="Error", message="cannot be decided (x)")
    assert health(obj) == ("Degraded", "cannot be decided (x)")


def test_exemption_health_pending_active_expired(
    operator_env: OperatorEnv, accounts: dict[str, Account]
) -> None:
    def exemption(name: str, **spec: Any) -> dict[str, Any]:
        body = {
            "subject": {"kind": "User", "name": "argo-stu@lab.example"},
            "exemptFrom": ["IdleTimeout"],
            "category": "Waiver",
            "reason": "demo",
            **spec,
        }
        operator_env.admin.apply(
            {
                "apiVersion": "gpu.ds01.io/v1alpha1",
                "kind": "GPUExemption",
                "metadata": {"name": name},
                "spec": body,
            }
        )
        return body

    exemption("argo-later", startsAt=in_(3600), expiresAt=in_(7200))
    exemption("argo-now", expiresAt=in_(3600))
    exemption("argo-brief", expiresAt=in_(3))
    admin = operator_env.admin
    later = health(settled(admin, "gpuexemption", "argo-later", None, state_is("Pending")))
    now = health(settled(admin, "gpuexemption", "argo-now", None, state_is("Active")))
    gone = health(settled(admin, "gpuexemption", "argo-brief", None, state_is("Expired")))
    assert later[0] == "Healthy" and "will be exempt" in later[1]
    assert now[0] == "Healthy" and "is exempt from IdleTimeout" in now[1]
    assert gone[0] == "Suspended" and "kept as a record" in gone[1]


def test_rate_limit_health_ready_conflicting_and_unseen(
    operator_env: OperatorEnv, accounts: dict[str, Account]
) -> None:
    admin = operator_env.admin

    def limit(name: str, **spec: Any) -> None:
        admin.apply(
            {
                "apiVersion": "gpu.ds01.io/v1alpha1",
                "kind": "GPURateLimit",
                "metadata": {"name": name},
                "spec": {"subjects": [{"kind": "Group", "name": "argo-course"}], **spec},
            }
        )

    def ready(obj: dict[str, Any]) -> bool:
        status = obj.get("status", {})
        current = status.get("observedGeneration") == obj["metadata"]["generation"]
        return current and any(c["type"] == "Ready" for c in status.get("conditions", []))

    limit("argo-course-a", priority=30, gpu={"maxGPUEquivalents": 1})
    alone = health(settled(admin, "gpuratelimit", "argo-course-a", None, ready))
    # The group gets a member, and a second limit at the same priority disagrees.
    make_account(operator_env, "argo-course@lab.example", "argo-course")
    limit("argo-course-b", priority=30, gpu={"maxGPUEquivalents": 2})

    def conflicted(obj: dict[str, Any]) -> bool:
        return ready(obj) and any(
            c["type"] == "PriorityConflict" for c in obj["status"].get("conditions", [])
        )

    clash = health(settled(admin, "gpuratelimit", "argo-course-a", None, conflicted))
    operator_env.pause()
    try:
        limit("argo-course-a", priority=31, gpu={"maxGPUEquivalents": 1})
        unseen = health(admin.get("gpuratelimit", "argo-course-a"))
    finally:
        operator_env.resume()
    admin.kubectl("delete", "gpuratelimit", "argo-course-a", "argo-course-b")
    assert alone == ("Healthy", "applies to 0 account(s)")
    assert clash[0] == "Degraded" and "GPURateLimit/argo-course-b" in clash[1]
    assert unseen[0] == "Progressing" and "generation" in unseen[1]


def report(cluster: LocalCluster, node: str, **fields: Any) -> dict[str, Any]:
    """Write the node's status as its agent would, having applied the current spec."""
    body = simnode.status(node)
    generation = json.loads(cluster.kubectl("get", "gpunode", node, "-o", "json").stdout)[
        "metadata"
    ]["generation"]
    now = datetime.now(UTC).isoformat()
    body["status"] |= {
        "appliedGeneration": generation,
        "observedGeneration": generation,
        "conditions": [
            {
                "type": "AgentReady",
                "status": "True",
                "reason": "Scanning",
                "message": "agent scanning",
                "lastTransitionTime": now,
            }
        ],
        **fields,
    }
    cluster.kubectl(
        "patch", "gpunode", node, "--subresource=status", "--type=merge", "-p", json.dumps(body)
    )
    return json.loads(cluster.kubectl("get", "gpunode", node, "-o", "json").stdout)


def test_node_health_from_what_its_agent_reports(
    operator_env: OperatorEnv, accounts: dict[str, Account]
) -> None:
    cluster, admin = operator_env.cluster, operator_env.admin
    admin.apply(simnode.gpunode("zz-argo-silent", {ENFORCEMENT_LABEL: "Audit"}))
    silent = health(admin.get("gpunode", "zz-argo-silent"))

    def spec_is(mode: str) -> Callable[[dict[str, Any]], bool]:
        return lambda obj: obj.get("spec", {}).get("enforcement") == mode

    settled(admin, "gpunode", NODE, None, spec_is("Enforce"))
    enforcing = health(report(cluster, NODE, enforcement="Enforce"))
    behind = health(report(cluster, NODE, enforcement="Enforce", appliedGeneration=0))
    devices = simnode.inventory(NODE, unhealthy=(3,))
    devices[3]["healthReason"] = "XID 79"
    unhealthy = health(report(cluster, NODE, enforcement="Enforce", devices=devices))
    failing = {
        "type": "AgentReady",
        "status": "False",
        "reason": "NVMLUnavailable",
        "message": "NVML failed",
        "lastTransitionTime": datetime.now(UTC).isoformat(),
    }
    not_ready = health(report(cluster, NODE, enforcement="Enforce", conditions=[failing]))
    settled(admin, "gpunode", "zz-argo-silent", None, spec_is("Audit"))
    auditing = health(report(cluster, "zz-argo-silent", enforcement="Audit"))

    assert silent == ("Progressing", "waiting for the node's agent to report")
    assert enforcing[0] == "Healthy" and enforcing[1].startswith("enforcing; ")
    assert behind[0] == "Progressing" and "generation 0" in behind[1]
    assert unhealthy == ("Degraded", "GPU 3 unhealthy: XID 79")
    assert not_ready == ("Degraded", "AgentReady: NVML failed")
    assert auditing[0] == "Suspended" and auditing[1].startswith("Audit mode")


def test_every_kind_has_a_health_check() -> None:
    assert sorted(scripts()) == ["GPUExemption", "GPUGrant", "GPUNode", "GPURateLimit"]


def test_argocd_overlay_syncs_in_waves_and_the_apiserver_accepts_it(
    cluster: LocalCluster, admin: Kube
) -> None:
    text = cluster.kubectl("kustomize", str(ARGOCD / "production")).stdout
    objects = [o for o in yaml.safe_load_all(text) if o]
    wave = {
        (o["kind"], o["metadata"]["name"]): int(
            o["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", "0")
        )
        for o in objects
    }
    crds = [w for (kind, _), w in wave.items() if kind == "CustomResourceDefinition"]
    policies = [w for (kind, _), w in wave.items() if "AdmissionPolicy" in kind]
    rbac = [w for (kind, _), w in wave.items() if kind.endswith(("Role", "RoleBinding"))]
    assert len(crds) == 4 and policies and rbac
    assert max(crds) < min(policies) and max(rbac) < min(policies)
    assert wave[("ConfigMap", "ds01-admission")] < min(policies)
    assert max(policies) < wave[("StatefulSet", "ds01-operator")]
    assert max(policies) < wave[("DaemonSet", "ds01-agent")]
    for obj in objects:
        if obj["kind"] == "CustomResourceDefinition":
            options = obj["metadata"]["annotations"]["argocd.argoproj.io/sync-options"]
            assert "Prune=false" in options and "Delete=false" in options
    # The same objects as the production overlay, annotated only.
    production = cluster.kubectl(
        "kustomize", str(source_root() / "manifests" / "overlays" / "production")
    ).stdout
    plain = {(o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(production) if o}
    assert set(wave) == plain
    admin.kubectl(
        "apply", "--server-side", "-f", str(source_root() / "manifests" / "core" / "namespace.yaml")
    )
    result = admin.kubectl(
        "apply", "--server-side", "--dry-run=server", "--force-conflicts", "-f", "-", stdin=text
    )
    assert result.stdout.count("(server dry run)") == len(objects)


def test_application_and_project_point_at_the_waved_overlay() -> None:
    app = yaml.safe_load((ARGOCD / "application.yaml").read_text())
    project = yaml.safe_load((ARGOCD / "appproject.yaml").read_text())
    assert app["spec"]["project"] == project["metadata"]["name"]
    assert app["spec"]["source"]["path"] == "deploy/argocd/production"
    assert app["spec"]["source"]["repoURL"] in project["spec"]["sourceRepos"]
    ignored = {(d["group"], d["kind"]) for d in app["spec"]["ignoreDifferences"]}
    assert {("gpu.ds01.io", "GPUGrant"), ("gpu.ds01.io", "GPUNode")} <= ignored
    grant = next(d for d in app["spec"]["ignoreDifferences"] if d["kind"] == "GPUGrant")
    assert "/spec/requestedBy" in grant["jsonPointers"]
    allowed = {(k["group"], k["kind"]) for k in project["spec"]["clusterResourceWhitelist"]}
    assert ("apiextensions.k8s.io", "CustomResourceDefinition") in allowed


def test_the_project_allows_every_kind_the_overlay_syncs(cluster: LocalCluster) -> None:
    """Argo CD refuses a sync with a kind the AppProject does not list."""
    project = yaml.safe_load((ARGOCD / "appproject.yaml").read_text())["spec"]
    allowed = {
        (k["group"], k["kind"])
        for k in project["clusterResourceWhitelist"] + project["namespaceResourceWhitelist"]
    }
    text = cluster.kubectl("kustomize", str(ARGOCD / "production")).stdout
    synced = {
        (o["apiVersion"].rpartition("/")[0], o["kind"]) for o in yaml.safe_load_all(text) if o
    }
    assert synced - allowed == set()
    assert ("apps", "StatefulSet") in synced
