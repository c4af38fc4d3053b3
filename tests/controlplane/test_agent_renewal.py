"""Renewing a Docker-host agent's certificate: the guide's commands, the operator's approvals.

The install guide's steps (docs/docker-host.md, "Credentials") run here as
written, as subprocesses of `ds01`, against the real apiserver and signer.
Renewal makes a new key, asks with the current certificate and swaps the
kubeconfig whole; the operator approves renewals and nothing else, and the
admission policy `ds01-agent-renewals` holds it to that even if its own
check failed. The agent takes renewed credentials without a restart.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from controller.agent.credentials import CredentialReloader
from controller.devcluster.binaries import source_root
from controller.devcluster.controlplane import LocalCluster
from controller.devcluster.process import wait_until
from controller.operator import agentrenewals
from controller.policy.agentidentity import agent_user
from controller.runtime import agentenrollment as enrollment
from controller.runtime.agentcredentials import (
    AgentCredentials,
    PendingRequest,
    new_request,
    write_private,
)
from tests.controlplane.conftest import OperatorEnv
from tests.controlplane.kube import Kube

SHORT = timedelta(seconds=600)  # Kubernetes' shortest certificate


@pytest.fixture(scope="module")
def admin_api(cluster: LocalCluster) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield api
    api.close()


@pytest.fixture(scope="module")
def operator_api(cluster: LocalCluster) -> Iterator[client.ApiClient]:
    """The operator's own ServiceAccount: its RBAC and admission, for real."""
    kubeconfig = cluster.service_account_kubeconfig("ds01-system", "ds01-operator")
    api = config.new_client_from_config(config_file=str(kubeconfig))
    yield api
    api.close()


