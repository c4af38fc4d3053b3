"""The operator against a real control plane, running as its own ServiceAccount.

Every identity here is a real client certificate; every rule is judged by the
apiserver (RBAC, CEL, admission policies) or by the operator through the
objects it writes. Durations are seconds long; waits are conditions with
deadlines, never sleeps.
"""

from __future__ import annotations

import json
import re
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller.cli.dev import add_simulated_node
from controller.devcluster import simnode
from controller.devcluster.process import wait_until
from tests.controlplane.conftest import OperatorEnv
from tests.controlplane.kube import Kube

APPROVER_GROUPS = ("ds01:approvers",)


def make_account(
    env: OperatorEnv,
    user: str,
    groups: str,
    linux_user: str | None = None,
    k8s_groups: tuple[str, ...] = (),
) -> tuple[str, Kube]:
    """An account namespace (as an admin creates it) and a Kube acting as its user."""
    label = re.sub(r"[^A-Za-z0-9_.-]", "-", user)
    namespace = "u-" + re.sub(r"[^a-z0-9-]", "-", user.lower().split("@")[0])
    annotations = {"gpu.ds01.io/user-name": user, "gpu.ds01.io/groups": groups}
    if linux_user:
        annotations["gpu.ds01.io/linux-user"] = linux_user
    env.admin.namespace(namespace, {"gpu.ds01.io/user": label}, annotations)
    env.admin.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "ds01-account-owner", "namespace": namespace},
            "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}],
            "roleRef": {
                "kind": "ClusterRole",
                "name": "ds01-user",
                "apiGroup": "rbac.authorization.k8s.io",
            },
        }
    )
    return namespace, Kube(env.cluster, env.cluster.user_kubeconfig(user, k8s_groups))


