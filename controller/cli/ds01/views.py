"""What `kubectl ds01` shows, as plain rows and dicts (pure: no I/O, no terminal).

Each function takes what the apiserver returned (parsed models) and the time,
and returns table rows (with styles) or the same facts as data for
``-o json|yaml``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from controller.api.accountpolicy import AccountPolicy
from controller.api.grant import NodeAllocation
from controller.api.kinds import GPUGrant, GPUNode
from controller.cli.ds01.table import Cell, Style
from controller.policy.conditions import find
from controller.policy.explain import ago, stamp
from controller.policy.units import parse_duration_limit

STATE_STYLE: dict[str, Style] = {
    "Active": "green",
    "Scheduled": "green",
    "Pending": "yellow",
    "Approved": "yellow",
    "Denied": "red",
    "Invalid": "red",
    "Revoked": "red",
    "Expired": "dim",
}
KEY_LIMITS = (
    "gpu.maxGPUEquivalents",
    "gpu.maxDevicesPerWorkload",
    "gpu.allowFullGPUs",
    "gpu.allowedMIGProfiles",
    "grants.approval",
    "grants.maxDuration",
    "grants.maxGPUEquivalents",
    "budget.gpuHours",
    "budget.window",
    "rates.workloadStartsPerHour",
    "rates.grantRequestsPerDay",
    "rates.maxWorkloads",
    "lifecycle.idleTimeout",
    "lifecycle.maxRuntime",
)


def number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") or "0"


def short_time(at: datetime | None) -> str:
    return at.strftime("%m-%d %H:%M") if at else "-"


# -- status ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetNow:
    """The budget as of now: the published figures grown at the published rate."""

    limit: float | None
    used: float
    left: float | None
    window: str
    source: str
    exhausted: bool
    exempt: bool
    refill_at: datetime | None
    """When GPU-hours next come back as the window moves (None: nothing to come back)."""
    refill_hours: float


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def budget_now(doc: AccountPolicy, now: datetime) -> BudgetNow:
    b = doc.budget
    grown = b.rate * max(0.0, (now - b.as_of).total_seconds() / 3600) if b.as_of else 0.0
    used = b.used_gpu_hours + grown
    limit = _float(b.gpu_hours)
    left = None if limit is None else max(0.0, limit - used)
    refill_at, refill_hours = None, 0.0
    window = _window(b.window)
    if b.exhausted and b.restores_at:
        refill_at = b.restores_at
    elif window is not None and b.buckets:
        first = b.buckets[0]
        refill_at, refill_hours = first.end + window, first.gpu_hours
    return BudgetNow(
        limit, used, left, b.window, b.source, b.exhausted, b.exempt, refill_at, refill_hours
    )


def _window(text: str) -> timedelta | None:
    try:
        return parse_duration_limit(text)
    except ValueError:
        return None


def summary(doc: AccountPolicy, now: datetime) -> list[tuple[str, Cell]]:
    """The head of `status`: label and one line each."""
    a = doc.allowance
    b = budget_now(doc, now)
    rates = doc.rates
    lines: list[tuple[str, Cell]] = [
        (
            "User",
            Cell(f"{doc.user}  groups: {', '.join(doc.groups) or '-'}  namespace: {doc.namespace}"),
        ),
        (
            "GPU",
            Cell(
                f"{a.in_use} of {a.total} GPU-equivalents in use, {a.remaining} left "
                f"(base {a.base} from {a.base_source}, granted {a.grants})",
                "red" if a.remaining == "0" else "",
            ),
        ),
    ]
    if b.limit is None:
        budget = Cell(f"{number(b.used)} GPU-hours used in the last {b.window}; no budget applies")
    else:
        text = (
            f"{number(b.used)} of {number(b.limit)} GPU-hours used in the last {b.window}, "
            f"{number(b.left or 0)} left (budget.gpuHours from {b.source})"
        )
        if b.exhausted:
            text = f"USED UP: {text}; new GPU pods refused until about {stamp(b.refill_at)}"
        elif b.refill_at is not None and b.refill_hours > 0:
            text += f"; {number(b.refill_hours)} come back {stamp(b.refill_at)}"
        if b.exempt:
            text += "; not enforced (GPUExemption from Budget)"
        budget = Cell(text, "red" if b.exhausted else "")
    lines.append(("Budget", budget))
    starts = len(rates.starts)
    rate_text = (
        f"{starts} workload start{'s' if starts != 1 else ''} in the last {rates.window} "
        f"(limit {rates.workload_starts_per_hour} from {rates.source}); "
        f"{rates.workloads} of {rates.max_workloads} pods; "
        f"grant requests per day: {rates.grant_requests_per_day}"
    )
    if rates.limited:
        rate_text = f"LIMITED until {stamp(rates.next_start_at)}: {rate_text}"
    lines.append(("Rates", Cell(rate_text, "red" if rates.limited else "")))
    over = find(doc.conditions, "OverUse")
    if over is not None and over.status == "True":
        lines.append(("Over use", Cell(over.message, "red")))
    return lines


def limit_rows(doc: AccountPolicy, wide: bool) -> list[list[str]]:
    paths = sorted(doc.limits) if wide else [p for p in KEY_LIMITS if p in doc.limits]
    rows = []
    for path in paths:
        entry = doc.limits[path]
        value = entry.value
        if isinstance(value, list):
            shown = ", ".join(map(str, value))
        elif isinstance(value, bool):
            shown = "true" if value else "false"  # as written in a GPURateLimit
        else:
            shown = str(value)
        rows.append([path, shown or "-", entry.source])
    return rows


def devices(allocations: Sequence[NodeAllocation] | None) -> str:
    parts = []
    for allocation in allocations or ():
        held = ",".join(
            f"{d.index if d.index is not None else '?'}"
            + (f"/{d.mig_profile}" if d.mig_profile else "")
            for d in allocation.devices
        )
        parts.append(f"{allocation.node}:{held}")
    return " ".join(parts) or "-"


def shape(grant: GPUGrant) -> str:
    gpus = grant.spec.gpus
    text = f"{gpus.count}x{gpus.mig_profile}" if gpus.mig_profile else f"{gpus.count}xGPU"
    return text + (" Host" if grant.spec.access == "Host" else "")


def grant_message(grant: GPUGrant) -> str:
    ready = find(grant.status.conditions if grant.status else None, "Ready")
    return ready.message if ready else "not decided yet"


def grant_rows(grants: Sequence[GPUGrant], now: datetime, wide: bool) -> list[list[Cell | str]]:
    rows: list[list[Cell | str]] = []
    for grant in sorted(
        grants, key=lambda g: (g.metadata.creation_timestamp or now, g.metadata.name)
    ):
        status = grant.status
        state = (status.state if status else None) or "New"
        window = status.window if status else None
        span = f"{short_time(window.start)} → {short_time(window.end)}" if window else "-"
        row: list[Cell | str] = [
            grant.metadata.name,
            Cell(state, STATE_STYLE.get(state, "")),
            shape(grant),
            span,
            devices(status.allocations if status else None),
        ]
        if wide:
            row += [grant.metadata.namespace or "", grant_message(grant)]
        rows.append(row)
    return rows


GRANT_HEADERS = ["GRANT", "STATE", "GPUS", "WINDOW (UTC)", "DEVICES"]
GRANT_WIDE = ["NAMESPACE", "WHY"]


def exemption_rows(doc: AccountPolicy) -> list[list[str]]:
    return [
        [
            e.name,
            ",".join(e.exempt_from),
            e.category,
            stamp(e.expires_at) if e.expires_at else "never",
        ]
        for e in doc.exemptions
    ]


def status_data(doc: AccountPolicy, grants: Sequence[GPUGrant], now: datetime) -> dict[str, Any]:
    """`status -o json|yaml`: the published document's facts as of now."""
    b = budget_now(doc, now)
    return {
        "user": doc.user,
        "groups": list(doc.groups),
        "namespace": doc.namespace,
        "allowance": doc.allowance.to_wire(),
        "budget": {
            "gpuHours": b.limit,
            "window": b.window,
            "source": b.source,
            "usedGPUHours": round(b.used, 4),
            "remainingGPUHours": None if b.left is None else round(b.left, 4),
            "exhausted": b.exhausted,
            "exempt": b.exempt,
            "refillAt": b.refill_at.isoformat() if b.refill_at else None,
            "refillGPUHours": round(b.refill_hours, 4),
        },
        "rates": {
            "workloadStarts": len(doc.rates.starts),
            "workloadStartsPerHour": doc.rates.workload_starts_per_hour,
            "limited": doc.rates.limited,
            "nextStartAt": doc.rates.next_start_at.isoformat() if doc.rates.next_start_at else None,
            "workloads": doc.rates.workloads,
            "maxWorkloads": doc.rates.max_workloads,
        },
        "limits": {p: {"value": e.value, "source": e.source} for p, e in doc.limits.items()},
        "grants": [
            {
                "name": g.metadata.name,
                "state": g.status.state if g.status else None,
                "gpus": shape(g),
                "start": g.status.window.start.isoformat()
                if g.status and g.status.window
                else None,
                "end": g.status.window.end.isoformat() if g.status and g.status.window else None,
                "devices": devices(g.status.allocations if g.status else None),
                "message": grant_message(g),
            }
            for g in grants
        ],
        "exemptions": [e.to_wire() for e in doc.exemptions],
        "conditions": {c.type: c.status for c in doc.conditions},
    }


