"""`kubectl ds01` as an approver, against the real operator: pending, approve, deny, extend, revoke.

Admission stamps who decided and refuses what the caller may not do; the
CLI passes those refusals on word for word with exit code 1.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from controller.devcluster.process import wait_until
from tests.controlplane.accounts import document
from tests.controlplane.cli import ds01, plugin
from tests.controlplane.conftest import OperatorEnv
from tests.controlplane.kube import Kube
from tests.controlplane.test_account_quota import user_limit
from tests.controlplane.test_operator import make_account

STUDENT = "cli-sam@lab.example"
APPROVER = "cli-prof@lab.example"
DEADLINE_S = 40


@pytest.fixture(scope="module")
def sam(operator_env: OperatorEnv) -> tuple[str, Kube]:
    namespace, kube = make_account(operator_env, STUDENT, "student")
    user_limit(operator_env, "cli-sam", STUDENT, rates={"grantRequestsPerDay": 20})
    wait_until(
        lambda: document(kube, namespace).get("rates", {}).get("grantRequestsPerDay") == "20",
        DEADLINE_S,
        "sam's published policy",
    )
    return namespace, kube


@pytest.fixture(scope="module")
def prof(operator_env: OperatorEnv) -> Kube:
    return Kube(
        operator_env.cluster, operator_env.cluster.user_kubeconfig(APPROVER, ("ds01:approvers",))
    )


def state(kube: Kube, namespace: str, name: str) -> str | None:
    return (kube.get("gpugrant", name, "-n", namespace).get("status") or {}).get("state")


def wait_state(kube: Kube, namespace: str, name: str, wanted: str) -> None:
    wait_until(lambda: state(kube, namespace, name) == wanted, DEADLINE_S, f"{name} {wanted}")


def ask(sam: tuple[str, Kube], name: str, *extra: str) -> None:
    namespace, kube = sam
    made = ds01(kube.kubeconfig, "request", "--reason", f"for {name}", "--name", name, *extra)
    assert made.code == 0, made.err
    wait_state(kube, namespace, name, "Pending")


def test_pending_lists_requests_oldest_first_with_their_age(
    sam: tuple[str, Kube], prof: Kube
) -> None:
    ask(sam, "cli-first", "--gpus", "1", "--mig", "1g.10gb", "--for", "2h")
    ask(sam, "cli-second", "--gpus", "1", "--mig", "2g.20gb", "--for", "3h")
    shown = ds01(prof.kubeconfig, "pending")
    assert shown.code == 0, shown.err
    mine = [line.split() for line in shown.lines if STUDENT in line]
    assert [row[2] for row in mine][:2] == ["cli-first", "cli-second"]
    assert mine[0][4:6] == ["1x1g.10gb", "2h"]
    assert shown.lines[0].split()[:3] == ["AGE", "NAMESPACE", "GRANT"]
    assert "GPURateLimit/student requires an approver for every grant" in shown.out
    headless = ds01(prof.kubeconfig, "pending", "--no-headers")
    assert not headless.lines[0].startswith("AGE")


def test_a_student_may_not_list_everyones_requests(sam: tuple[str, Kube]) -> None:
    refused = ds01(sam[1].kubeconfig, "pending")
    assert refused.code == 1
    assert "not allowed:" in refused.err and 'cannot list resource "gpugrants"' in refused.err


def test_approve_makes_the_grant_active_and_status_shows_it(
    operator_env: OperatorEnv, sam: tuple[str, Kube], prof: Kube
) -> None:
    namespace, kube = sam
    ask(sam, "cli-approve-me", "--gpus", "1", "--mig", "2g.20gb", "--for", "4h")
    done = plugin(
        operator_env.cluster, prof.kubeconfig, "approve", "cli-approve-me", "--note", "go ahead"
    )
    assert done.code == 0, done.err
    assert (
        done.out.strip() == f"gpugrant {namespace}/cli-approve-me ({STUDENT}, 1x2g.20gb) approved"
    )
    wait_state(kube, namespace, "cli-approve-me", "Active")
    approval = kube.get("gpugrant", "cli-approve-me", "-n", namespace)["spec"]["approval"]
    assert (approval["approvedBy"], approval["note"]) == (APPROVER, "go ahead")
    shown = ds01(prof.kubeconfig, "status", "--user", STUDENT, "-o", "wide")
    assert shown.code == 0, shown.err
    row = next(line for line in shown.lines if line.startswith("cli-approve-me"))
    assert "Active" in row and "active until" in row
    again = ds01(prof.kubeconfig, "approve", "cli-approve-me", "--note", "twice")
    assert again.code == 1 and "already approved by cli-prof@lab.example" in again.err


def test_deny_and_the_student_reads_why(sam: tuple[str, Kube], prof: Kube) -> None:
    namespace, kube = sam
    ask(sam, "cli-deny-me", "--gpus", "2", "--mig", "1g.10gb")
    assert (
        ds01(prof.kubeconfig, "deny", f"{namespace}/cli-deny-me", "--note", "one at a time").code
        == 0
    )
    wait_state(kube, namespace, "cli-deny-me", "Denied")
    why = ds01(kube.kubeconfig, "why", "cli-deny-me")
    assert why.code == 0
    assert f"was denied by {APPROVER}: one at a time" in why.out


def test_a_student_cannot_approve_and_admissions_words_come_back(sam: tuple[str, Kube]) -> None:
    namespace, kube = sam
    ask(sam, "cli-self", "--gpus", "1", "--mig", "1g.10gb")
    refused = ds01(kube.kubeconfig, "approve", "cli-self", "-n", namespace, "--note", "mine")
    assert refused.code == 1
    assert "spec.approval: only members of ds01:approvers" in refused.err


def test_extend_moves_the_end_and_revoke_ends_it(sam: tuple[str, Kube], prof: Kube) -> None:
    namespace, kube = sam
    ask(sam, "cli-extend-me", "--gpus", "1", "--mig", "1g.10gb", "--for", "2h")
    assert ds01(prof.kubeconfig, "approve", "cli-extend-me", "--note", "ok").code == 0
    wait_state(kube, namespace, "cli-extend-me", "Active")

    def end() -> datetime:
        found = kube.get("gpugrant", "cli-extend-me", "-n", namespace)["status"]["window"]["end"]
        return datetime.fromisoformat(found.replace("Z", "+00:00"))

    before = end()
    extended = ds01(
        prof.kubeconfig, "extend", "cli-extend-me", "--by", "24h", "--note", "deadline moved"
    )
    assert extended.code == 0, extended.err
    wait_until(lambda: end() == before + timedelta(hours=24), DEADLINE_S, "the later end")
    note = kube.get("gpugrant", "cli-extend-me", "-n", namespace)["metadata"]["annotations"]
    assert note["gpu.ds01.io/extension-note"].endswith(": deadline moved")
    by_student = ds01(kube.kubeconfig, "extend", "cli-extend-me", "-n", namespace, "--by", "24h")
    assert by_student.code == 1
    assert "only approvers may extend an approved GPUGrant" in by_student.err
    revoked = ds01(prof.kubeconfig, "revoke", "cli-extend-me", "--note", "finished early")
    assert revoked.code == 0, revoked.err
    wait_state(kube, namespace, "cli-extend-me", "Revoked")
    why = ds01(kube.kubeconfig, "why", "cli-extend-me")
    assert f"was revoked by {APPROVER}: finished early" in why.out


def test_approvers_see_every_account_in_one_table(sam: tuple[str, Kube], prof: Kube) -> None:
    shown = ds01(prof.kubeconfig, "status", "-A")
    assert shown.code == 0, shown.err
    assert shown.lines[0].split()[:2] == ["USER", "GROUPS"]
    row = next(line.split() for line in shown.lines if line.startswith(STUDENT))
    assert row[1] == "student"
    refused = ds01(sam[1].kubeconfig, "status", "-A")
    assert refused.code == 1 and "not allowed" in refused.err
