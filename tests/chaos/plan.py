"""What the chaos run does and when, drawn from one seed: the grant churn and the faults.

Pure: no I/O, so the same seed gives the same run (`test_chaos.py` checks it) and a
failing run can be replayed with `python -m benchmarks.chaos --seed N`. Times are
offsets in seconds from the start of the churn; the churn is paced over
`Sizes.churn_s` (a deliberate pace, like the length of the outage: not a wait for
state), and each fault runs to completion before the next starts, so a fault that
takes longer than planned delays the later ones rather than overlapping them.

The churn mix, each kind with the state its spec implies once everything settled:

| kind | what the run does | expected |
|---|---|---|
| `active` | auto-approved 1h grant, allowance only | `Active` |
| `reserve` | auto-approved 1h grant reserving a contested device | `Active`, or `Approved` waiting while every device is held |
| `expire` | auto-approved grant of 10-40 s (half of them reserving) | `Expired` |
| `revoke` | auto-approved 1h grant, then revoked by its owner (half reserving) | `Revoked` |
| `delete` | auto-approved 1h grant, then deleted by its owner (half reserving) | gone |
| `pending` | 3h, beyond the policy's 2h `maxDuration`: waits for an approver | `Pending` |
| `deny` | 3h, then denied by an approver | `Denied` |
| `approve` | 3h, then approved by an approver | `Active` |
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["active", "reserve", "expire", "revoke", "delete", "pending", "deny", "approve"]
MIX: dict[Kind, int] = {
    "active": 28,
    "reserve": 18,
    "expire": 15,
    "revoke": 12,
    "delete": 11,
    "pending": 6,
    "deny": 5,
    "approve": 5,
}
"""Relative weights of the kinds."""
EXPECTED: dict[Kind, str | None] = {
    "active": "Active",
    "reserve": "Active",
    "expire": "Expired",
    "revoke": "Revoked",
    "delete": None,
    "pending": "Pending",
    "deny": "Denied",
    "approve": "Active",
}
"""The state each kind converges to (None: the grant is gone)."""
FOLLOW_UP: dict[Kind, str] = {
    "revoke": "revoke",
    "delete": "delete",
    "deny": "deny",
    "approve": "approve",
}
"""The second operation of the kinds that have one (after the grant was created)."""
ENDED: frozenset[Kind] = frozenset({"expire", "revoke", "delete"})
"""Kinds whose grants end: the only sources a node's revocation entry may name."""
PREFIX = "chaos-"

Action = Literal["operator", "outage", "agent"]
Victim = Literal["leader", "follower"]


@dataclass(frozen=True)
class Sizes:
    """How big a run is. The CI tier and `benchmarks.chaos` differ only here."""

    grants: int = 150
    users: int = 15
    operator_kills: int = 4
    outage_s: float = 20.0
    agent_kills: int = 2
    holders: int = 2
    """Containers holding GPUs on the agent's node for the whole run."""
    churn_s: float | None = None
    """The churn's pace; None: long enough for the faults (`churn_seconds`)."""

    def churn_seconds(self) -> float:
        """Room for every fault while grants still churn: a kill and its takeover take
        about 10 s on the development machine, an agent restart about 8 s."""
        if self.churn_s is not None:
            return self.churn_s
        return max(45.0, 10.0 * self.operator_kills + self.outage_s + 8.0 * self.agent_kills + 15)


@dataclass(frozen=True)
class GrantPlan:
    index: int
    kind: Kind
    user: int
    """Index of the churn account that owns it."""
    reserve: bool
    duration: str
    create_at: float
    follow_at: float | None
    """When the kind's second operation (revoke, delete, deny, approve) is sent."""

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.index:04d}"

    @property
    def expected(self) -> str | None:
        return EXPECTED[self.kind]


@dataclass(frozen=True)
class Fault:
    at: float
    action: Action
    victim: Victim = "leader"
    """`operator`: which replica is killed (by its role at that moment)."""
    restart_after_s: float = 0.0
    """`operator`: how long the killed replica stays down (the other may take over)."""
    outage_s: float = 0.0
    """`outage`: how long the apiserver stays stopped."""
    agent_kill: bool = False
    """`outage`: the agent is also killed and restarted while the apiserver is down."""


@dataclass(frozen=True)
class Plan:
    seed: int
    sizes: Sizes
    churn_s: float
    grants: list[GrantPlan] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)

    def of_kind(self, *kinds: Kind) -> list[GrantPlan]:
        return [g for g in self.grants if g.kind in kinds]


def make_plan(seed: int, sizes: Sizes, lease_s: float = 5.0) -> Plan:
    """The run's churn and faults, from ``seed`` alone."""
    rng = random.Random(seed)
    churn_s = sizes.churn_seconds()
    kinds = list(MIX)
    weights = [MIX[k] for k in kinds]
    creating = churn_s * 0.8  # the last fifth is left for follow-ups
    grants = []
    for index in range(sizes.grants):
        kind = rng.choices(kinds, weights)[0]
        reserve = kind == "reserve" or (kind in ENDED and rng.random() < 0.5)
        if kind == "expire":
            duration = f"{rng.randint(10, 40)}s"
        elif kind in ("pending", "deny", "approve"):
            duration = "3h"
        else:
            duration = "1h"
        create_at = rng.uniform(0, creating)
        follow_at = None
        if kind in FOLLOW_UP:
            follow_at = min(churn_s, create_at + rng.uniform(0.5, 12.0))
        grants.append(
            GrantPlan(
                index, kind, rng.randrange(sizes.users), reserve, duration, create_at, follow_at
            )
        )
    faults = [
        Fault(
            at=rng.uniform(0.05, 0.95) * churn_s,
            action="operator",
            victim=victim,
            restart_after_s=round(down_s, 2),
        )
        for victim, down_s in _kills(rng, sizes.operator_kills, lease_s)
    ]
    agent_kills = sizes.agent_kills
    if sizes.outage_s > 0:
        faults.append(
            Fault(
                at=rng.uniform(0.3, 0.6) * churn_s,
                action="outage",
                outage_s=sizes.outage_s,
                agent_kill=agent_kills > 0,
            )
        )
        agent_kills -= 1 if agent_kills > 0 else 0
    faults += [
        Fault(at=rng.uniform(0.05, 0.95) * churn_s, action="agent") for _ in range(agent_kills)
    ]
    faults.sort(key=lambda f: f.at)
    return Plan(seed, sizes, churn_s, grants, faults)


def _kills(rng: random.Random, count: int, lease_s: float) -> list[tuple[Victim, float]]:
    """Who each operator kill hits and how long it stays down, in shuffled blocks of four:
    twice the leader kept down past its Lease (the other replica takes over), once the
    leader restarted at once (it finds its own identity in the Lease and leads again
    before the Lease runs out), once the follower. So every run of four kills or more
    hands the Lease over both ways, whatever the seed."""
    kills: list[tuple[Victim, float]] = []
    while len(kills) < count:
        block: list[tuple[Victim, float]] = [
            ("leader", lease_s + 1.5),
            ("leader", lease_s + 1.5),
            ("leader", rng.uniform(0, 1.0)),
            ("follower", rng.uniform(0, lease_s + 1.5)),
        ]
        rng.shuffle(block)
        kills += block
    return kills[:count]