def ds01(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli.main", *args],
        cwd=source_root(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def csr(api: client.ApiClient, name: str) -> dict[str, object]:
    body = client.CertificatesV1Api(api).read_certificate_signing_request(name)
    return api.sanitize_for_serialization(body)  # type: ignore[no-any-return]


def test_the_guides_steps_enrol_check_and_renew(cluster: LocalCluster, admin: Kube) -> None:
    out = cluster.workdir / "guide" / "agent.kubeconfig"
    node = "guide-node"
    enrolled = ds01(
        "agent", "enroll", f"--node={node}", f"--kubeconfig={cluster.kubeconfig}",
        f"--out={out}", "--approve",
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr
    assert f"wrote {out}: {agent_user(node)} (group ds01:agents)" in enrolled.stdout
    who = cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=out).stdout
    assert json.loads(who)["status"]["userInfo"]["username"] == agent_user(node)

    checked = ds01("agent", "credentials", f"--kubeconfig={out}")
    assert checked.returncode == 0 and "nothing to do" in checked.stdout, checked.stderr
    assert "renewed from" in checked.stdout

    # No operator runs here: a renewal waits for an admin, says so, exits 3.
    before = AgentCredentials.read(out)
    waiting = ds01("agent", "credentials", f"--kubeconfig={out}", "--force", "--wait=0s")
    assert waiting.returncode == 3, waiting.stderr
    name = waiting.stdout.split("renewal request ", 1)[1].split()[0]
    assert f"kubectl certificate approve {name}" in waiting.stderr
    assert "The current certificate stays in use meanwhile" in waiting.stderr
    assert AgentCredentials.read(out) == before
    admin.kubectl("certificate", "approve", name)
    collected = ds01("agent", "credentials", f"--kubeconfig={out}")  # the timer's next run
    assert collected.returncode == 0 and "renewed" in collected.stdout, collected.stderr
    assert AgentCredentials.read(out).cert_pem != before.cert_pem

    refused = ds01("agent", "enroll", "--node=Bad_Name", f"--kubeconfig={cluster.kubeconfig}")
    assert refused.returncode == 1 and "node: 'Bad_Name' is not a GPUNode name" in refused.stderr


def test_renewal_swaps_in_a_new_key_only_once_due(
    cluster: LocalCluster, admin_api: client.ApiClient, operator_api: client.ApiClient
) -> None:
    out = cluster.workdir / "renewal" / "agent.kubeconfig"
    enrollment.enroll(admin_api, "renew-node", out, validity=SHORT, approve_it=True, wait_s=60)
    first = AgentCredentials.read(out)
    life = first.not_after - first.not_before
    assert life <= SHORT + timedelta(minutes=6)  # expirationSeconds honoured (5 min backdated)
    inode = out.stat().st_ino

    # A fake clock halfway through: not due, nothing submitted, nothing written.
    halfway = enrollment.renew(out, validity=SHORT, now=first.not_before + life / 2)
    assert not halfway.renewed and halfway.renewal.state == "valid"
    assert out.stat().st_ino == inode

    # At 70 %: due. The operator's rule approves it as the request arrives.
    approved: list[bool] = []

    def operator_decides(name: str) -> None:
        approved.append(agentrenewals.consider(operator_api, csr(operator_api, name), None))

    due = enrollment.renew(
        out, validity=SHORT, now=first.not_before + life * 0.7, submitted=operator_decides
    )
    assert approved == [True] and due.renewed
    second = AgentCredentials.read(out)
    assert second.user == first.user == agent_user("renew-node")
    assert second.key_pem != first.key_pem  # a new key, not the old one re-signed
    assert second.certificate.serial_number != first.certificate.serial_number
    assert second.not_after >= first.not_after
    assert out.stat().st_ino != inode and out.stat().st_mode & 0o777 == 0o600  # replaced whole
    assert not PendingRequest.path_for(out).exists()
    assert cluster.kubectl("auth", "whoami", kubeconfig=out).returncode == 0


def test_the_operator_approves_renewals_and_nothing_else(
    cluster: LocalCluster, admin_api: client.ApiClient, operator_api: client.ApiClient
) -> None:
    out = cluster.workdir / "renewal" / "other.kubeconfig"
    enrollment.enroll(admin_api, "rule-node", out, approve_it=True, wait_s=60)
    agent_api = enrollment.agent_client(AgentCredentials.read(out))
    # The agent asks for another node's identity: left pending, for an admin.
    _, foreign = new_request("rule-other")
    sideways = enrollment.submit(agent_api, "rule-other", foreign)
    assert not agentrenewals.consider(operator_api, csr(operator_api, sideways), None)
    # An admin's request shaped like a renewal: not the operator's to approve.
    _, shaped = new_request("rule-node")
    by_admin = enrollment.submit(admin_api, "rule-node", shaped)
    assert not agentrenewals.consider(operator_api, csr(operator_api, by_admin), None)
    assert {enrollment.outcome(admin_api, n).state for n in (sideways, by_admin)} == {"pending"}
    # Even if the operator's check were wrong, admission refuses it the approval.
    with pytest.raises(ApiException) as refused:
        enrollment.approve(operator_api, by_admin, "Forced", "bypassing the operator's rule")
    assert refused.value.status == 403 and "ds01-agent-renewals" in str(refused.value.body)
    # And it may not deny what it does not approve.
    body = client.CertificatesV1Api(operator_api).read_certificate_signing_request(sideways)
    body.status = client.V1CertificateSigningRequestStatus(
        conditions=[
            client.V1CertificateSigningRequestCondition(
                type="Denied", status="True", reason="X", message="the operator denies"
            )
        ]
    )
    with pytest.raises(ApiException) as deny:
        client.CertificatesV1Api(operator_api).replace_certificate_signing_request_approval(
            sideways, body
        )
    assert deny.value.status == 403 and "ds01-agent-renewals" in str(deny.value.body)
    agent_api.close()


def test_the_agent_uses_renewed_credentials_without_a_restart(
    cluster: LocalCluster, admin_api: client.ApiClient
) -> None:
    """Swapped for another node's, so that which file answers is visible in what is allowed."""
    first = cluster.workdir / "reload" / "first.kubeconfig"
    other = cluster.workdir / "reload" / "other.kubeconfig"
    enrollment.enroll(admin_api, "reload-a", first, approve_it=True, wait_s=60)
    enrollment.enroll(admin_api, "reload-b", other, approve_it=True, wait_s=60)
    live = cluster.workdir / "reload" / "agent.kubeconfig"
    write_private(live, first.read_bytes())
    api = config.new_client_from_config(config_file=str(live))
    reloader = CredentialReloader(api, live)
    review = client.AuthenticationV1Api(api)

    def user() -> str:
        answer = review.create_self_subject_review(client.V1SelfSubjectReview())
        assert answer.status is not None and answer.status.user_info is not None
        return str(answer.status.user_info.username)

    assert user() == agent_user("reload-a")
    assert not reloader.check()  # unchanged: nothing to do
    write_private(live, other.read_bytes())
    assert reloader.check()
    assert user() == agent_user("reload-b")
    live.write_text("not yaml: [")  # a broken file keeps what works
    assert not reloader.check()
    assert user() == agent_user("reload-b")
    api.close()


def test_the_running_operator_approves_an_agents_renewal(operator_env: OperatorEnv) -> None:
    cluster = operator_env.cluster
    out = cluster.workdir / "host-agents" / "operated.kubeconfig"
    admin_api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    enrollment.enroll(admin_api, "operated-node", out, approve_it=True, wait_s=60)
    admin_api.close()
    before = AgentCredentials.read(out)
    renewed = enrollment.renew(out, force=True, wait_s=60)
    assert renewed.renewed and AgentCredentials.read(out).key_pem != before.key_pem

    def recorded() -> bool:
        return any(
            e["event_type"] == "agent.certificate.renewal-approved"
            and e["user"] == agent_user("operated-node")
            for e in operator_env.audit_events()
        )

    wait_until(recorded, 30, "the operator's audit record of the approval")
