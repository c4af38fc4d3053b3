"""The chaos run (issue 12, item 7): grant churn while the operator, apiserver and agent fail.

One scenario, two sizes: `tests/chaos/test_chaos.py` runs it in CI at a reduced
size and asserts every check; `python -m benchmarks.chaos` runs it at full size
and prints the same checks and the numbers. `plan.py` draws what happens from a
seed; `rig.py` starts the world; `churn.py` sends the grant operations;
`faults.py` breaks things; `observe.py` watches during the run; `trails.py`
checks the audit trails. After the last fault and operation, the run waits (a
condition with a deadline) until every grant is in the state its spec implies,
then checks:

- **converged**: each grant in its expected state, decided for its current
  generation, deleted ones gone; node specs hold exactly the live grants' devices;
  no reserving grant waits while a device it could have is free; the agent applied
  its node's current spec;
- **no device reserved twice**, sampled through the run and at the end;
- **no revocation for lack of data**: no revocation entry (sampled and at the end)
  from a grant the churn did not end, and no agent record of ending GPU use (only
  the holders use GPUs, and their grants never end);
- **no running container restarted**: the holders' state, pid and pid start time
  unchanged (sampled through every fault, the outage included), and they can still
  open their GPU, while a container of nobody's account cannot;
- **the audit trails verify**: each replica's against its own anchor, the agent's
  against its GPUNode's; no transition recorded twice across the replicas; the
  records lost to SIGKILLs within the documented bound.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.devcluster import agentnode
from controller.devcluster.controlplane import LocalCluster
from controller.devcluster.dockerd import IMAGE
from controller.devcluster.process import wait_until
from controller.runtime.audit import read_records
from tests.chaos import faults, trails
from tests.chaos.churn import Churn
from tests.chaos.observe import (
    LIVE,
    Sampler,
    held_twice,
    holder_changes,
    reserved_twice,
    unjustified_revocations,
)
from tests.chaos.plan import PREFIX, Plan
from tests.chaos.rig import AGENT_NODE, IDENTITIES, SIMULATED, Rig, start


def settle_seconds(plan: Plan) -> float:
    """How long the run waits for every grant to converge after the churn and faults: the
    longest expiry (40 s) and a pass over every grant, with room for a slow machine."""
    return 120.0 + 0.2 * plan.sizes.grants


@dataclass
class Outcome:
    plan: Plan
    seconds: dict[str, float] = field(default_factory=dict)
    faults: list[dict[str, Any]] = field(default_factory=list)
    churn: dict[str, Any] = field(default_factory=dict)
    looks: dict[str, int] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)
    states: dict[str, int] = field(default_factory=dict)
    records: dict[str, int] = field(default_factory=dict)
    lost_records: int = 0
    verified: list[trails.Verified] = field(default_factory=list)
    foreign_agents: list[str] = field(default_factory=list)
    """Other agents that ran on this host meanwhile: they may end our holders (a shared host
    is not a node; CI runs one test at a time)."""

    def failed(self) -> list[str]:
        return [name for name, found in self.problems.items() if found]


def _grants(rig: Rig) -> list[dict[str, Any]]:
    items = rig.listing("gpugrants", 30)
    return [g for g in items if g["metadata"]["name"].startswith((PREFIX, "hold-"))]


def _nodes(rig: Rig) -> list[dict[str, Any]]:
    return [rig.gpunode(name) for name in (AGENT_NODE, *SIMULATED)]


def _key(g: dict[str, Any]) -> tuple[str, str]:
    return g["metadata"]["namespace"], g["metadata"]["name"]


def not_converged(rig: Rig, plan: Plan) -> list[str]:
    """Every way the cluster differs from what the plan implies (empty once converged)."""
    grants = {_key(g): g for g in _grants(rig)}
    found, waiting = _grants_differ(rig, plan, grants)
    return found + _nodes_differ(_nodes(rig), grants, waiting)


def _grants_differ(
    rig: Rig, plan: Plan, grants: dict[tuple[str, str], dict[str, Any]]
) -> tuple[list[str], bool]:
    """Grants not in their expected state, or not decided for their generation; and whether
    a reserving grant waits for devices."""
    found: list[str] = []
    waiting = False
    for p in plan.grants:
        g = grants.get((rig.accounts[p.user].namespace, p.name))
        if p.expected is None:
            found += [f"{p.name} ({p.kind}) still exists"] if g is not None else []
            continue
        if g is None:
            found.append(f"{p.name} ({p.kind}) is gone")
            continue
        status = g.get("status") or {}
        allowed = {"Active", "Approved"} if p.kind == "reserve" else {p.expected}
        if status.get("state") not in allowed:
            found.append(f"{p.name} ({p.kind}) is {status.get('state')}, not {sorted(allowed)}")
        waiting = waiting or (p.kind == "reserve" and status.get("state") == "Approved")
        if status.get("observedGeneration") != g["metadata"]["generation"]:
            found.append(f"{p.name} not decided for generation {g['metadata']['generation']}")
    for holder in rig.holders:
        g = grants.get((holder.account.namespace, holder.grant)) or {}
        if (g.get("status") or {}).get("state") != "Active":
            found.append(f"{holder.container}'s grant is not Active")
    return found, waiting


def _nodes_differ(
    nodes: list[dict[str, Any]], grants: dict[tuple[str, str], dict[str, Any]], waiting: bool
) -> list[str]:
    """Node specs that do not reserve exactly the live grants' devices; devices left free
    while a reserving grant waits; an agent that has not applied its node's spec."""
    held = set()
    for (namespace, name), g in grants.items():
        status = g.get("status") or {}
        if status.get("state") in LIVE:
            for a in status.get("allocations") or ():
                held |= {(a["node"], d["uuid"], f"{namespace}/{name}") for d in a["devices"]}
    reserved = set()
    for n in nodes:
        for r in n["spec"].get("reservations") or ():
            source = f"{r['source']['namespace']}/{r['source']['name']}"
            reserved.add((n["metadata"]["name"], r["deviceUUID"], source))
    found = [f"reserved in a node spec, held by no live grant: {r}" for r in reserved - held]
    found += [f"held by a live grant, not in its node's spec: {h}" for h in held - reserved]
    whole = {
        (n["metadata"]["name"], d["uuid"])
        for n in nodes
        for d in (n.get("status") or {}).get("devices") or ()
        if "migInstances" not in d and d.get("health") == "Healthy"
    }
    free = whole - {(node, uuid) for node, uuid, _ in held}
    if waiting and free:
        found.append(f"reserving grants wait while {len(free)} devices are free: {sorted(free)}")
    agent = nodes[0]
    if (agent.get("status") or {}).get("appliedGeneration") != agent["metadata"]["generation"]:
        found.append(f"the agent has not applied {AGENT_NODE}'s spec")
    return found