ACCOUNT_HEADERS = [
    "USER",
    "GROUPS",
    "GPU IN USE",
    "ALLOWANCE",
    "BUDGET USED",
    "GRANTS",
    "PENDING",
    "FLAGS",
]


def account_rows(docs: Sequence[AccountPolicy], now: datetime) -> list[list[Cell | str]]:
    rows: list[list[Cell | str]] = []
    for doc in docs:
        b = budget_now(doc, now)
        flags = [c.type for c in doc.conditions if c.type != "Ready" and c.status == "True"]
        budget = f"{number(b.used)}/{number(b.limit)}" if b.limit is not None else number(b.used)
        rows.append(
            [
                doc.user,
                ",".join(doc.groups) or "-",
                doc.allowance.in_use,
                doc.allowance.total,
                budget,
                str(len(doc.grants)),
                str(len(doc.pending)),
                Cell(",".join(flags) or "-", "red" if flags else ""),
            ]
        )
    return rows


# -- who -----------------------------------------------------------------------------

WHO_HEADERS = [
    "NODE",
    "GPU",
    "DEVICE",
    "UTIL",
    "USER",
    "WORKLOAD",
    "PROCS",
    "SINCE",
    "RESERVED FOR",
]


def who_rows(nodes: Sequence[GPUNode], now: datetime) -> list[list[Cell | str]]:
    """One row per whole GPU and MIG slice, with who holds it (nvidia-smi with owners)."""
    rows: list[list[Cell | str]] = []
    for node in sorted(nodes, key=lambda n: n.metadata.name):
        status = node.status
        holders: dict[str, list[Any]] = {}
        for workload in (status.workloads if status else None) or ():
            for uuid in workload.devices:
                holders.setdefault(uuid, []).append(workload)
        reserved: dict[str, str] = {}
        for entry in node.spec.reservations or ():
            starts = entry.from_
            if entry.until > now and (starts is None or starts <= now):
                reserved[entry.device_uuid] = f"{entry.user} until {short_time(entry.until)}"
        for device in sorted((status.devices if status else None) or (), key=lambda d: d.index):
            slots: list[tuple[str, str, str]] = []
            if device.mig_enabled:
                slots += [(m.uuid, m.profile, m.health) for m in device.mig_instances or ()]
            else:
                slots.append((device.uuid, device.model, device.health))
            util = (
                f"{device.utilization_percent}%" if device.utilization_percent is not None else "-"
            )
            for uuid, what, health in slots:
                found = holders.get(uuid, [])
                users = ",".join(sorted({w.owner or "?" for w in found})) or "-"
                names = ",".join(sorted({w.name for w in found})) or "-"
                procs = sum(len(w.processes or ()) for w in found)
                since = min((w.started_at for w in found if w.started_at), default=None)
                label = what if health == "Healthy" else f"{what} ({health})"
                rows.append(
                    [
                        node.metadata.name,
                        str(device.index),
                        Cell(label, "red" if health != "Healthy" else ""),
                        util if not device.mig_enabled else "-",
                        Cell(users, "bold" if found else "dim"),
                        names,
                        str(procs) if found else "-",
                        ago(since, now) if since else "-",
                        reserved.get(uuid, "-"),
                    ]
                )
    return rows


# -- pending ------------------------------------------------------------------------

PENDING_HEADERS = ["AGE", "NAMESPACE", "GRANT", "USER", "GPUS", "FOR", "REASON", "WAITING BECAUSE"]


def pending_rows(grants: Sequence[GPUGrant], now: datetime) -> list[list[str]]:
    """Requests waiting for an approver, oldest first."""
    waiting = [g for g in grants if g.status is not None and g.status.state == "Pending"]
    waiting.sort(key=lambda g: (g.metadata.creation_timestamp or now, g.metadata.name))
    rows = []
    for grant in waiting:
        created = grant.metadata.creation_timestamp
        approved = find(grant.status.conditions if grant.status else None, "Approved")
        span = grant.spec.duration or (
            f"until {short_time(grant.spec.expires_at)}" if grant.spec.expires_at else "24h"
        )
        rows.append(
            [
                ago(created, now).removesuffix(" ago"),
                grant.metadata.namespace or "",
                grant.metadata.name,
                grant.spec.subject.name,
                shape(grant),
                span,
                grant.spec.reason,
                (approved.message if approved else "").removeprefix("waiting for an approver: "),
            ]
        )
    return rows
