"""Idle and runtime decisions with DS01's semantics."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from controller.policy.effective import effective_limits
from controller.policy.lifecycle import (
    Check,
    LifeState,
    Rules,
    in_high_demand,
    judge,
    keep_alive_until,
    rules_for,
)
from controller.policy.quantity import parse_quantity_bytes
from tests.unit.fixtures import T0, later
from tests.unit.test_effective import samples

STUDENT = effective_limits("s", ("student",), samples()).spec
RESEARCHER = effective_limits("r", ("researcher",), samples()).spec


def rules(**changes) -> Rules:
    base = rules_for(STUDENT, "docker", frozenset())
    return base.__class__(**{**base.__dict__, **changes})


def idle(minute: float) -> Check:
    return Check(at=later(minute), gpu_utilization=(1,), cpu_percent=0.5, network_bytes=100)


def busy(minute: float) -> Check:
    return Check(at=later(minute), gpu_utilization=(60,), cpu_percent=90.0, network_bytes=100)


def run(r: Rules, checks: list[Check], started=T0, **kw):
    state, verdicts = LifeState(), []
    for check in checks:
        verdict = judge(r, state, check, started, **kw)
        state = verdict.state
        verdicts.append(verdict)
    return verdicts


def test_rules_come_from_the_type_then_the_policy() -> None:
    docker = rules_for(STUDENT, "docker", frozenset())
    assert (docker.idle_timeout, docker.max_runtime, docker.stop_grace) == (
        timedelta(minutes=30),
        timedelta(hours=48),
        timedelta(seconds=60),
    )
    devcontainer = rules_for(STUDENT, "devcontainer", frozenset())
    assert devcontainer.idle_timeout is None and devcontainer.max_runtime == timedelta(hours=168)
    researcher = rules_for(
        RESEARCHER, "pod", frozenset()
    )  # no override for pods: the group's values
    assert (researcher.idle_timeout, researcher.max_runtime, researcher.consecutive_checks) == (
        timedelta(hours=1),
        timedelta(hours=48),
        4,
    )
    exempt = rules_for(STUDENT, "docker", frozenset({"IdleTimeout", "MaxRuntime"}))
    assert exempt.idle_timeout is None and exempt.max_runtime is None


def test_idle_container_is_warned_at_80_and_95_then_stopped() -> None:
    r = rules(startup_grace=timedelta(0), consecutive_checks=3)
    verdicts = run(r, [idle(m) for m in range(0, 32)])
    actions = [(v.action, v.warnings) for v in verdicts if v.action != "keep"]
    assert actions[:2] == [("warn", ("idle-80",)), ("warn", ("idle-95",))]
    assert verdicts[24].warnings == ("idle-80",)  # 24 of 30 minutes
    assert verdicts[29].warnings == ("idle-95",)  # 28.5 minutes reached at minute 29
    stop = next(v for v in verdicts if v.action == "stop")
    assert stop.reason == "Idle" and verdicts.index(stop) == 30


def test_activity_resets_the_idle_clock_and_its_warnings() -> None:
    r = rules(startup_grace=timedelta(0))
    checks = [idle(m) for m in range(0, 25)] + [busy(25)] + [idle(m) for m in range(26, 53)]
    verdicts = run(r, checks)
    assert all(v.action != "stop" for v in verdicts)
    assert [v.warnings for v in verdicts if v.warnings] == [("idle-80",), ("idle-80",)]


def test_busy_and_exempt_and_kept_alive_workloads_are_not_stopped() -> None:
    r = rules(startup_grace=timedelta(0))
    assert all(v.action == "keep" for v in run(r, [busy(m) for m in range(0, 60)]))
    exempt = rules(startup_grace=timedelta(0), idle_timeout=None)
    assert all(v.action == "keep" for v in run(exempt, [idle(m) for m in range(0, 60)]))
    until = keep_alive_until(later(240), T0, r)
    assert all(
        v.action == "keep" for v in run(r, [idle(m) for m in range(0, 60)], keep_alive_until=until)
    )


def test_keep_alive_is_honoured_for_at_most_24_hours() -> None:
    r = rules()
    assert keep_alive_until(T0 + timedelta(days=5), T0, r) == T0 + timedelta(hours=24)


def test_startup_grace_delays_the_idle_clock() -> None:
    r = rules(startup_grace=timedelta(minutes=30))
    verdicts = run(r, [idle(m) for m in range(0, 61)])
    stop = next(v for v in verdicts if v.action == "stop")
    assert verdicts.index(stop) == 60  # 30 min grace + 30 min idle


def test_high_demand_halves_the_idle_timeout() -> None:
    r = rules(startup_grace=timedelta(0))
    assert in_high_demand(7, 8, r) and not in_high_demand(6, 8, r)
    verdicts = run(r, [idle(m) for m in range(0, 31)], high_demand=True)
    stop = next(v for v in verdicts if v.action == "stop")
    assert verdicts.index(stop) == 15 and "high demand" in stop.message


def test_runtime_warnings_then_stop() -> None:
    r = rules(max_runtime=timedelta(hours=4), idle_timeout=None)
    verdicts = run(r, [busy(m) for m in range(0, 241, 10)])
    assert [v.warnings for v in verdicts if v.warnings] == [("runtime-75",), ("runtime-90",)]
    assert verdicts[-1].action == "stop" and verdicts[-1].reason == "MaxRuntime"


def test_mig_slices_are_idle_without_compute_processes() -> None:
    r = rules()
    assert Check(
        at=T0, gpu_utilization=(None,), mig_busy=(False,), cpu_percent=0, network_bytes=0
    ).idle(r)
    assert not Check(at=T0, mig_busy=(True,)).idle(r)
    assert not Check(at=T0, network_bytes=parse_quantity_bytes("2Mi")).idle(r)


@given(st.lists(st.booleans(), min_size=1, max_size=120))
def test_never_stopped_for_idleness_before_the_timeout(pattern: list[bool]) -> None:
    r = rules(startup_grace=timedelta(0), consecutive_checks=3)
    checks = [idle(m) if quiet else busy(m) for m, quiet in enumerate(pattern)]
    for minute, verdict in enumerate(run(r, checks)):
        if verdict.action == "stop":
            assert verdict.reason == "Idle"
            streak = 0
            for quiet in reversed(pattern[: minute + 1]):
                if not quiet:
                    break
                streak += 1
            assert streak - 1 >= 30  # idle minutes since the streak began reached the timeout
