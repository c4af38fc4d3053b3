"""The operator's pod lifecycle: checks from agent reports, state in annotations, owners."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from controller.api.kinds import GPUExemption, GPUNode
from controller.api.names import (
    IDLE_CHECKS,
    IDLE_SINCE,
    KEEP_ALIVE,
    LIFECYCLE_STOPPED,
    LIFECYCLE_WARNED,
    LIFECYCLE_WARNING,
)
from controller.api.ratelimit import GPURateLimitSpec
from controller.devcluster import simnode
from controller.policy.effective import NamedLimit
from controller.policy.lifecycle import LifeState, observe
from controller.policy.podlife import (
    LifeInputs,
    Owner,
    PodStep,
    annotation_patch,
    decide,
    load_state,
    overlaid,
    parse_time,
    state_annotations,
    stop_target,
    workload_type,
)
from controller.policy.pods import OwnerRef, Pod, parse_pod
from tests.unit.fixtures import T0, later
from tests.unit.test_lifecycle import rules

ALICE = "alice@lab.example"
GPU, MIG = "gpu.ds01.io/gpu", "gpu.ds01.io/mig-3g.40gb"
DEVICES = simnode.inventory("n1", 4, {0: ["3g.40gb", "3g.40gb"]})
SLICES = [i["uuid"] for i in DEVICES[0]["migInstances"]]
FULL = [d["uuid"] for d in DEVICES[1:]]
JOB = OwnerRef("batch/v1", "Job", "train")


def node(
    workloads: list[dict[str, Any]],
    utilization: dict[str, int] | None = None,
    heartbeat: datetime = T0,
    enforcement: str = "Enforce",
) -> GPUNode:
    devices = [dict(d) for d in DEVICES]
    for device in devices:
        if not device.get("migInstances"):
            device["utilizationPercent"] = (utilization or {}).get(device["uuid"], 0)
    return GPUNode.model_validate(
        {
            "metadata": {"name": "n1"},
            "spec": {"enforcement": enforcement},
            "status": {
                "agent": {"version": "t", "heartbeatTime": heartbeat.isoformat()},
                "devices": devices,
                "gpus": 4,
                "workloads": workloads,
            },
        }
    )


def report(name: str, device: str, processes: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": "Pod",
        "name": name,
        "namespace": "u-alice",
        "owner": ALICE,
        "ownerSource": "Namespace",
        "devices": [device],
        "startedAt": T0.isoformat(),
    }
    if processes:
        out["processes"] = [{"pid": 7, "deviceUUID": device}]
    return out


def gpu_pod(name: str, resource: str = GPU, **changes: Any) -> Pod:
    return replace(
        Pod("u-alice", name, f"uid-{name}", T0, requests={resource: Fraction(1)}), **changes
    )


def limit(**lifecycle: Any) -> NamedLimit:
    spec = GPURateLimitSpec.model_validate(
        {
            "subjects": [{"kind": "User", "name": ALICE}],
            "lifecycle": {
                "startupGrace": "0s",
                "idle": {"consecutiveChecks": 2},
                "byWorkloadType": [{"type": "pod", "idleTimeout": "10m", "maxRuntime": "24h"}],
                **lifecycle,
            },
        }
    )
    return NamedLimit("short", spec)


def world(
    nodes: list[GPUNode],
    pods: list[Pod],
    exemptions: list[GPUExemption] | None = None,
    **lifecycle: Any,
) -> LifeInputs:
    return LifeInputs(
        nodes=nodes,
        pods=pods,
        limits=[limit(**lifecycle)],
        exemptions=exemptions or [],
        owners={"u-alice": Owner(ALICE, ("researcher",))},
    )


def run_minutes(inputs: LifeInputs, minutes: range) -> list[PodStep]:
    """Check once a minute, writing each step's annotations back as the operator does."""
    steps: list[PodStep] = []
    pods = {p.name: p for p in inputs.pods}
    for minute in minutes:
        decided = decide(replace(inputs, pods=list(pods.values())), later(minute))
        for step in decided:
            merged = {**step.pod.annotations, **step.annotations}
            kept = {k: v for k, v in merged.items() if v is not None}
            pods[step.pod.name] = replace(step.pod, annotations=kept)
        steps += decided
    return steps


