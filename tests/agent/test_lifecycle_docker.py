"""Idle reclaim and runtime limits on a Docker host: real containers, real stops.

The agent judges every running GPU container once per lifecycle check, from
the GPU utilisation NVML reports (the fake's topology), the container's
cpuacct cgroup and its network namespace. Limits come from the owner's
effective GPURateLimit, exemptions from the GPUNode spec.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from controller.agent.lifecycle import DockerLifecycle
from controller.api.ratelimit import GPURateLimitSpec
from controller.devcluster.process import wait_until
from controller.policy.effective import NamedLimit
from controller.runtime.audit import read_records
from tests.agent.enforcehost import Node

AMY, BEN = "amy@lab.example", "ben@lab.example"


def fast_limits(*users: str, **docker: str) -> NamedLimit:
    """A limit with a seconds-long idle timeout for raw `docker run` containers."""
    spec = GPURateLimitSpec.model_validate(
        {
            "subjects": [{"kind": "User", "name": user} for user in users],
            "lifecycle": {
                "startupGrace": "0s",
                "idle": {
                    "gpuUtilizationBelowPercent": 5,
                    "cpuBelowPercent": 50,
                    "networkBelowBytes": "1Mi",
                    "consecutiveChecks": 2,
                },
                "byWorkloadType": [
                    {
                        "type": "docker",
                        "idleTimeout": "6s",
                        "maxRuntime": "1h",
                        "stopGracePeriod": "1s",
                        **docker,
                    }
                ],
            },
        }
    )
    return NamedLimit("fast-reclaim", spec)


def events(node: Node, event_type: str) -> list[dict[str, Any]]:
    if not node.audit.exists():
        return []
    records = read_records(node.audit)
    return [{**r["details"], "user": r["user"]} for r in records if r["event_type"] == event_type]


def running(node: Node, container_id: str) -> bool:
    container = node.engine.client.inspect(container_id)
    return container is not None and container.running


def check(node: Node) -> None:
    """One agent pass as the runner makes it: enforcement (finds containers), then a scan."""
    node.agent.enforce()
    node.agent.scan()


def test_idle_container_is_warned_then_stopped_while_busy_and_exempt_ones_run(
    node: Node,
) -> None:
    node.cluster.rate_limits = [fast_limits(AMY, BEN)]
    node.agent.lifecycle_every = timedelta(0)
    (idle_gpu, idle_path), (busy_gpu, busy_path), (kept_gpu, kept_path) = (
        node.gpu(2),
        node.gpu(3),
        node.gpu(4),
    )
    node.host.topology.gpu(3).util = 87
    node.host.write()
    idle = node.container(AMY, [idle_gpu], [idle_path])
    busy = node.container(AMY, [busy_gpu], [busy_path])
    exempt = node.container(BEN, [kept_gpu], [kept_path])
    node.policy(
        lifecycleExemptions=[
            {
                "user": BEN,
                "exemptFrom": ["IdleTimeout"],
                "source": {"kind": "GPUExemption", "name": "ben-thesis"},
            }
        ]
    )

    def idle_stopped() -> bool:
        check(node)
        return not running(node, idle)

    wait_until(idle_stopped, 60, "the idle container to be stopped")

    warnings = [e for e in events(node, "maintenance.idle_warning") if e["container"] == idle]
    given = {w for e in warnings for w in e["warnings"]}
    assert given == {"idle-80", "idle-95"}, warnings
    kills = [e for e in events(node, "maintenance.idle_kill") if e["container"] == idle]
    assert len(kills) == 1 and kills[0]["user"] == AMY and kills[0]["stopGraceSeconds"] == 1
    assert running(node, busy) and running(node, exempt)
    touched = {e["container"] for e in events(node, "maintenance.idle_warning")}
    assert busy not in touched and exempt not in touched


def test_runtime_limit_stops_a_busy_container(node: Node) -> None:
    node.cluster.rate_limits = [fast_limits(AMY, maxRuntime="5s", idleTimeout="Unlimited")]
    node.agent.lifecycle_every = timedelta(0)
    gpu, path = node.gpu(5)
    node.host.topology.gpu(5).util = 99
    node.host.write()
    container = node.container(AMY, [gpu], [path])
    node.policy()

    def stopped() -> bool:
        check(node)
        return not running(node, container)

    wait_until(stopped, 60, "the container to be stopped at its maximum runtime")
    kills = [e for e in events(node, "maintenance.runtime_kill") if e["container"] == container]
    assert len(kills) == 1 and kills[0]["reason"] == "MaxRuntime"
    assert events(node, "maintenance.idle_kill") == []


def test_audit_mode_reports_the_stop_it_would_make_and_stops_nothing(node: Node) -> None:
    node.cluster.rate_limits = [fast_limits(AMY)]
    node.agent.lifecycle_every = timedelta(0)
    gpu, path = node.gpu(6)
    container = node.container(AMY, [gpu], [path])
    node.policy(enforcement="Audit")
    started = datetime.now(UTC)

    def reported() -> bool:
        check(node)
        return any(e["container"] == container for e in events(node, "maintenance.would_stop"))

    wait_until(reported, 60, "Audit mode to report the idle stop it would make")
    assert running(node, container)
    assert events(node, "maintenance.idle_kill") == []
    assert datetime.now(UTC) - started >= timedelta(seconds=6)  # not before the idle timeout


def test_idle_clock_survives_an_agent_restart(node: Node, tmp_path: Path) -> None:
    """A restarted agent must not give an idle container a fresh timeout."""
    lifecycle = node.agent.lifecycle
    assert lifecycle is not None
    lifecycle.state_file = tmp_path / "lifecycle.json"
    node.cluster.rate_limits = [fast_limits(AMY, idleTimeout="1h")]
    node.agent.lifecycle_every = timedelta(0)
    gpu, path = node.gpu(7)
    container = node.container(AMY, [gpu], [path])
    node.policy()

    def streak() -> int:
        check(node)
        state = lifecycle._states.get(container)
        return state.idle_streak if state else 0

    wait_until(lambda: streak() >= 2, 30, "two idle checks in a row")
    before = lifecycle._states[container]
    restarted = DockerLifecycle(
        node.engine.client, lifecycle.notify, state_file=lifecycle.state_file
    )
    restarted._load()
    assert restarted._states[container] == before
    assert before.idle_since is not None and before.idle_streak >= 2
