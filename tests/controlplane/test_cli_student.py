"""`kubectl ds01` as a student, against the real operator: status, request, why, who, usage.

The student is a fresh account in group `student` (the sample GPURateLimit:
2 GPU-equivalents, approval Required, 3 requests a day). The tests play the
node agent by writing GPUNode status, as the other operator tests do.
"""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller.cli.dev import add_simulated_node
from controller.devcluster import simnode
from controller.devcluster.process import wait_until
from controller.policy import usagehistory as uh
from tests.controlplane.accounts import create_pod, document, pod
from tests.controlplane.cli import Result, ds01, plugin
from tests.controlplane.conftest import OperatorEnv
from tests.controlplane.kube import Kube
from tests.controlplane.test_account_quota import user_limit
from tests.controlplane.test_operator import make_account

USER = "cli-kim@lab.example"
NODE = "cli-node"
DEADLINE_S = 40
DEVICES = [d["uuid"] for d in simnode.inventory(NODE) if not d.get("migInstances")]


@pytest.fixture(scope="module")
def node(operator_env: OperatorEnv) -> str:
    add_simulated_node(operator_env.cluster, NODE)
    return NODE


@pytest.fixture(scope="module")
def kim(operator_env: OperatorEnv, node: str) -> tuple[str, Kube]:
    """The student's account, once the operator has published its policy."""
    namespace, kube = make_account(operator_env, USER, "student", linux_user="clikim")
    # More requests a day than the group's 3, so each test may ask (the rate has its own test).
    user_limit(operator_env, "cli-kim", USER, rates={"grantRequestsPerDay": 20})
    wait_until(
        lambda: (
            document(kube, namespace)
            .get("limits", {})
            .get("rates.grantRequestsPerDay", {})
            .get("value")
            == 20
        ),
        DEADLINE_S,
        "kim's published policy",
    )
    return namespace, kube


def play_agent(env: OperatorEnv, workloads: list[dict[str, Any]]) -> None:
    report = simnode.status(NODE)
    for device in report["status"]["devices"]:
        device["utilizationPercent"] = 0
    report["status"]["workloads"] = workloads
    env.admin.kubectl(
        "patch", "gpunode", NODE, "--subresource=status", "--type=merge", "-p", json.dumps(report)
    )


def workload(name: str, namespace: str, device: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "name": name,
        "namespace": namespace,
        "owner": USER,
        "ownerSource": "Namespace",
        "devices": [device],
        "allocated": [device],
        "processes": [{"pid": 4242, "deviceUUID": device}],
        "startedAt": datetime.now(UTC).isoformat(),
    }


def grant_state(kube: Kube, namespace: str, name: str) -> str | None:
    found = kube.get("gpugrant", name, "-n", namespace)
    return (found.get("status") or {}).get("state")


def wait_state(kube: Kube, namespace: str, name: str, state: str) -> None:
    wait_until(lambda: grant_state(kube, namespace, name) == state, DEADLINE_S, f"{name} {state}")


def test_kubectl_runs_the_plugin_and_status_names_each_limits_source(
    operator_env: OperatorEnv, kim: tuple[str, Kube]
) -> None:
    _, kube = kim
    shown = plugin(operator_env.cluster, kube.kubeconfig, "status")
    assert shown.code == 0, shown.err
    assert f"User:     {USER}  groups: student  namespace: u-cli-kim" in shown.out
    assert "0 of 2 GPU-equivalents in use, 2 left (base 2 from GPURateLimit/student" in shown.out
    assert "of 200 GPU-hours used in the last 168h" in shown.out
    limits = {
        line.split()[0]: line.split()[-1]
        for line in shown.lines
        if line.startswith(("grants.", "rates."))
    }
    assert limits["grants.approval"] == "GPURateLimit/student"
    assert limits["rates.grantRequestsPerDay"] == "GPURateLimit/cli-kim"


def test_status_as_json_carries_the_published_figures(kim: tuple[str, Kube]) -> None:
    _, kube = kim
    shown = ds01(kube.kubeconfig, "status", "-o", "json")
    assert shown.code == 0, shown.err
    data = json.loads(shown.out)
    assert data["user"] == USER
    assert data["allowance"]["total"] == "2"
    assert data["limits"]["grants.approval"] == {
        "value": "Required",
        "source": "GPURateLimit/student",
    }
    assert data["budget"]["gpuHours"] == 200