def test_an_idle_pod_is_warned_at_80_and_95_percent_then_stopped_once() -> None:
    inputs = world([node([report("p", FULL[0])], heartbeat=later(30))], [gpu_pod("p")])
    steps = run_minutes(inputs, range(1, 16))
    # Idle from minute 1, counted from its 2nd check: 80% of 10 min at 9, 95% at 10.5, stop at 11.
    acted = [(s.action, s.verdict.warnings if s.verdict else ()) for s in steps]
    assert acted[:8] == [("keep", ())] * 8
    assert acted[8] == ("warn", ("idle-80",))
    assert acted[10] == ("stop", ())
    assert [a for a, _ in acted[11:]] == ["restop"] * 4
    warn, stop = steps[8], steps[10]
    assert warn.annotations[LIFECYCLE_WARNED] == "idle-80"
    assert "it will be stopped after 10m idle" in (warn.annotations[LIFECYCLE_WARNING] or "")
    assert [e.reason for e in warn.events] == ["IdleWarning"]
    assert warn.audit[0].event_type == "maintenance.idle_warning"
    assert (stop.annotations[LIFECYCLE_STOPPED] or "").startswith("Idle: idle for 10m")
    assert stop.events[0].reason == "StoppedIdle" and stop.events[0].type == "Warning"
    assert stop.audit[0].event_type == "maintenance.idle_kill"
    assert stop.stops and steps[-1].stops and not steps[-1].events


def test_the_idle_streak_is_not_rewritten_once_it_counts() -> None:
    inputs = world([node([report("p", FULL[0])], heartbeat=later(30))], [gpu_pod("p")])
    steps = run_minutes(inputs, range(1, 6))
    assert steps[0].annotations == {IDLE_SINCE: later(1).isoformat(), IDLE_CHECKS: "1"}
    assert steps[1].annotations == {IDLE_CHECKS: "2"}
    assert [s.annotations for s in steps[2:]] == [{}, {}, {}]


def test_busy_gpus_and_slices_with_processes_are_kept_idle_slices_are_not() -> None:
    nodes = [
        node(
            [
                report("busy", FULL[0]),
                report("computing", SLICES[0], processes=True),
                report("idle", SLICES[1]),
            ],
            utilization={FULL[0]: 50},
            heartbeat=later(30),
        )
    ]
    pods = [gpu_pod("busy"), gpu_pod("computing", MIG), gpu_pod("idle", MIG)]
    steps = run_minutes(world(nodes, pods), range(1, 13))
    by_pod = {name: [s.action for s in steps if s.pod.name == name] for name in ("busy", "idle")}
    assert set(by_pod["busy"]) == {"keep"}
    assert "stop" in by_pod["idle"]
    assert {s.action for s in steps if s.pod.name == "computing"} == {"keep"}
    assert all(IDLE_SINCE not in s.annotations for s in steps if s.pod.name != "idle")


def test_pods_without_gpu_requests_unreported_or_on_stale_nodes_are_not_judged() -> None:
    cpu = Pod("u-alice", "cpu", "uid-cpu", T0)
    inputs = world([node([report("cpu", FULL[0])], heartbeat=later(30))], [cpu, gpu_pod("quiet")])
    assert decide(inputs, later(31)) == []
    stale = world([node([report("p", FULL[0])], heartbeat=T0)], [gpu_pod("p")])
    assert decide(stale, later(5)) != []
    assert decide(stale, later(6)) == []  # no report for over 5 minutes


def test_deleting_and_finished_pods_are_left_alone() -> None:
    nodes = [node([report("a", FULL[0]), report("b", FULL[1])], heartbeat=later(30))]
    pods = [gpu_pod("a", deleting=True), gpu_pod("b", terminal=True)]
    assert decide(world(nodes, pods), later(1)) == []