def run(workdir: Path, plan: Plan, say: Any = print) -> Outcome:
    """Start everything in ``workdir``, run ``plan``, check, stop everything."""
    outcome = Outcome(plan)
    started = time.monotonic()
    # Every request during the outage would log urllib3's retries: the run counts them.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    try:
        with LocalCluster(workdir) as cluster:
            rig = start(cluster, plan.sizes.users, plan.sizes.holders)
            outcome.seconds["setup"] = round(time.monotonic() - started, 1)
            say(f"chaos: set up in {outcome.seconds['setup']}s; seed {plan.seed}")
            try:
                _run(rig, plan, outcome, say)
            finally:
                for holder in rig.holders:
                    rig.docker("rm", "-f", holder.container, check=False)
    finally:
        shutil.rmtree(agentnode.run_dir(workdir), ignore_errors=True)
    outcome.seconds["total"] = round(time.monotonic() - started, 1)
    return outcome


def _run(rig: Rig, plan: Plan, outcome: Outcome, say: Any) -> None:
    churn = Churn(plan, rig.accounts, rig.approver, deadline_s=plan.sizes.outage_s + 180)
    sampler = Sampler(rig, plan)
    t0 = time.monotonic()
    churn.start(t0)
    sampler.start(t0)
    try:
        for fault in plan.faults:
            delay = t0 + fault.at - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the plan's schedule
            at = round(time.monotonic() - t0, 1)
            under_churn = churn.done < churn.total
            result = {"at": at, "underChurn": under_churn, **faults.carry_out(rig, fault)}
            outcome.faults.append(result)
            say(f"chaos: {result}")
        outcome.seconds["faults"] = round(time.monotonic() - t0, 1)
        churn.join(plan.churn_s + plan.sizes.outage_s + 600)
        outcome.seconds["churn"] = round((churn.finished_at or time.monotonic()) - t0, 1)
        settling = time.monotonic()
        with contextlib.suppress(TimeoutError):  # reported below, as the check's findings
            wait_until(lambda: not not_converged(rig, plan), settle_seconds(plan), "convergence", 1)
        outcome.seconds["settled"] = round(time.monotonic() - settling, 1)
    finally:
        sampler.stop()
    outcome.churn = {
        "operations": churn.total,
        "retries": churn.retries,
        "errors": len(churn.errors),
        "issued": churn.issued,
    }
    outcome.looks = dict(sampler.looks)
    outcome.foreign_agents = sorted(sampler.foreign)
    _check(rig, plan, outcome, churn, sampler)