def test_a_table_fits_the_terminal_it_is_given(
    operator_env: OperatorEnv, kim: tuple[str, Kube]
) -> None:
    _, kube = kim
    shown = plugin(operator_env.cluster, kube.kubeconfig, "status", columns=50)
    assert shown.code == 0, shown.err
    table = [
        line for line in shown.lines if line.startswith(("LIMIT", "gpu.", "grants.", "rates."))
    ]
    assert table and max(len(line) for line in table) <= 50
    assert any(line.endswith("…") for line in table)


def test_request_refuses_locally_in_the_operators_words(kim: tuple[str, Kube]) -> None:
    namespace, kube = kim
    refused = ds01(
        kube.kubeconfig,
        "request",
        "--gpus",
        "1",
        "--mig",
        "7g.80gb",
        "--reason",
        "x",
        "--name",
        "cli-too-big",
    )
    assert refused.code == 1
    assert refused.out.startswith("refused (Invalid): spec.gpus.migProfile: 7g.80gb is not allowed")
    assert (
        kube.kubectl("get", "gpugrant", "cli-too-big", "-n", namespace, check=False).returncode != 0
    )
    # The operator, given the same request, says the same.
    kube.create(
        {
            "apiVersion": "gpu.ds01.io/v1alpha1",
            "kind": "GPUGrant",
            "metadata": {"name": "cli-too-big", "namespace": namespace},
            "spec": {
                "subject": {"kind": "User", "name": USER},
                "gpus": {"count": 1, "migProfile": "7g.80gb"},
                "duration": "24h",
                "reason": "x",
            },
        }
    )
    wait_state(kube, namespace, "cli-too-big", "Invalid")
    status = kube.get("gpugrant", "cli-too-big", "-n", namespace)["status"]
    said = next(c["message"] for c in status["conditions"] if c["type"] == "Approved")
    assert refused.out.strip() == f"refused (Invalid): {said}"
    why = ds01(kube.kubeconfig, "why", "cli-too-big")
    assert why.code == 0 and "cannot be granted" in why.out and said in why.out


def test_a_request_waits_for_an_approver_and_why_says_so(kim: tuple[str, Kube]) -> None:
    namespace, kube = kim
    made = ds01(
        kube.kubeconfig,
        "request",
        "--gpus",
        "2",
        "--mig",
        "2g.20gb",
        "--for",
        "48h",
        "--reason",
        "paper",
        "--name",
        "cli-paper",
    )
    assert made.code == 0, made.err
    assert (
        "created in u-cli-kim: it will wait for an approver: GPURateLimit/student requires"
        in made.out
    )
    wait_state(kube, namespace, "cli-paper", "Pending")
    why = plugin_why(kube, "cli-paper")
    assert why.code == 0
    assert "GPUGrant cli-paper (2 x 2g.20gb, 48h) was requested" in why.out
    assert (
        "waiting for an approver: GPURateLimit/student requires an approver for every grant"
        in why.out
    )
    assert "kubectl ds01 pending" in why.out


def plugin_why(kube: Kube, name: str) -> Result:
    return ds01(kube.kubeconfig, "why", name)


def test_waiting_for_a_decision_times_out_with_code_4(kim: tuple[str, Kube]) -> None:
    waited = ds01(
        kim[1].kubeconfig,
        "request",
        "--gpus",
        "1",
        "--mig",
        "1g.10gb",
        "--reason",
        "x",
        "--name",
        "cli-wait",
        "--wait",
        "--timeout",
        "2s",
    )
    assert waited.code == 4
    assert "still Pending after 2s: waiting for an approver" in waited.out


def test_the_daily_request_rate_is_refused_before_asking(operator_env: OperatorEnv) -> None:
    user = "cli-rate@lab.example"
    namespace, kube = make_account(operator_env, user, "student")
    user_limit(operator_env, "cli-rate", user, rates={"grantRequestsPerDay": 1})
    wait_until(
        lambda: document(kube, namespace).get("rates", {}).get("grantRequestsPerDay") == "1",
        DEADLINE_S,
        "the rate in the published policy",
    )
    assert ds01(kube.kubeconfig, "request", "--reason", "first").code == 0
    second = ds01(kube.kubeconfig, "request", "--reason", "second")
    assert second.code == 1
    assert second.out.strip() == (
        "refused (Denied): this is request 2 within 24 hours; GPURateLimit/cli-rate allows 1 per day"
    )


