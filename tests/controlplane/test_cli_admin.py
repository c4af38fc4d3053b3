"""`kubectl ds01` as an admin: onboard, import ds01, usage across accounts, audit.

Its own control plane (CRDs, RBAC and admission, no operator): what these
commands do is write and read objects, and importing DS01's groups must not
change the limits other test modules rely on.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from controller.cli.dev import install
from controller.devcluster.controlplane import LocalCluster
from controller.policy import usagehistory as uh
from controller.runtime.audit import AuditLog
from tests.controlplane.cli import ds01, plugin
from tests.controlplane.kube import Kube

ADMIN = "cli-it@lab.example"
DS01_FILE = Path(__file__).resolve().parents[1] / "unit" / "data" / "ds01-resource-limits.yaml"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cli-admin")) as started:
        install(started, samples=False)
        yield started


@pytest.fixture(scope="module")
def admin(lab: LocalCluster) -> Kube:
    return Kube(lab, lab.user_kubeconfig(ADMIN, ("ds01:admins",)))


def test_onboard_makes_an_account_the_user_can_work_in_and_is_idempotent(
    lab: LocalCluster, admin: Kube
) -> None:
    first = plugin(
        lab,
        admin.kubeconfig,
        "onboard",
        "ada@lab.example",
        "--groups",
        "student,ta",
        "--linux-user",
        "ada",
    )
    assert first.code == 0, first.err
    assert first.lines == [
        "namespace/u-ada created",
        "rolebinding/u-ada/ds01-account-owner created",
    ]
    ns = admin.get("namespace", "u-ada")["metadata"]
    assert ns["labels"]["gpu.ds01.io/user"] == "ada-lab.example"
    assert ns["annotations"]["gpu.ds01.io/user-name"] == "ada@lab.example"
    assert ns["annotations"]["gpu.ds01.io/groups"] == "student,ta"
    assert ns["annotations"]["gpu.ds01.io/linux-user"] == "ada"
    ada = Kube(lab, lab.user_kubeconfig("ada@lab.example"))
    assert (
        ada.kubectl("auth", "can-i", "create", "gpugrants", "-n", "u-ada").stdout.strip() == "yes"
    )
    again = ds01(admin.kubeconfig, "onboard", "ada@lab.example", "--groups", "student,ta")
    assert again.lines == [
        "namespace/u-ada unchanged",
        "rolebinding/u-ada/ds01-account-owner unchanged",
    ]
    moved = ds01(admin.kubeconfig, "onboard", "ada@lab.example", "--groups", "researcher")
    assert moved.lines[0] == "namespace/u-ada configured"
    assert (
        admin.get("namespace", "u-ada")["metadata"]["annotations"]["gpu.ds01.io/groups"]
        == "researcher"
    )


def test_onboard_names_the_flag_at_fault_and_refuses_non_admins(
    lab: LocalCluster, admin: Kube
) -> None:
    bad = ds01(
        admin.kubeconfig,
        "onboard",
        "bo@lab.example",
        "--groups",
        "student",
        "--linux-user",
        "Bo Smith",
    )
    assert bad.code == 2
    assert bad.err.startswith("ds01: --linux-user:")
    student = Kube(lab, lab.user_kubeconfig("eve@lab.example", ("student",)))
    refused = ds01(student.kubeconfig, "onboard", "eve@lab.example", "--groups", "admin")
    assert refused.code == 1 and "not allowed" in refused.err


def limits(admin: Kube) -> dict[str, dict]:  # type: ignore[type-arg]
    found = admin.get("gpuratelimits")["items"]
    return {item["metadata"]["name"]: item["spec"] for item in found}


def test_import_ds01_shows_the_diff_and_changes_nothing_by_default(admin: Kube) -> None:
    shown = ds01(admin.kubeconfig, "import", "ds01", str(DS01_FILE), "--domain", "lab.example")
    assert shown.code == 0, shown.err
    assert "create    GPURateLimit/ds01-student" in shown.out
    assert "+  maxGPUEquivalents: 2" in shown.out
    assert "create    Namespace/u-s1001" in shown.out
    assert "note: defaults.memory_swap: not carried over" in shown.out
    assert shown.lines[-1].startswith("dry run: nothing was changed")
    assert not [name for name in limits(admin) if name.startswith("ds01-")]


def test_import_ds01_applies_limits_and_accounts_then_finds_nothing_to_do(admin: Kube) -> None:
    applied = ds01(
        admin.kubeconfig, "import", "ds01", str(DS01_FILE), "--domain", "lab.example", "--apply"
    )
    assert applied.code == 0, applied.err
    found = limits(admin)
    assert found["ds01-student"]["gpu"] == {"maxGPUEquivalents": 2, "maxDevicesPerWorkload": 2}
    assert found["ds01-user-rhea-lab.example"]["lifecycle"] == {
        "maxRuntime": "72h",
        "idleTimeout": "Unlimited",
    }
    rhea = admin.get("namespace", "u-rhea")["metadata"]["annotations"]
    assert (rhea["gpu.ds01.io/groups"], rhea["gpu.ds01.io/linux-user"]) == ("researcher", "rhea")
    again = ds01(admin.kubeconfig, "import", "ds01", str(DS01_FILE), "--domain", "lab.example")
    actions = {
        line.split()[0]
        for line in again.lines
        if line.split()[0] in ("create", "update", "unchanged")
    }
    assert actions == {"unchanged"}


def test_a_broken_ds01_file_is_a_usage_error_naming_the_key(tmp_path: Path, admin: Kube) -> None:
    broken = tmp_path / "limits.yaml"
    doc = yaml.safe_load(DS01_FILE.read_text())
    doc["groups"]["student"]["memory"] = "lots"
    broken.write_text(yaml.safe_dump(doc))
    refused = ds01(admin.kubeconfig, "import", "ds01", str(broken))
    assert refused.code == 2
    assert "groups.student.memory: 'lots' is not a size" in refused.err


def test_usage_across_accounts_by_group_reads_each_accounts_history(
    lab: LocalCluster, admin: Kube
) -> None:
    month = uh.month_of(datetime.now(UTC))
    start = uh.month_start(month)
    for user, namespace, group, used in (
        ("ada@lab.example", "u-ada", "researcher", 3.0),
        ("s1001@lab.example", "u-s1001", "student", 1.5),
    ):
        record = uh.MonthRecord(
            user, month, (group,), {(0, "gpu-node-1"): uh.Figures(used=used, granted=4)}
        )
        lab.apply("-f", "-", stdin=json.dumps(history_object(namespace, record)), force=False)
    everyone = ds01(
        admin.kubeconfig, "usage", "-A", "--by", "group", "--since", start.isoformat(), "-o", "csv"
    )
    assert everyone.code == 0, everyone.err
    rows = {r["GROUP"]: r for r in csv.DictReader(io.StringIO(everyone.out))}
    assert float(rows["researcher"]["USED GPU-H"]) == 3.0
    assert float(rows["student"]["GRANTED GPU-H"]) == 4.0
    ada = Kube(lab, lab.user_kubeconfig("ada@lab.example"))
    own = ds01(ada.kubeconfig, "usage", "--since", start.isoformat(), "-o", "json")
    assert [r["key"] for r in json.loads(own.out)["rows"]] == ["ada@lab.example"]
    assert ds01(ada.kubeconfig, "usage", "-A").code == 1


def history_object(namespace: str, record: uh.MonthRecord) -> dict:  # type: ignore[type-arg]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": uh.object_name(record.month),
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "ds01-operator",
                "gpu.ds01.io/component": uh.COMPONENT,
                uh.MONTH_LABEL: record.month,
            },
        },
        "data": uh.encode(record),
    }


def test_audit_reads_the_trail_across_rotations_and_filters_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    day = datetime(2026, 3, 1, 23, 59, tzinfo=UTC)
    clock = [day]
    log = AuditLog(path, "ds01-operator", clock=lambda: clock[0])
    log.write("grant.approved", "kim@lab.example", {"grant": "u-kim/a"})
    clock[0] = day + timedelta(minutes=2)  # the next day: the first file rotates
    log.write("grant.revoked", "kim@lab.example", {"grant": "u-kim/a", "reason": "Revoked"})
    log.write("quota.budget_exhausted", "lee@lab.example", {"namespace": "u-lee"})
    assert len(list(tmp_path.glob("audit.jsonl.*"))) == 1
    shown = ds01(None, "audit", "--file", str(path), "--user", "kim@lab.example", "--type", "grant")
    assert shown.code == 0, shown.err
    assert [line.split()[2] for line in shown.lines[1:]] == ["grant.approved", "grant.revoked"]
    data = json.loads(
        ds01(None, "audit", "--file", str(path), "--type", "quota.*", "-o", "json").out
    )
    assert [r["user"] for r in data] == ["lee@lab.example"]
    missing = ds01(None, "audit", "--file", str(tmp_path / "nope.jsonl"))
    assert missing.code == 1 and "does not exist" in missing.err