def _check(rig: Rig, plan: Plan, outcome: Outcome, churn: Churn, sampler: Sampler) -> None:
    problems = outcome.problems
    problems["churn operations refused"] = churn.errors
    problems["not converged"] = not_converged(rig, plan)
    problems["replica gave up during an outage"] = [
        f"{name} (outage at {f['at']}s)"
        for f in outcome.faults
        if f["action"] == "outage"
        for name in f.get("replicasDownAfter", [])
    ]
    grants, nodes = _grants(rig), _nodes(rig)
    outcome.states = dict(sorted(_count(g.get("status", {}).get("state") for g in grants).items()))
    seen = {name: [f"at {t}s: {p}" for t, p in found] for name, found in sampler.violations.items()}
    problems["device reserved twice"] = (
        seen.get("reserved twice (node spec)", [])
        + seen.get("held twice (grant status)", [])
        + reserved_twice(nodes)
        + held_twice(grants, datetime.now(UTC))
    )
    agent_endings = [
        f"{r['event_type']} {r['user']}: {(r.get('details') or {}).get('message', '')}"
        for r in read_records(rig.node.audit_log)
        if r["event_type"] in trails.AGENT_ENDINGS
    ]
    problems["revocation for lack of data"] = (
        seen.get("revocation not from an ended grant", [])
        + unjustified_revocations(nodes, plan)
        + agent_endings
    )
    restarted = seen.get("holder changed", [])
    for holder in rig.holders:
        restarted += holder_changes(rig, holder)
        if not rig.opens(holder.container):
            restarted.append(f"{holder.container} can no longer open its GPU")
        if not _holds(holder.baseline["pid"]):
            restarted.append(f"{holder.container}'s process no longer holds its GPU")
    problems["running container restarted"] = restarted
    problems["enforcement off after the run"] = _unentitled_open(rig)
    _check_trails(rig, outcome, grants)


def _holds(pid: int) -> bool:
    """Whether the holder's first process still has its GPU open (descriptor 3)."""
    try:
        return os.readlink(f"/proc/{pid}/fd/3").endswith("gpu0")
    except OSError:
        return False


def _unentitled_open(rig: Rig) -> list[str]:
    """A container of nobody's account must not open a GPU nobody holds: enforcement is on."""
    held = {h.minor for h in rig.holders}
    devices = (rig.gpunode().get("status") or {}).get("devices") or ()
    minor = next(
        d["device"]["minor"]
        for d in devices
        if "migInstances" not in d and d["device"]["minor"] not in held
    )
    tried = rig.docker(
        "run", "--rm", "--network", "none", "--user", "65534",
        "--device", f"{rig.node.gpu_path(minor)}:/dev/gpu0",
        IMAGE, "sh", "-c", "exec 3<>/dev/gpu0 && echo OPEN",
        check=False,
    )  # fmt: skip
    return [f"an unentitled container opened GPU minor {minor}"] if "OPEN" in tried.stdout else []