def test_off_mode_skips_and_audit_mode_reports_and_restarts_the_clock() -> None:
    off = world(
        [node([report("p", FULL[0])], heartbeat=later(30), enforcement="Off")], [gpu_pod("p")]
    )
    assert run_minutes(off, range(1, 13)) == []
    audit = world(
        [node([report("p", FULL[0])], heartbeat=later(30), enforcement="Audit")], [gpu_pod("p")]
    )
    steps = run_minutes(audit, range(1, 13))
    would = [s for s in steps if s.action == "would-stop"]
    assert len(would) == 1 and not would[0].stops
    assert would[0].events[0].reason == "WouldStop" and would[0].events[0].type == "Normal"
    assert would[0].annotations[IDLE_SINCE] is None
    assert not any(s.stops for s in steps)


def test_an_idle_timeout_exemption_keeps_the_pod() -> None:
    exemption = GPUExemption.model_validate(
        {
            "metadata": {"name": "waiver"},
            "spec": {
                "subject": {"kind": "User", "name": ALICE},
                "exemptFrom": ["IdleTimeout"],
                "category": "Waiver",
                "reason": "t",
                "start": T0.isoformat(),
            },
        }
    )
    inputs = world([node([report("p", FULL[0])], heartbeat=later(60))], [gpu_pod("p")], [exemption])
    assert {s.action for s in run_minutes(inputs, range(1, 40))} == {"keep"}


def test_a_keep_alive_holds_idle_reaping_until_keep_alive_max() -> None:
    asked = (T0 + timedelta(days=3)).isoformat()
    inputs = world(
        [node([report("p", FULL[0])], heartbeat=later(60))],
        [gpu_pod("p", annotations={KEEP_ALIVE: asked})],
        keepAliveMax="30m",
    )
    steps = run_minutes(inputs, range(1, 40))
    first_stop = next(i for i, s in enumerate(steps, start=1) if s.action == "stop")
    assert first_stop == 30  # held to 30 minutes after the start, not 3 days


def test_jobs_pods_are_judged_as_jobs() -> None:
    job_pod = gpu_pod("p", owner=JOB)
    assert workload_type(job_pod) == "job"
    assert workload_type(gpu_pod("p")) == "pod"
    assert workload_type(gpu_pod("p", owner=OwnerRef("apps/v1", "ReplicaSet", "rs"))) == "pod"
    # Job pods take the job type's timeout: Unlimited here, so an idle Job pod stays.
    inputs = world(
        [node([report("p", FULL[0])], heartbeat=later(60))],
        [job_pod],
        byWorkloadType=[{"type": "job", "idleTimeout": "Unlimited"}],
    )
    assert {s.action for s in run_minutes(inputs, range(1, 30))} == {"keep"}


def test_stop_target_acts_on_the_owner_that_would_recreate_the_work() -> None:
    rs = OwnerRef("apps/v1", "ReplicaSet", "web-5d9")
    deploy = OwnerRef("apps/v1", "Deployment", "web")
    sts = OwnerRef("apps/v1", "StatefulSet", "db")
    cron = OwnerRef("batch/v1", "CronJob", "nightly")
    daemon = OwnerRef("apps/v1", "DaemonSet", "d")
    assert stop_target([]) is None
    assert stop_target([JOB, cron]) == JOB
    assert stop_target([rs, deploy]) == deploy
    assert stop_target([rs]) == rs
    assert stop_target([sts]) == sts
    assert stop_target([daemon]) is None


def test_parse_pod_keeps_the_controller_and_only_ds01_annotations() -> None:
    body = {
        "metadata": {
            "name": "p",
            "namespace": "u-alice",
            "uid": "u1",
            "annotations": {IDLE_SINCE: T0.isoformat(), "other.io/x": "y"},
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "cm"},
                {"apiVersion": "batch/v1", "kind": "Job", "name": "train", "controller": True},
            ],
            "deletionTimestamp": T0.isoformat(),
        },
        "spec": {"containers": [{"name": "c", "resources": {"limits": {GPU: "1"}}}]},
    }
    parsed = parse_pod(body)
    assert parsed.owner == JOB
    assert parsed.annotations == {IDLE_SINCE: T0.isoformat()}
    assert parsed.deleting
    assert parse_pod({"metadata": {"name": "bare"}}).owner is None