def test_who_shows_the_holder_of_each_device(
    operator_env: OperatorEnv, kim: tuple[str, Kube]
) -> None:
    namespace, kube = kim
    play_agent(operator_env, [workload("trainer", namespace, DEVICES[0])])
    shown = ds01(kube.kubeconfig, "who", "--node", NODE)
    assert shown.code == 0, shown.err
    holder = [line for line in shown.lines if USER in line]
    assert len(holder) == 1
    assert holder[0].split()[:2] == [NODE, "2"] and "trainer" in holder[0]
    data = json.loads(ds01(kube.kubeconfig, "who", "--node", NODE, "-o", "json").out)
    assert sum(1 for row in data if row["USER"] == USER) == 1
    slots = sum(len(d.get("migInstances", [])) or 1 for d in simnode.inventory(NODE))
    assert len(data) == slots  # every whole GPU and every MIG slice, held or not
    play_agent(operator_env, [])


def history(kube: Kube, namespace: str) -> uh.MonthRecord | None:
    found = kube.core.list_namespaced_config_map(
        namespace, label_selector=f"gpu.ds01.io/component={uh.COMPONENT}"
    )
    records = [uh.decode(c.data) for c in found.items]
    return max((r for r in records if r), key=lambda r: r.month, default=None)


def test_usage_history_survives_an_operator_restart_and_reports_gpu_hours(
    operator_env: OperatorEnv, kim: tuple[str, Kube]
) -> None:
    namespace, kube = kim
    play_agent(operator_env, [workload("trainer", namespace, DEVICES[1])])
    wait_until(
        lambda: (r := history(kube, namespace)) is not None and NODE in r.rates,
        DEADLINE_S,
        "the use in the history's rates",
    )
    operator_env.kill()
    killed = time.monotonic()
    wait_until(lambda: time.monotonic() - killed >= 3, 10, "some time without an operator")
    operator_env.start()
    away = time.monotonic() - killed
    play_agent(operator_env, [])
    wait_until(
        lambda: (r := history(kube, namespace)) is not None and NODE not in r.rates,
        DEADLINE_S,
        "the end of use in the history",
    )
    record = history(kube, namespace)
    assert record is not None
    used = sum(f.used for (_, node), f in record.hours.items() if node == NODE)
    # The stored rate covered the time the operator was away.
    assert used * 3600 >= away - 1
    shown = ds01(kube.kubeconfig, "usage", "--since", "1d", "-o", "csv")
    assert shown.code == 0, shown.err
    rows = list(csv.DictReader(io.StringIO(shown.out)))
    assert [r["USER"] for r in rows] == [USER]
    assert rows[0]["GROUPS"] == "student"
    assert float(rows[0]["USED GPU-H"]) >= used - 0.0001
    table = ds01(kube.kubeconfig, "usage", "--by", "node")
    assert table.code == 0 and any(line.startswith(NODE) for line in table.lines)


def test_why_an_idle_gpu_pod_says_when_it_will_be_stopped(
    operator_env: OperatorEnv, kim: tuple[str, Kube]
) -> None:
    namespace, kube = kim
    user_limit(
        operator_env,
        "cli-kim",
        USER,
        rates={"grantRequestsPerDay": 20},
        lifecycle={"startupGrace": "0s", "idleTimeout": "2h", "idle": {"consecutiveChecks": 1}},
    )
    create_pod(kube, namespace, pod("notebook", {"gpu.ds01.io/gpu": 1}))
    play_agent(operator_env, [workload("notebook", namespace, DEVICES[2])])

    def idle_since() -> str | None:
        found = kube.core.read_namespaced_pod("notebook", namespace).metadata.annotations or {}
        return found.get("gpu.ds01.io/idle-since")

    wait_until(lambda: idle_since() is not None, DEADLINE_S, "the pod's idle clock")
    why = ds01(kube.kubeconfig, "why", "notebook")
    assert why.code == 0, why.err
    assert "Pod notebook holds 1 x gpu.ds01.io/gpu" in why.out
    assert "It has been idle since" in why.out
    assert "lifecycle.idleTimeout 2h from GPURateLimit/cli-kim" in why.out
    assert "gpu.ds01.io/keep-alive" in why.out
    play_agent(operator_env, [])


def test_nothing_of_that_name_is_exit_code_1(kim: tuple[str, Kube]) -> None:
    missing = ds01(kim[1].kubeconfig, "why", "no-such-thing")
    assert missing.code == 1
    assert "nothing named 'no-such-thing' in u-cli-kim" in missing.err


