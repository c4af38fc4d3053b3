"""Watching the run while it breaks: what must hold at every moment, sampled.

A sampler thread looks, on its own clock, at what the agents enforce (every
GPUNode's spec, twice a second), at the grants (every few seconds: a list is one
consistent snapshot) and at the holders' containers (their engine answers
without the apiserver, so they are watched through the outage too). Each look
that finds something wrong is kept, with when it was seen:

- a device reserved twice: two reservations of one device in a node's spec whose
  windows overlap, or two live grants holding one device in overlapping windows;
- a revocation for lack of data: a node's revocation entry whose source is not a
  grant the churn ended (expired, revoked or deleted);
- a holder container that stopped, restarted or whose process changed.

Looks that find the apiserver stopped are counted, not judged.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from urllib3.exceptions import HTTPError

from tests.chaos.plan import ENDED, PREFIX, Plan
from tests.chaos.rig import AGENT_NODE, Holder, Rig

LIVE = ("Active", "Scheduled", "Approved")
HOLDER_FIELDS = ("running", "pid", "startedAt", "restartCount", "pidStart")


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def reserved_twice(nodes: list[dict[str, Any]]) -> list[str]:
    """Devices with two reservations in one node's spec whose windows overlap."""
    found = []
    for node in nodes:
        by_device: dict[str, list[tuple[datetime, datetime, str]]] = {}
        for r in node.get("spec", {}).get("reservations") or ():
            start = _time(r["from"]) if r.get("from") else datetime.min.replace(tzinfo=UTC)
            source = r.get("source") or {}
            by_device.setdefault(r["deviceUUID"], []).append(
                (start, _time(r["until"]), f"{source.get('namespace')}/{source.get('name')}")
            )
        for uuid, spans in by_device.items():
            spans.sort()
            for a, b in itertools.pairwise(spans):
                if b[0] < a[1]:
                    found.append(f"{node['metadata']['name']} {uuid}: {a[2]} and {b[2]}")
    return found


def held_twice(grants: list[dict[str, Any]], now: datetime) -> list[str]:
    """Devices that two live grants hold at ``now``: approved, not ending, in their window."""
    holders: dict[str, list[str]] = {}
    for g in grants:
        status = g.get("status") or {}
        if status.get("state") not in LIVE or g["spec"].get("revocation"):
            continue
        if g["metadata"].get("deletionTimestamp"):
            continue
        end = (status.get("window") or {}).get("end")
        if end and _time(end) <= now:
            continue
        key = f"{g['metadata']['namespace']}/{g['metadata']['name']}"
        for a in status.get("allocations") or ():
            for d in a["devices"]:
                holders.setdefault(d["uuid"], []).append(key)
    return [f"{uuid}: {keys}" for uuid, keys in holders.items() if len(keys) > 1]


def unjustified_revocations(nodes: list[dict[str, Any]], plan: Plan) -> list[str]:
    """Revocation entries whose source grant the churn did not end."""
    ended = {g.name for g in plan.grants if g.kind in ENDED}
    found = []
    for node in nodes:
        for r in node.get("spec", {}).get("revocations") or ():
            name = (r.get("source") or {}).get("name", "")
            if name not in ended:
                found.append(f"{node['metadata']['name']}: {r.get('user')} {name}: {r['reason']}")
    return found


def holder_changes(rig: Rig, holder: Holder) -> list[str]:
    now = rig.container_state(holder.container)
    return [
        f"{holder.container} {k}: {holder.baseline[k]} -> {now[k]}"
        for k in HOLDER_FIELDS
        if now[k] != holder.baseline[k]
    ]


def foreign_agents(own_node: str) -> set[str]:
    """Other node agents running on this host (another test's, say): they enforce on the
    same host devices, so they may end our holders. Named in the report, never judged."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "agent" in argv and not any(a == f"--node={own_node}" for a in argv):
            found.add(next((a for a in argv if a.startswith("--node=")), "--node=?"))
    return found


@dataclass
class Sampler:
    rig: Rig
    plan: Plan
    node_every_s: float = 0.5
    grants_every: int = 6
    """Grants are listed every this many node looks (a list of 1,000 grants costs CPU)."""
    holders_every: int = 4
    looks: Counter[str] = field(default_factory=Counter)
    violations: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    foreign: set[str] = field(default_factory=set)
    """Other agents seen on this host during the run (`foreign_agents`)."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = 0.0

    def start(self, t0: float) -> None:
        self._t0 = t0
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _found(self, check: str, problems: list[str]) -> None:
        at = round(time.monotonic() - self._t0, 1)
        for problem in problems:
            self.violations.setdefault(check, []).append((at, problem))

    def _run(self) -> None:
        for tick in itertools.count():
            if self._stop.wait(self.node_every_s):
                return
            if tick % self.holders_every == 0:
                for holder in self.rig.holders:
                    self._found("holder changed", holder_changes(self.rig, holder))
                self.looks["holders"] += 1
                self.foreign |= foreign_agents(AGENT_NODE)
            try:
                self._look_at_the_cluster(tick)
            except (HTTPError, OSError):
                self.looks["apiserver unreachable"] += 1
            except Exception as error:
                self.looks[f"failed: {type(error).__name__}"] += 1

    def _look_at_the_cluster(self, tick: int) -> None:
        nodes = self.rig.listing("gpunodes", 5)
        self._found("reserved twice (node spec)", reserved_twice(nodes))
        self._found("revocation not from an ended grant", unjustified_revocations(nodes, self.plan))
        self.looks["node specs"] += 1
        if tick % self.grants_every == 0:
            now = datetime.now(UTC)
            grants = self.rig.listing("gpugrants")
            ours = [g for g in grants if g["metadata"]["name"].startswith((PREFIX, "hold-"))]
            self._found("held twice (grant status)", held_twice(ours, now))
            self.looks["grant lists"] += 1