def test_observe_reads_utilisation_for_full_gpus_and_processes_for_slices() -> None:
    check = observe(
        T0,
        [FULL[1], SLICES[0], FULL[0], SLICES[1]],
        {FULL[0]: 3, FULL[1]: 70},
        set(FULL),
        {SLICES[1]},
    )
    assert sorted(check.gpu_utilization) == [3, 70]
    assert sorted(check.mig_busy) == [False, True]


def test_unreadable_or_naive_times_count_as_absent() -> None:
    assert parse_time("tomorrow") is None
    assert parse_time("2026-11-25T12:00:00") is None
    assert parse_time("2026-11-25T12:00:00Z") == T0
    assert load_state(
        {IDLE_SINCE: "x", IDLE_CHECKS: "y", LIFECYCLE_WARNED: "idle-80"}, T0
    ) == LifeState(warned=frozenset({"idle-80"}))
    # A hand-edited idle-since in the future is read as now.
    assert load_state({IDLE_SINCE: later(60).isoformat(), IDLE_CHECKS: "3"}, T0).idle_since == T0


WARNINGS = st.frozensets(st.sampled_from(["idle-80", "idle-95", "runtime-75", "runtime-90"]))


@given(
    streak=st.integers(0, 10),
    since=st.one_of(st.none(), st.integers(0, 600).map(later)),
    warned=WARNINGS,
    checks=st.integers(1, 5),
)
def test_the_state_survives_its_annotations(
    streak: int, since: datetime | None, warned: frozenset[str], checks: int
) -> None:
    kept = rules(consecutive_checks=checks)
    stored = {
        k: v for k, v in state_annotations(LifeState(streak, since, warned), kept).items() if v
    }
    back = load_state(stored, later(600))
    if streak and since is not None:
        assert back == LifeState(min(streak, checks), since, warned)
    else:
        assert back == LifeState(warned=warned)


@given(
    current=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from(["1", "2"])),
    desired=st.dictionaries(st.sampled_from(["a", "b", "d"]), st.sampled_from(["1", "2", None])),
)
def test_an_annotation_patch_reaches_what_is_desired(
    current: dict[str, str], desired: dict[str, str | None]
) -> None:
    patch = annotation_patch(current, desired)
    merged = {**current, **patch}
    assert all(merged.get(k) == v for k, v in desired.items())
    assert all(current.get(k) != v for k, v in patch.items())


def test_a_pod_nobody_owns_is_not_judged_one_the_agent_attributes_is() -> None:
    def elsewhere(owner: str | None) -> dict[str, Any]:
        out = report("p", FULL[0]) | {"namespace": "monitoring", "owner": owner}
        return out if owner else {k: v for k, v in out.items() if k != "owner"}

    pod = replace(gpu_pod("p"), namespace="monitoring")
    nobody = world([node([elsewhere(None)], heartbeat=later(30))], [pod])
    assert decide(nobody, later(1)) == []
    attributed = world([node([elsewhere(ALICE)], heartbeat=later(30))], [pod])
    [step] = decide(attributed, later(1))
    assert step.user == ALICE and step.action == "keep"


def test_what_the_operator_wrote_is_laid_over_a_lagging_cache() -> None:
    cached = gpu_pod("p", annotations={IDLE_SINCE: T0.isoformat(), LIFECYCLE_WARNING: "old"})
    written = {IDLE_CHECKS: "2", LIFECYCLE_WARNING: None}
    laid = overlaid(cached, written)
    assert laid is not None
    assert laid.annotations == {IDLE_SINCE: T0.isoformat(), IDLE_CHECKS: "2"}
    assert overlaid(laid, written) is None  # the cache caught up