def test_usage_errors_exit_2_and_an_unreachable_cluster_exits_3(
    tmp_path: Path, kim: tuple[str, Kube]
) -> None:
    assert ds01(kim[1].kubeconfig, "request", "--gpus", "1").code == 2  # no --reason
    assert ds01(kim[1].kubeconfig, "usage", "--since", "last tuesday").code == 2
    text = kim[1].kubeconfig.read_text()
    server = next(
        line.split("server:")[1].strip() for line in text.splitlines() if "server:" in line
    )
    closed = tmp_path / "closed.kubeconfig"
    closed.write_text(text.replace(server, "https://127.0.0.1:9"))
    unreachable = ds01(closed, "status", "-n", "u-cli-kim")
    assert unreachable.code == 3
    assert "cannot reach the cluster" in unreachable.err
    assert ds01(tmp_path / "missing.kubeconfig", "status").code == 3


def test_a_reaped_idle_pods_idle_time_reaches_the_usage_report(
    operator_env: OperatorEnv, node: str
) -> None:
    user = "cli-reap@lab.example"
    namespace, kube = make_account(operator_env, user, "student")
    user_limit(
        operator_env,
        "cli-reap",
        user,
        lifecycle={"startupGrace": "0s", "idleTimeout": "2s", "idle": {"consecutiveChecks": 1}},
    )
    wait_until(
        lambda: (
            document(kube, namespace)
            .get("limits", {})
            .get("lifecycle.idleTimeout", {})
            .get("value")
            == "2s"
        ),
        DEADLINE_S,
        "the short idle timeout in the published policy",
    )
    create_pod(kube, namespace, pod("idler", {"gpu.ds01.io/gpu": 1}))
    play_agent(operator_env, [{**workload("idler", namespace, DEVICES[3]), "owner": user}])

    def reaped() -> float:
        record = history(kube, namespace)
        return sum(f.reaped for f in record.hours.values()) if record else 0.0

    wait_until(lambda: reaped() > 0, DEADLINE_S, "the reaped idle time in the history")
    play_agent(operator_env, [])
    shown = ds01(kube.kubeconfig, "usage", "--since", "1d", "-o", "csv")
    rows = list(csv.DictReader(io.StringIO(shown.out)))
    assert [r["USER"] for r in rows] == [user]
    # At least the idle timeout passed between the idle clock's start and the stop.
    assert float(rows[0]["REAPED IDLE GPU-H"]) * 3600 >= 2 - 0.5


def test_a_user_can_neither_forge_nor_delete_their_usage_history(
    operator_env: OperatorEnv, node: str
) -> None:
    user = "cli-forge@lab.example"
    namespace, kube = make_account(operator_env, user, "student")
    month = uh.month_of(datetime.now(UTC))
    forged = uh.MonthRecord(user, month, ("student",), {(0, NODE): uh.Figures(granted=500)})
    body = {"metadata": {"name": uh.object_name(month)}, "data": uh.encode(forged)}
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            **body,
            "metadata": {**body["metadata"], "namespace": namespace},
        }
    )
    # Not labelled as the operator's (admission refuses that label to users): not read.
    shown = ds01(kube.kubeconfig, "usage", "--since", "1d")
    assert shown.code == 0 and "No GPU use recorded in this period." in shown.out
    labelled = {
        **body,
        "metadata": {
            **body["metadata"],
            "name": "ds01-usage-1999-01",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "ds01-operator"},
        },
    }
    refused = kube.create({"apiVersion": "v1", "kind": "ConfigMap", **labelled}, check=False)
    assert refused.returncode != 0 and "is written by the ds01 operator only" in refused.stderr
    play_agent(operator_env, [{**workload("forger", namespace, DEVICES[4]), "owner": user}])
    wait_until(
        lambda: (r := history(kube, namespace)) is not None and NODE in r.rates,
        DEADLINE_S,
        "the operator's record over the forged one",
    )
    record = history(kube, namespace)
    assert record is not None and sum(f.granted for f in record.hours.values()) == 0
    deleted = kube.kubectl(
        "delete", "configmap", uh.object_name(month), "-n", namespace, check=False
    )
    assert deleted.returncode != 0 and "is written by the ds01 operator only" in deleted.stderr
    play_agent(operator_env, [])