def grant_manifest(namespace: str, name: str, user: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "subject": {"kind": "User", "name": user},
        "gpus": {"count": 1},
        "reason": "operator test",
        "duration": "1h",
    }
    body.update(spec)
    return {
        "apiVersion": "gpu.ds01.io/v1alpha1",
        "kind": "GPUGrant",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def grant(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return kube.get("gpugrant", name, "-n", namespace)


def wait_state(
    kube: Kube, namespace: str, name: str, state: str, deadline_s: float = 30
) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def reached() -> bool:
        found.update(grant(kube, namespace, name))
        return found.get("status", {}).get("state") == state

    try:
        wait_until(reached, deadline_s, f"grant {namespace}/{name} to be {state}")
    except TimeoutError as error:
        status = found.get("status", {})
        raise AssertionError(
            f"{error}; it is {status.get('state')}: {status.get('conditions')}"
        ) from None
    return found


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def events(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    listing = kube.get("events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")
    return listing["items"]


def patch(kube: Kube, namespace: str, name: str, body: dict[str, Any]) -> Any:
    return kube.kubectl(
        "patch",
        "gpugrant",
        name,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps(body),
        check=False,
    )


@pytest.fixture(scope="module")
def student(operator_env: OperatorEnv) -> tuple[str, Kube]:
    return make_account(operator_env, "stu@lab.example", "student", "stu")


@pytest.fixture(scope="module")
def researcher(operator_env: OperatorEnv) -> tuple[str, Kube]:
    return make_account(operator_env, "res@lab.example", "researcher", "res")


@pytest.fixture(scope="module")
def approver(operator_env: OperatorEnv) -> tuple[str, Kube]:
    return make_account(operator_env, "appr@lab.example", "faculty", "appr", APPROVER_GROUPS)


@pytest.fixture(scope="module")
def gpu_node(operator_env: OperatorEnv) -> str:
    """A GPUNode whose status is written exactly as an agent writes it."""
    add_simulated_node(operator_env.cluster, "node-a")
    return "node-a"


def report_workloads(env: OperatorEnv, node: str, workloads: list[dict[str, Any]]) -> None:
    """Write the node's status with ``workloads``, as its agent would."""
    report = simnode.status(node)
    report["status"]["workloads"] = workloads
    env.admin.kubectl(
        "patch", "gpunode", node, "--subresource=status", "--type=merge", "-p", json.dumps(report)
    )


def test_grant_lifecycle_in_seconds(
    operator_env: OperatorEnv, researcher: tuple[str, Kube]
) -> None:
    namespace, res = researcher
    res.create(grant_manifest(namespace, "short", "res@lab.example", duration="8s"))
    active = wait_state(res, namespace, "short", "Active")
    assert active["spec"]["approval"]["decision"] == "Approved"
    assert (
        active["spec"]["approval"]["approvedBy"]
        == "system:serviceaccount:ds01-system:ds01-operator"
    )
    assert active["spec"]["requestedBy"] == "res@lab.example"
    window = active["status"]["window"]
    span = datetime.fromisoformat(window["end"]) - datetime.fromisoformat(window["start"])
    assert span == timedelta(seconds=8)
    assert condition(active, "Ready")["status"] == "True"
    wait_until(
        lambda: any(e["reason"] == "ExpiringSoon" for e in events(res, namespace, "short")),
        30,
        "the expiry warning Event",
    )
    expired = wait_state(res, namespace, "short", "Expired")
    assert condition(expired, "Expired")["status"] == "True"
    assert condition(expired, "Active")["status"] == "False"
    reasons = [e["reason"] for e in events(res, namespace, "short")]
    assert {"Activated", "ExpiringSoon", "Expired"} <= set(reasons)
    kinds = [
        r["event_type"]
        for r in operator_env.audit_events()
        if r["details"].get("grant") == f"{namespace}/short"
    ]
    for expected in (
        "grant.requested",
        "grant.approved",
        "grant.active",
        "grant.expiry_warning",
        "grant.expired",
    ):
        assert expected in kinds
    assert (
        kinds.index("grant.active")
        < kinds.index("grant.expiry_warning")
        < kinds.index("grant.expired")
    )


def test_approval_rules_for_students_approvers_and_admins(
    operator_env: OperatorEnv, student: tuple[str, Kube], approver: tuple[str, Kube]
) -> None:
    namespace, stu = student
    appr_namespace, appr = approver
    stu.create(
        grant_manifest(namespace, "paper", "stu@lab.example", requestedBy="prof@lab.example")
    )
    pending = wait_state(stu, namespace, "paper", "Pending")
    assert pending["spec"]["requestedBy"] == "stu@lab.example"
    assert "GPURateLimit/student requires an approver" in condition(pending, "Approved")["message"]

    own = patch(stu, namespace, "paper", {"spec": {"approval": {"decision": "Approved"}}})
    assert (
        own.returncode != 0
        and "may approve or deny a GPUGrant (you are stu@lab.example)" in own.stderr
    )

    for_someone_else = stu.create(
        grant_manifest(namespace, "proxy", "res@lab.example"), check=False
    )
    assert for_someone_else.returncode != 0 and "spec.subject.name" in for_someone_else.stderr

    # Longer than faculty's grants.maxDuration (720h): even faculty need an approver for this.
    appr.create(grant_manifest(appr_namespace, "mine", "appr@lab.example", duration="800h"))
    wait_state(appr, appr_namespace, "mine", "Pending")
    self_approval = patch(
        appr, appr_namespace, "mine", {"spec": {"approval": {"decision": "Approved"}}}
    )
    assert (
        self_approval.returncode != 0
        and "nobody decides their own GPUGrant" in self_approval.stderr
    )

    decided = patch(
        appr,
        namespace,
        "paper",
        {"spec": {"approval": {"decision": "Approved", "approvedBy": "forged"}}},
    )
    assert decided.returncode == 0, decided.stderr
    active = wait_state(stu, namespace, "paper", "Active")
    assert active["spec"]["approval"]["approvedBy"] == "appr@lab.example"
    assert "approved by appr@lab.example" in condition(active, "Approved")["message"]

    frozen = patch(stu, namespace, "paper", {"spec": {"gpus": {"count": 2}}})
    assert frozen.returncode != 0 and "an approved GPUGrant is frozen" in frozen.stderr
    longer = patch(stu, namespace, "paper", {"spec": {"duration": "2h"}})
    assert longer.returncode != 0 and "only approvers may extend" in longer.stderr
    extended = patch(appr, namespace, "paper", {"spec": {"duration": "2h"}})
    assert extended.returncode == 0, extended.stderr

    def window_length() -> timedelta:
        window = grant(stu, namespace, "paper")["status"]["window"]
        return datetime.fromisoformat(window["end"]) - datetime.fromisoformat(window["start"])

    wait_until(lambda: window_length() == timedelta(hours=2), 30, "the extended window")

    revoked = patch(
        stu, namespace, "paper", {"spec": {"revocation": {"reason": "paper submitted early"}}}
    )
    assert revoked.returncode == 0, revoked.stderr
    done = wait_state(stu, namespace, "paper", "Revoked")
    assert done["spec"]["revocation"]["revokedBy"] == "stu@lab.example"
    assert condition(done, "Revoked")["message"] == "paper submitted early"
    undo = stu.kubectl(
        "patch",
        "gpugrant",
        "paper",
        "-n",
        namespace,
        "--type=json",
        "-p",
        '[{"op": "remove", "path": "/spec/revocation"}]',
        check=False,
    )
    assert undo.returncode != 0 and "cannot be withdrawn" in undo.stderr

    admin = Kube(
        operator_env.cluster,
        operator_env.cluster.user_kubeconfig("it@lab.example", ("ds01:admins",)),
    )
    stu.create(grant_manifest(namespace, "greedy", "stu@lab.example", gpus={"count": 4}))
    wait_state(stu, namespace, "greedy", "Pending")
    assert (
        patch(
            admin,
            namespace,
            "greedy",
            {"spec": {"approval": {"decision": "Denied", "note": "four GPUs is too many"}}},
        ).returncode
        == 0
    )
    denied = wait_state(stu, namespace, "greedy", "Denied")
    assert (
        "denied by it@lab.example: four GPUs is too many"
        in condition(denied, "Approved")["message"]
    )
    assert any(
        e["reason"] == "Denied" and e["type"] == "Warning" for e in events(stu, namespace, "greedy")
    )


def test_policy_and_account_changes_recompute_pending_grants(operator_env: OperatorEnv) -> None:
    # A student of its own: students may request 3 grants a day (GPURateLimit/student).
    namespace, stu = make_account(operator_env, "stu2@lab.example", "student", "stu2")
    stu.create(grant_manifest(namespace, "waiting", "stu2@lab.example"))
    wait_state(stu, namespace, "waiting", "Pending")
    # A User limit on top of the student group: this user's requests are auto-approved.
    operator_env.admin.apply(
        {
            "apiVersion": "gpu.ds01.io/v1alpha1",
            "kind": "GPURateLimit",
            "metadata": {"name": "stu-override"},
            "spec": {
                "subjects": [{"kind": "User", "name": "stu2@lab.example"}],
                "grants": {"approval": "Auto"},
            },
        }
    )
    active = wait_state(stu, namespace, "waiting", "Active")
    assert (
        "auto-approved: inside GPURateLimit/stu-override"
        in condition(active, "Approved")["message"]
    )
    limit = operator_env.admin.get("gpuratelimit", "stu-override")
    wait_until(
        lambda: (
            operator_env.admin.get("gpuratelimit", "stu-override")
            .get("status", {})
            .get("matchedUsers")
            == 1
        ),
        30,
        "the override to count its user",
    )
    assert limit["spec"]["subjects"][0]["name"] == "stu2@lab.example"
    operator_env.admin.kubectl("delete", "gpuratelimit", "stu-override")

    # Moving the account to the researcher group (Auto) approves what was waiting.
    stu.create(grant_manifest(namespace, "after-move", "stu2@lab.example"))
    wait_state(stu, namespace, "after-move", "Pending")
    operator_env.admin.kubectl(
        "annotate", "namespace", namespace, "--overwrite", "gpu.ds01.io/groups=researcher"
    )
    wait_state(stu, namespace, "after-move", "Active")
    operator_env.admin.kubectl(
        "annotate", "namespace", namespace, "--overwrite", "gpu.ds01.io/groups=student"
    )


def test_same_priority_group_limits_report_a_conflict(
    operator_env: OperatorEnv, student: tuple[str, Kube]
) -> None:
    operator_env.admin.apply(
        {
            "apiVersion": "gpu.ds01.io/v1alpha1",
            "kind": "GPURateLimit",
            "metadata": {"name": "zz-course"},
            "spec": {
                "subjects": [{"kind": "Group", "name": "student"}],
                "priority": 10,
                "gpu": {"maxGPUEquivalents": 1},
            },
        }
    )

    def conflicted() -> bool:
        status = operator_env.admin.get("gpuratelimit", "student").get("status", {})
        return any(c["type"] == "PriorityConflict" for c in status.get("conditions", []))

    wait_until(conflicted, 30, "a PriorityConflict condition on GPURateLimit/student")
    message = condition(operator_env.admin.get("gpuratelimit", "student"), "PriorityConflict")[
        "message"
    ]
    assert "gpu.maxGPUEquivalents (with GPURateLimit/zz-course)" in message
    operator_env.admin.kubectl("delete", "gpuratelimit", "zz-course")
    wait_until(lambda: not conflicted(), 30, "the conflict to clear")


def test_exemption_expires_and_is_kept_as_a_record(operator_env: OperatorEnv) -> None:
    expires = (datetime.now(UTC) + timedelta(seconds=5)).isoformat()
    operator_env.admin.apply(
        {
            "apiVersion": "gpu.ds01.io/v1alpha1",
            "kind": "GPUExemption",
            "metadata": {"name": "short-waiver"},
            "spec": {
                "subject": {"kind": "User", "name": "stu@lab.example"},
                "exemptFrom": ["IdleTimeout"],
                "category": "Waiver",
                "reason": "demo day",
                "expiresAt": expires,
            },
        }
    )

    def state() -> str:
        return str(
            operator_env.admin.get("gpuexemption", "short-waiver").get("status", {}).get("state")
        )

    wait_until(lambda: state() == "Active", 30, "the exemption to be Active")
    wait_until(lambda: state() == "Expired", 30, "the exemption to expire")
    record = operator_env.admin.get("gpuexemption", "short-waiver")
    assert condition(record, "Expired")["status"] == "True"
    assert record["status"]["expiredAt"]
    kinds = [
        r["event_type"]
        for r in operator_env.audit_events()
        if r["details"].get("exemption") == "short-waiver"
    ]
    assert kinds == ["exemption.active", "exemption.expired"]


def test_host_grant_writes_the_node_spec_and_deletion_revokes(
    operator_env: OperatorEnv, researcher: tuple[str, Kube], gpu_node: str
) -> None:
    namespace, res = researcher
    res.create(
        grant_manifest(
            namespace, "host", "res@lab.example", access="Host", placement={"nodeName": gpu_node}
        )
    )
    active = wait_state(res, namespace, "host", "Active")
    device = active["status"]["allocations"][0]["devices"][0]["uuid"]
    assert active["metadata"]["finalizers"] == ["gpu.ds01.io/revocation"]

    def node() -> dict[str, Any]:
        return operator_env.admin.get("gpunode", gpu_node)

    wait_until(
        lambda: any(h["user"] == "res@lab.example" for h in node()["spec"].get("hostAccess", [])),
        30,
        "host access in the node's spec",
    )
    spec = node()["spec"]
    entry = next(h for h in spec["hostAccess"] if h["user"] == "res@lab.example")
    assert entry["linuxUser"] == "res" and entry["deviceUUIDs"] == [device]
    assert {"deviceUUID": device, "user": "res@lab.example"}.items() <= next(
        r for r in spec["reservations"] if r["deviceUUID"] == device
    ).items()
    generation = node()["metadata"]["generation"]

    res.kubectl("delete", "gpugrant", "host", "-n", namespace, "--wait=false")
    wait_until(
        lambda: (
            res.kubectl("get", "gpugrant", "host", "-n", namespace, check=False).returncode != 0
        ),
        30,
        "the grant to be deleted once revoked",
    )
    spec = node()["spec"]
    assert not any(h["user"] == "res@lab.example" for h in spec.get("hostAccess", []))
    revocation = next(r for r in spec["revocations"] if r["source"]["name"] == "host")
    assert revocation["user"] == "res@lab.example" and revocation["deviceUUIDs"] == [device]
    assert revocation["reason"] == "grant deleted"
    assert node()["metadata"]["generation"] > generation


def scrape(env: OperatorEnv) -> str:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{env.metrics_port}/metrics", timeout=5
    ) as response:
        return response.read().decode()


def test_metrics_are_served(operator_env: OperatorEnv) -> None:
    # The samples hold one grant waiting for an approver (neurips-deadline).
    wait_until(
        lambda: (
            re.search(r'ds01_grants\{state="Pending"\} [1-9]', scrape(operator_env)) is not None
        ),
        30,
        "the Pending grants gauge",
    )
    text = scrape(operator_env)
    assert "ds01_operator_reconciles_total" in text
    assert 'ds01_operator_api_writes_total{result="ok",what="gpugrant/status"}' in text


def test_usage_is_accounted_from_what_the_agent_reports(
    operator_env: OperatorEnv, researcher: tuple[str, Kube], gpu_node: str
) -> None:
    namespace, res = researcher
    res.create(
        grant_manifest(
            namespace,
            "measured",
            "res@lab.example",
            access="Host",
            placement={"nodeName": gpu_node},
        )
    )
    active = wait_state(res, namespace, "measured", "Active")
    device = active["status"]["allocations"][0]["devices"][0]["uuid"]
    usage = active["status"]["usage"]
    assert usage["gpuHoursGranted"] == 1.0 and usage["inUse"] == 0 and usage["reservedIdle"] == 1
    # The agent reports a process of the grant's owner on the reserved GPU.
    report_workloads(
        operator_env,
        gpu_node,
        [
            {
                "kind": "HostProcess",
                "name": "python train.py",
                "owner": "res@lab.example",
                "ownerSource": "ProcessUID",
                "devices": [device],
                "processes": [{"pid": 4242, "deviceUUID": device, "memoryUsedMiB": 1024}],
            }
        ],
    )

    def in_use() -> float:
        return float(grant(res, namespace, "measured")["status"]["usage"]["inUse"])

    wait_until(lambda: in_use() == 1.0, 30, "the grant to be charged for the reported use")
    assert grant(res, namespace, "measured")["status"]["usage"]["reservedIdle"] == 0
    with urllib.request.urlopen(
        f"http://127.0.0.1:{operator_env.metrics_port}/metrics", timeout=5
    ) as response:
        assert (
            'ds01_gpu_equivalents_in_use{subject="res@lab.example"} 1.0' in response.read().decode()
        )
    report_workloads(operator_env, gpu_node, [])
    wait_until(lambda: in_use() == 0.0, 30, "the charge to stop when the use stops")
    assert grant(res, namespace, "measured")["status"]["usage"]["gpuHoursUsed"] > 0
    res.kubectl("delete", "gpugrant", "measured", "-n", namespace)