def _check_trails(rig: Rig, outcome: Outcome, grants: list[dict[str, Any]]) -> None:
    for replica in rig.replicas.values():
        replica.terminate()  # SIGTERM: a last checkpoint, its anchor posted
    anchors = rig.anchors()
    problems = outcome.problems
    problems["audit trail does not verify"] = []
    for identity in IDENTITIES:
        replica = rig.replicas[identity]
        if not replica.audit.exists():
            continue  # it never led, so it never wrote: nothing to verify
        if identity not in anchors:
            problems["audit trail does not verify"].append(f"{identity}: no anchor kept")
            continue
        outcome.verified.append(
            trails.verify(replica.audit, rig.operator_key, "--anchor", anchors[identity])
        )
    if rig.node.audit_log.exists():  # the probe's refusal, at least, was recorded
        # Signed within the agent's checkpoint interval; the anchor reaches its GPUNode
        # with the status write after that.
        def anchored() -> bool:
            covered = trails.signed_through(rig.node.audit_log)
            return covered is not None and (_agent_anchor(rig) or 0) >= covered

        wait_until(anchored, 60, "the agent's trail to be signed and anchored")
        outcome.verified.append(
            trails.verify(
                rig.node.audit_log,
                rig.agent_key,
                "--anchor-from",
                f"node/{AGENT_NODE}",
                "--kubeconfig",
                str(rig.cluster.kubeconfig),
            )
        )
    problems["audit trail does not verify"] += [
        f"{v.trail}: {v.output}" for v in outcome.verified if not v.ok
    ]
    records = {i: rig.replicas[i].records() for i in IDENTITIES}
    outcome.records = {i: len(r) for i, r in records.items()}
    problems["transition recorded twice"] = [
        f"{k}: {n} times" for k, n in trails.duplicated(records).items()
    ]
    lost = trails.missing(records, grants)
    outcome.lost_records = len(lost)
    kills = sum(1 for f in outcome.faults if f["action"] in ("operator", "outage"))
    bound = trails.WRITER_THREADS * kills
    problems["records lost beyond the bound"] = (
        [f"{len(lost)} > {bound}: {lost[:10]}"] if len(lost) > bound else []
    )


def _agent_anchor(rig: Rig) -> int | None:
    status = rig.gpunode().get("status") or {}
    anchor = (status.get("agent") or {}).get("auditAnchor") or {}
    return anchor.get("seq")


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[str(value)] = counts.get(str(value), 0) + 1
    return counts


def summary(outcome: Outcome) -> dict[str, Any]:
    """The numbers a run reports (`docs/chaos.md` keeps them)."""
    sizes = outcome.plan.sizes
    kills = [f for f in outcome.faults if f["action"] == "operator"]
    leader = [f for f in kills if f["role"] == "leader"]
    led = [f["ledAgainSeconds"] for f in leader]
    outages = [f for f in outcome.faults if f["action"] == "outage"]
    agents = [f for f in outcome.faults if f["action"] == "agent"]
    return {
        "seed": outcome.plan.seed,
        "grants": sizes.grants,
        "users": sizes.users,
        "holders": sizes.holders,
        "churnPaceSeconds": round(outcome.plan.churn_s, 1),
        "operatorKills": len(kills),
        "leaderKills": len(leader),
        "leaderMovedToTheOther": sum(1 for f in leader if f["leaderAfter"] != f["victim"]),
        "killsUnderChurn": sum(1 for f in outcome.faults if f["underChurn"]),
        "ledAgainAfterLeaderKillSeconds": _spread(led),
        "outage": outages[0] if outages else None,
        "agentKills": len(agents)
        + sum(1 for f in outages if f.get("agentRestartedWithoutApiserver")),
        "agentReportedAfterKillSeconds": _spread([f["reportedSeconds"] for f in agents]),
        "seconds": outcome.seconds,
        "churn": outcome.churn,
        "looks": outcome.looks,
        "finalStates": outcome.states,
        "records": outcome.records,
        "lostRecords": outcome.lost_records,
        "verified": {
            v.trail: v.output.splitlines()[0] if v.output else "" for v in outcome.verified
        },
        "problems": {name: len(found) for name, found in outcome.problems.items()},
        "foreignAgents": outcome.foreign_agents,
    }


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "min": min(values),
        "median": round(statistics.median(values), 2),
        "max": max(values),
    }
