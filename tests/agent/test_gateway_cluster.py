"""The gateway with the apiserver in the loop: Events, and what it does when the apiserver is away.

The agent reads accounts (account namespaces) and GPURateLimits from a real
kube-apiserver, with a token bound to a pod on its node, and posts its Events
on its GPUNode. Every refusal and allocation is an Event and an audit record.
With the apiserver stopped the gateway decides from the last policy it read
(fail open for users), also after the agent restarts: accounts and limits
come from its saved copy, ownership and held GPUs from the signed labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import config

from controller.agent.trust import verify
from controller.devcluster.controlplane import LocalCluster
from controller.devcluster.process import wait_until
from tests.agent.enforcehost import KEY
from tests.agent.engine import DockerEngine
from tests.agent.fakehost import FakeHost
from tests.agent.gatewayhost import ACCOUNTS, AMY, BEN, IMAGE, GatewayHost, restart, serve
from tests.controlplane.kube import Kube, agent_kubeconfig

NODE = "gpu-gateway"
RUN = ("run", "-d", "--network", "none")
MI = 2**20


@pytest.fixture(scope="module")
def admin(admin: Kube) -> Kube:
    """The tier's admin, with amy's and ben's accounts and a limit for amy."""
    kube = admin
    for login in (AMY, BEN):
        kube.account(login, "student", ACCOUNTS[login])
    kube.apply(
        {
            "apiVersion": "gpu.ds01.io/v1alpha1",
            "kind": "GPURateLimit",
            "metadata": {"name": "amy-small"},
            "spec": {
                "subjects": [{"kind": "User", "name": ACCOUNTS[AMY]}],
                "resources": {"perWorkload": {"memory": {"default": "300Mi"}}},
                "rates": {"maxWorkloads": 5},
            },
        }
    )
    return kube


@pytest.fixture
def online(
    cluster: LocalCluster,
    admin: Kube,
    fake_host: FakeHost,
    docker_engine: DockerEngine,
    tmp_path: Path,
) -> Iterator[GatewayHost]:
    kubeconfig = agent_kubeconfig(cluster, admin, NODE)
    api = config.new_client_from_config(config_file=str(kubeconfig))
    with serve(fake_host, docker_engine, tmp_path, api=api, node=NODE) as host:
        host.refresh()
        yield host


def _events(admin: Kube) -> list[dict[str, Any]]:
    items = admin.get("events", "-n", "default")["items"]
    return [e for e in items if e["involvedObject"].get("name") == NODE]


def _owner(gateway: GatewayHost, container: str) -> str | None:
    data = gateway.inspect(container)
    stamp = verify(KEY, data["Name"].lstrip("/"), data["Config"]["Labels"])
    return stamp.owner if stamp is not None else None


def test_refusals_and_allocations_are_events_and_audit_records(
    online: GatewayHost, admin: Kube
) -> None:
    gpu = online.ok(AMY, *RUN, "--gpus", "1", IMAGE, "sleep", "600")
    assert online.inspect(gpu)["HostConfig"]["Memory"] == 300 * MI  # her GPURateLimit
    online.refused(AMY, *RUN, "--privileged", IMAGE, "true")
    online.refused(BEN, "stop", gpu)

    def posted() -> bool:
        reasons = {e["reason"] for e in _events(admin)}
        return {"Allocate", "Refused", "Denied"} <= reasons

    wait_until(posted, 30, "the gateway's Events on the GPUNode")
    by_reason = {e["reason"]: e for e in _events(admin)}
    assert ACCOUNTS[AMY] in by_reason["Allocate"]["message"]
    assert by_reason["Allocate"]["type"] == "Normal"
    assert "--privileged" in by_reason["Refused"]["message"]
    assert by_reason["Refused"]["type"] == "Warning"
    assert ACCOUNTS[BEN] in by_reason["Denied"]["message"]
    assert {r["event_type"] for r in online.audit_records()} >= {
        "gpu.allocate",
        "container.refused",
        "auth.denied",
    }


def test_with_the_apiserver_away_the_last_policy_decides_also_after_a_restart(
    cluster: LocalCluster, online: GatewayHost
) -> None:
    gpu = online.ok(AMY, *RUN, "--gpus", "1", IMAGE, "sleep", "600")
    cluster.stop_apiserver()
    try:
        online.refresh()  # fails, and keeps the last view
        plain = online.ok(AMY, *RUN, IMAGE, "sleep", "600")
        assert _owner(online, plain) == ACCOUNTS[AMY]
        assert online.inspect(plain)["HostConfig"]["Memory"] == 300 * MI
        assert "--privileged" in online.refused(AMY, *RUN, "--privileged", IMAGE, "true")
        assert [r["details"]["option"] for r in online.audit_records("container.refused")] == [
            "--privileged"
        ]  # the audit record is written though the Event cannot be posted

        restart(online, online.kube)  # the supervisor restarts the agent; the apiserver is away
        online.refresh()
        again = online.ok(AMY, *RUN, IMAGE, "sleep", "600")
        assert _owner(online, again) == ACCOUNTS[AMY]  # her account, from the saved copy
        assert online.inspect(again)["HostConfig"]["Memory"] == 300 * MI  # and her limits
        mine = online.ok(AMY, "ps", "-q", "--no-trunc").split()
        assert set(mine) == {gpu, plain, again}  # ownership from the signed labels
        error = online.refused(AMY, *RUN, "--gpus", "1", IMAGE, "true")
        assert "you hold 1 of your 1 GPU-equivalents" in error  # her GPU is still hers
        assert "not yours" in online.refused(BEN, "rm", "-f", gpu)
    finally:
        cluster.start_apiserver()
