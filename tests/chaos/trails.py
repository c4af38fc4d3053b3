"""The audit trails after the run: each verifies, and no transition was recorded twice.

Each operator replica writes its own chained, signed trail and keeps its latest
checkpoint under its own key of the ConfigMap `ds01-system/ds01-audit-anchor`;
the agent keeps its in its GPUNode's status. Each trail is checked with the
real `ds01 audit verify` against its own anchor (the replicas were stopped with
SIGTERM first, so their last checkpoint covers their last record).

Across the replicas' trails a grant's transition appears at most once. A leader
SIGKILLed mid-pass loses the records of writes the apiserver committed but
whose answer it had not read: at most one per writer thread (8) per kill
(`docs/operator.md`, "High availability"); the run reports how many it lost.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.runtime.audit import read_records
from controller.runtime.auditchain import CHECKPOINT
from tests.chaos.plan import PREFIX

WRITER_THREADS = 8
AGENT_ENDINGS = ("access.revoke_warning", "access.revoke", "access.end_unentitled")
"""What the agent records when it moves against GPU use: only holders use GPUs here."""


@dataclass(frozen=True)
class Verified:
    trail: str
    ok: bool
    output: str


def verify(trail: Path, key: Path, *anchor: str) -> Verified:
    """`ds01 audit verify` on one trail; ``anchor`` is `--anchor SEQ:SHA` or `--anchor-from`."""
    result = subprocess.run(
        [sys.executable, "-m", "controller.cli.main", "audit", "verify",
         "--file", str(trail), "--key-file", str(key), *anchor],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    return Verified(trail.name, result.returncode == 0, (result.stdout + result.stderr).strip())


def signed_through(trail: Path) -> int | None:
    """The last record the trail's checkpoints cover, once every record is covered; None while
    some record is not signed yet (the agent signs within its checkpoint interval)."""
    covers, last = 0, 0
    for r in read_records(trail, bookkeeping=True):
        if r["event_type"] == CHECKPOINT:
            covers = int(r["details"]["covers"])
        else:
            last = int(r["seq"])
    return covers if covers >= last else None


def _key(record: dict[str, Any]) -> tuple[str, str, bool]:
    """One transition of one grant: an approval (with `approvedBy`) is told apart from the
    state `Approved` that a grant waiting for devices enters."""
    details = record.get("details") or {}
    return (record["event_type"], str(details.get("grant")), "approvedBy" in details)


def _ours(record: dict[str, Any]) -> bool:
    name = str((record.get("details") or {}).get("grant", "")).split("/")[-1]
    return name.startswith((PREFIX, "hold-"))


def grant_records(trails: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [r for records in trails.values() for r in records if _ours(r)]


def duplicated(trails: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, str, bool], int]:
    counts = Counter(_key(r) for r in grant_records(trails))
    return {key: n for key, n in counts.items() if n > 1}


def missing(
    trails: dict[str, list[dict[str, Any]]], grants: list[dict[str, Any]]
) -> list[tuple[str, str, bool]]:
    """Transitions a grant that still exists went through that no trail recorded: its
    request, its approval (when approved) and the state it is in."""
    seen = {_key(r) for r in grant_records(trails)}
    expected = []
    for g in grants:
        status = g.get("status") or {}
        key = f"{g['metadata']['namespace']}/{g['metadata']['name']}"
        approved = any(
            c["type"] == "Approved" and c["status"] == "True"
            for c in status.get("conditions") or ()
        )
        expected.append(("grant.requested", key, False))
        if approved:
            expected.append(("grant.approved", key, True))
        expected.append((f"grant.{str(status.get('state')).lower()}", key, False))
    return [k for k in expected if k not in seen]
