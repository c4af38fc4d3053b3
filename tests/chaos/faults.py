"""Carrying out one planned fault, and measuring how the system came back from it.

Each fault runs to completion (the killed process is back) before the next one;
what it measured goes into the run's report. The pauses here (how long a killed
replica stays down, how long the apiserver stays stopped) are the fault itself;
every wait for the system's answer is a condition with a deadline.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from controller.devcluster.process import wait_until
from tests.chaos.plan import Fault
from tests.chaos.rig import IDENTITIES, Rig


def _led_since(rig: Rig, since: datetime) -> bool:
    """A running replica holds the Lease and renewed it after ``since``."""
    try:
        lease = rig.lease()
    except Exception:
        return False
    alive = {i for i, r in rig.replicas.items() if r.process.alive()}
    renewed = lease.renew_time
    return lease.holder_identity in alive and renewed is not None and renewed > since


def _reported_since(rig: Rig, since: datetime) -> bool:
    """The agent wrote its status (a heartbeat) after ``since``."""
    try:
        heartbeat = (rig.gpunode().get("status") or {}).get("agent", {}).get("heartbeatTime")
    except Exception:
        return False
    return heartbeat is not None and datetime.fromisoformat(heartbeat) >= since


def kill_operator(rig: Rig, fault: Fault) -> dict[str, Any]:
    """SIGKILL the leader (or the follower), keep it down, restart it under the same identity.

    Then wait until a running replica leads (renewed the Lease after the kill): the
    restarted one, which finds its own identity in the Lease and leads again at once,
    or the other, once the dead leader's Lease ran out.
    """
    holder = rig.lease().holder_identity
    if fault.victim == "leader" and holder in IDENTITIES:
        victim = holder
    else:
        victim = next(i for i in IDENTITIES if i != holder)
    role = "leader" if victim == holder else "follower"
    killed_at, started = datetime.now(UTC), time.monotonic()
    rig.kill_replica(victim)
    time.sleep(fault.restart_after_s)  # the fault: how long it stays down
    rig.start_replica(victim)
    back = time.monotonic() - started
    wait_until(lambda: _led_since(rig, killed_at), 120, f"a replica to lead after {victim} died")
    return {
        "action": "operator",
        "killedAt": killed_at.strftime("%H:%M:%S.%f")[:-3],
        "victim": victim,
        "role": role,
        "downSeconds": round(back, 2),
        "leaderAfter": rig.lease().holder_identity,
        "ledAgainSeconds": round(time.monotonic() - started, 2),
    }


def kill_agent(rig: Rig, down_s: float = 1.0) -> dict[str, Any]:
    """SIGKILL the agent while its holders run, start it again, wait for its report."""
    started = time.monotonic()
    argv = rig.kill_agent()
    time.sleep(down_s)  # the fault: nobody enforces, nobody answers the runtime wrapper
    restarted_at = datetime.now(UTC).replace(microsecond=0)
    rig.start_agent(argv)
    running = time.monotonic() - started
    wait_until(lambda: _reported_since(rig, restarted_at), 120, "the restarted agent to report")
    return {
        "action": "agent",
        "startedSeconds": round(running, 2),
        "reportedSeconds": round(time.monotonic() - started, 2),
    }


def outage(rig: Rig, fault: Fault) -> dict[str, Any]:
    """Stop the apiserver for the fault's length; with ``agent_kill``, the agent is killed
    a third of the way in and started again while the apiserver is still down, so it
    must start from its saved policy. Then measure how long until a replica leads again."""
    started = time.monotonic()
    rig.cluster.stop_apiserver()
    result: dict[str, Any] = {"action": "outage", "seconds": fault.outage_s}
    if fault.agent_kill:
        time.sleep(fault.outage_s / 3)  # the outage goes on
        argv = rig.kill_agent()
        time.sleep(min(3.0, fault.outage_s / 6))  # the agent stays down
        rig.start_agent(argv)
        result["agentRestartedWithoutApiserver"] = True
    left = fault.outage_s - (time.monotonic() - started)
    if left > 0:
        time.sleep(left)  # the rest of the outage
    rig.cluster.start_apiserver()
    back_at, back = datetime.now(UTC), time.monotonic()
    result["apiserverStartSeconds"] = round(back - started - fault.outage_s, 2)
    wait_until(lambda: _led_since(rig, back_at), 180, "a replica to lead after the outage")
    result["ledAgainSeconds"] = round(time.monotonic() - back, 2)
    wait_until(
        lambda: _reported_since(rig, back_at.replace(microsecond=0)),
        180,
        "the agent to report after the outage",
    )
    result["agentReportedSeconds"] = round(time.monotonic() - back, 2)
    # Nobody restarts a replica here (a kubelet would): one that gave up during the
    # outage is a finding, not a victim for the next kill.
    result["replicasDownAfter"] = sorted(
        identity for identity, replica in rig.replicas.items() if not replica.process.alive()
    )
    return result


def carry_out(rig: Rig, fault: Fault) -> dict[str, Any]:
    if fault.action == "operator":
        return kill_operator(rig, fault)
    if fault.action == "agent":
        return kill_agent(rig)
    return outage(rig, fault)
