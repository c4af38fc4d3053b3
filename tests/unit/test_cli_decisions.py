"""What `kubectl ds01` decides and says: local refusals, `why` paragraphs, the DS01 import."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.api.kinds import GPUGrant, GPUNode, GPURateLimit
from controller.cli.ds01 import views
from controller.policy import ds01import
from controller.policy.conditions import find
from controller.policy.explain import EventView, PodView, explain_grant, explain_pod
from controller.policy.plan import Namespace, Snapshot, plan
from controller.policy.requestcheck import limits_from, screen
from tests.unit.fixtures import T0, a100_node, grant, later

ALICE = Namespace(
    "u-alice",
    {"gpu.ds01.io/user": "alice-lab.example"},
    {
        "gpu.ds01.io/user-name": "alice@lab.example",
        "gpu.ds01.io/groups": "student",
        "gpu.ds01.io/linux-user": "alice",
    },
)
STUDENT = GPURateLimit.model_validate(
    {
        "metadata": {"name": "student"},
        "spec": {
            "subjects": [{"kind": "Group", "name": "student"}],
            "priority": 10,
            "gpu": {
                "maxGPUEquivalents": 2,
                "allowFullGPUs": True,
                "allowedMIGProfiles": ["1g.10gb", "2g.20gb"],
            },
            "grants": {"approval": "Auto", "maxDuration": "72h", "maxGPUEquivalents": 2},
            "rates": {"grantRequestsPerDay": 3},
            "lifecycle": {
                "idleTimeout": "30m",
                "byWorkloadType": [
                    {"type": "job", "idleTimeout": "Unlimited", "maxRuntime": "24h"}
                ],
            },
        },
    }
)
NO_FULL = GPURateLimit.model_validate(
    {
        "metadata": {"name": "alice-mig-only"},
        "spec": {
            "subjects": [{"kind": "User", "name": "alice@lab.example"}],
            "gpu": {"allowFullGPUs": False},
        },
    }
)


def world(grants: list[GPUGrant], *limits: GPURateLimit) -> Snapshot:
    return Snapshot([ALICE], [STUDENT, *limits], grants, [], [a100_node(mig={0: ["2g.20gb"] * 3})])


def published(*limits: GPURateLimit):  # type: ignore[no-untyped-def]
    doc = plan(world([], *limits), T0).accounts["u-alice"].document
    assert doc is not None
    return doc


def test_published_limits_read_back_as_the_effective_limits() -> None:
    doc = published(NO_FULL)
    limits = limits_from(doc)
    assert limits.spec.gpu is not None and limits.spec.gpu.allow_full_gpus is False
    assert limits.source_of("gpu.allowFullGPUs") == "GPURateLimit/alice-mig-only"
    assert limits.source_of("grants.maxDuration") == "GPURateLimit/student"
    job = next(o for o in limits.spec.lifecycle.by_workload_type or () if o.type == "job")  # type: ignore[union-attr]
    assert (job.idle_timeout, job.max_runtime) == ("Unlimited", "24h")


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(min_value=1, max_value=3),
    profile=st.sampled_from([None, "1g.10gb", "2g.20gb", "3g.40gb"]),
    duration=st.sampled_from(["1h", "48h", "100h"]),
    earlier=st.integers(min_value=0, max_value=4),
    mig_only=st.booleans(),
)
def test_a_local_refusal_is_the_operators_decision_word_for_word(
    count: int, profile: str | None, duration: str, earlier: int, mig_only: bool
) -> None:
    limits = (NO_FULL,) if mig_only else ()
    before = [
        grant(f"old-{i}", count=1, profile="1g.10gb", created=T0 - timedelta(hours=i + 1))
        for i in range(earlier)
    ]
    doc = published(*limits)
    new = grant("new", count=count, profile=profile, created=T0, duration=duration)
    verdict = screen(new, doc, before, T0)
    decided = plan(world([*before, new], *limits), T0).grant_status["u-alice/new"]
    said = find(decided.conditions, "Approved")
    assert said is not None
    if decided.state in ("Invalid", "Denied"):
        assert (verdict.state, verdict.refusal) == (decided.state, said.message)
    elif decided.state == "Pending":
        assert verdict.refusal is None
        assert "waiting for an approver: " + "; ".join(verdict.waits_for) == said.message
    else:
        assert verdict.refusal is None and verdict.waits_for == []


def _decided(g: GPUGrant, at: Any, *extra: GPUGrant) -> GPUGrant:
    status = plan(world([g, *extra]), at).grant_status[f"u-alice/{g.metadata.name}"]
    return g.model_copy(update={"status": status})


def test_why_a_pending_grant_names_the_limit_and_the_next_step() -> None:
    long = _decided(grant("long", duration="100h"), later(5))
    text = explain_grant(long, [], published(), later(5))
    assert "was requested 5m ago" in text
    assert "maxDuration 72h of GPURateLimit/student" in text
    assert "a smaller request would not wait" in text
    assert "kubectl ds01 pending" in text


def test_why_an_invalid_grant_quotes_the_refusal_and_says_to_request_again() -> None:
    bad = _decided(grant("bad", profile="3g.40gb"), later(1))
    text = explain_grant(bad, [], None, later(1))
    assert "3g.40gb is not allowed by GPURateLimit/student" in text
    assert "delete it" in text


def test_why_an_active_grant_gives_its_end_and_the_allowance() -> None:
    ok = _decided(grant("ok", duration="2h"), later(30))
    text = explain_grant(ok, [], published(), later(30))
    assert "is active until 2026-11-25 14:00 UTC (in 1h30m)" in text
    assert "your allowance is" in text


def test_why_a_revoked_grant_names_who_and_why() -> None:
    g = grant("gone", revocation={"reason": "maintenance", "revokedBy": "prof@lab.example"})
    revoked = _decided(_decided(g, later(1)), later(2))
    revoked = revoked.model_copy(
        update={
            "status": revoked.status.model_copy(update={"state": "Revoked", "revoked_at": later(1)})
        }  # type: ignore[union-attr]
    )
    text = explain_grant(revoked, [], None, later(3))
    assert "revoked by prof@lab.example: maintenance (2m ago)" in text


def test_why_an_undecided_grant_points_at_the_operator() -> None:
    text = explain_grant(grant("new"), [], None, later(2))
    assert "the operator has not decided it yet" in text


def test_why_an_idle_pod_says_when_it_will_be_stopped_and_how_to_keep_it() -> None:
    pod = PodView(
        name="notebook",
        namespace="u-alice",
        phase="Running",
        gpu_requests={"gpu.ds01.io/mig-2g.20gb": 1},
        annotations={"gpu.ds01.io/idle-since": later(0).isoformat()},
        started=T0 - timedelta(hours=1),
    )
    text = explain_pod(pod, [], published(), later(10))
    assert "idle since 2026-11-25 12:00 UTC" in text
    assert (
        "stopped at about 2026-11-25 12:30 UTC (in 20m; lifecycle.idleTimeout 30m from GPURateLimit/student)"
        in text
    )
    assert "gpu.ds01.io/keep-alive" in text


def test_why_a_job_pod_uses_the_job_type_limits() -> None:
    pod = PodView(
        "train-x",
        "u-alice",
        "Running",
        {"gpu.ds01.io/gpu": 1},
        {},
        owner="Job/train",
        started=T0,
        workload_type="job",
    )
    text = explain_pod(pod, [], published(), later(60))
    assert "never stopped for idleness (lifecycle.byWorkloadType[job].idleTimeout Unlimited" in text
    assert "stopped at 2026-11-26 12:00 UTC (in 23h" in text


def test_why_a_stopped_pod_says_what_happened_and_how_to_resume() -> None:
    pod = PodView(
        "train-x",
        "u-alice",
        "Running",
        {"gpu.ds01.io/gpu": 1},
        {"gpu.ds01.io/lifecycle-stopped": "Idle: idle for 30m"},
        owner="Job/train",
    )
    text = explain_pod(pod, [EventView("StoppedIdle", "x", "Warning")], None, later(1))
    assert "was stopped by the ds01 operator: Idle: idle for 30m" in text
    assert "suspend" in text


# -- DS01 import -------------------------------------------------------------------

DS01_FILE = Path(__file__).parent / "data" / "ds01-resource-limits.yaml"


def test_ds01_groups_users_and_types_become_limits_and_accounts() -> None:
    found = ds01import.translate(yaml.safe_load(DS01_FILE.read_text()), {}, "lab.example")
    limits = found.limits
    assert set(limits) == {
        "ds01-defaults",
        "ds01-student",
        "ds01-researcher",
        "ds01-admin",
        "ds01-user-rhea-lab.example",
        "ds01-user-204214-hertie-school.lan",
    }
    defaults = limits["ds01-defaults"]
    assert defaults["gpu"]["maxGPUEquivalents"] == 1  # 4 MIG-equivalents at 4 per GPU
    assert defaults["lifecycle"]["idleTimeout"] == "30m"
    assert defaults["lifecycle"]["holdAfterStop"] == "15m"
    assert defaults["lifecycle"]["highDemandIdlePercent"] == 50
    types = {o["type"]: o for o in defaults["lifecycle"]["byWorkloadType"]}
    assert types["devcontainer"] == {
        "type": "devcontainer",
        "idleTimeout": "Unlimited",
        "maxRuntime": "168h",
    }
    assert {s["name"] for s in defaults["subjects"]} == {"student", "researcher", "admin"}
    assert limits["ds01-student"]["resources"]["perUser"] == {
        "cpu": "96",
        "memory": "96Gi",
        "pids": 12288,
    }
    assert limits["ds01-researcher"]["resources"]["perWorkload"]["memory"]["max"] == "64Gi"
    assert limits["ds01-admin"]["gpu"]["maxGPUEquivalents"] == "Unlimited"
    rhea = limits["ds01-user-rhea-lab.example"]
    assert rhea["subjects"] == [{"kind": "User", "name": "rhea@lab.example"}]
    assert rhea["lifecycle"] == {"idleTimeout": "Unlimited", "maxRuntime": "72h"}
    accounts = {a.user: (a.group, a.linux_user) for a in found.accounts}
    assert accounts == {
        "s1001@lab.example": ("student", "s1001"),
        "s1002@lab.example": ("student", "s1002"),  # the first group listing them, as DS01
        "rhea@lab.example": ("researcher", "rhea"),
        "datasciencelab@lab.example": ("admin", "datasciencelab"),
        "204214@hertie-school.lan": ("student", None),  # only an override: default_group
    }
    assert "defaults.memory_swap: not carried over (no counterpart in GPURateLimit)" in found.notes
    assert "monitoring: not carried over (no counterpart in GPURateLimit)" in found.notes
    assert any(n.startswith("204214@hertie-school.lan: no Linux login") for n in found.notes)


def test_members_files_add_to_the_groups() -> None:
    found = ds01import.translate(yaml.safe_load(DS01_FILE.read_text()), {"researcher": ["newphd"]})
    assert ("newphd", "researcher") in {(a.user, a.group) for a in found.accounts}


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"groups": []}, "groups: DS01's resource-limits.yaml has a mapping of groups"),
        ({"defaults": {"max_runtime": "soon"}}, "defaults.max_runtime: 'soon' is not a duration"),
        ({"defaults": {"memory": "lots"}}, "defaults.memory: 'lots' is not a size"),
        (
            {"defaults": {"allow_full_gpu": "yes"}},
            "defaults.allow_full_gpu: 'yes' is not true or false",
        ),
        (
            {"defaults": {"max_containers_per_user": -1}},
            "defaults.max_containers_per_user: -1 is not a count",
        ),
    ],
)
def test_a_bad_ds01_file_is_refused_naming_the_key(patch: dict[str, Any], message: str) -> None:
    doc = {**yaml.safe_load(DS01_FILE.read_text()), **patch}
    with pytest.raises(
        ds01import.DS01FileError, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        ds01import.translate(doc)


def test_the_import_diff_says_create_update_or_unchanged() -> None:
    assert ds01import.change("GPURateLimit/x", None, {"a": 1}).action == "create"
    same = ds01import.change("GPURateLimit/x", {"a": 1}, {"a": 1})
    assert (same.action, same.diff) == ("unchanged", "")
    changed = ds01import.change("GPURateLimit/x", {"a": 1}, {"a": 2})
    assert changed.action == "update"
    assert "-a: 1\n+a: 2\n" in changed.diff


# -- status views ------------------------------------------------------------------


def test_status_grows_the_budget_at_the_published_rate_and_says_when_it_refills() -> None:
    doc = published()
    b = doc.budget.model_copy(
        update={
            "gpu_hours": "10",
            "window": "24h",
            "used_gpu_hours": 4.0,
            "rate": 2.0,
            "as_of": T0,
            "buckets": [
                replace_bucket(doc, T0 - timedelta(hours=3), 1.5),
                replace_bucket(doc, T0 - timedelta(hours=1), 2.5),
            ],
        }
    )
    now = doc.model_copy(update={"budget": b})
    shown = views.budget_now(now, T0 + timedelta(minutes=30))
    assert (shown.used, shown.left) == (5.0, 5.0)
    assert shown.refill_at == T0 - timedelta(hours=2) + timedelta(hours=24)
    assert shown.refill_hours == 1.5


def replace_bucket(doc: Any, start: Any, hours: float) -> Any:
    from controller.api.accountpolicy import BudgetBucket

    return BudgetBucket(start=start, end=start + timedelta(hours=1), gpu_hours=hours)


def test_who_shows_each_slice_its_holder_and_reservation() -> None:
    body = a100_node(gpus=2, mig={0: ["2g.20gb", "2g.20gb"]}).model_dump(by_alias=True, mode="json")
    devices = body["status"]["devices"]
    slice_uuid, whole = devices[0]["migInstances"][1]["uuid"], devices[1]["uuid"]
    body["status"]["workloads"] = [
        {
            "kind": "Pod",
            "name": "train",
            "namespace": "u-alice",
            "owner": "alice@lab.example",
            "ownerSource": "Namespace",
            "devices": [slice_uuid],
            "startedAt": T0.isoformat(),
            "processes": [{"pid": 7, "deviceUUID": slice_uuid}],
        }
    ]
    body["spec"]["reservations"] = [
        {
            "deviceUUID": whole,
            "user": "bob@lab.example",
            "until": later(600).isoformat(),
            "source": {"kind": "GPUGrant", "name": "b", "namespace": "u-bob"},
        }
    ]
    node = GPUNode.model_validate(body)
    rows = [[getattr(c, "text", c) for c in r] for r in views.who_rows([node], later(90))]
    assert rows[1][:8] == [
        "gpu-node-1",
        "0",
        "2g.20gb",
        "-",
        "alice@lab.example",
        "train",
        "1",
        "1h30m ago",
    ]
    assert rows[0][4] == "-"
    assert rows[2][8].startswith("bob@lab.example until")


def test_pending_lists_the_oldest_request_first_with_its_age() -> None:
    old = _decided(grant("old", duration="100h", created=T0), later(60))
    new = _decided(grant("new", duration="100h", created=later(30)), later(60))
    rows = views.pending_rows([new, old], later(60))
    assert [(r[0], r[2]) for r in rows] == [("1h", "old"), ("30m", "new")]
    assert "maxDuration" in rows[0][7]
