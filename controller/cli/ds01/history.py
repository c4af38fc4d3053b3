"""`kubectl ds01 usage`: the usage history as an `sreport`-style table.

Reads the history ConfigMaps (`ds01-usage-YYYY-MM`) of the months the period
touches: the caller's own account, another user's (`--user`), or every
account (`-A`, admins). Only objects labelled as the operator's are read: a
user can create ConfigMaps in their namespace but not with that label.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from controller.api import names
from controller.api.accountpolicy import COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL
from controller.cli.ds01.common import (
    OK,
    CliError,
    Terminal,
    emit_csv,
    emit_data,
    emit_table,
    handled,
)
from controller.cli.ds01.session import Session
from controller.policy import usagehistory as uh
from controller.policy.explain import stamp
from controller.policy.usagereport import Row, report

HEADERS = {
    "user": ["USER", "GROUPS"],
    "group": ["GROUP", "USERS"],
    "node": ["NODE", "USERS"],
}
FIGURES = [
    "USED GPU-H",
    "GRANTED GPU-H",
    "USED/GRANTED",
    "UNUSED RESERVED GPU-H",
    "REAPED IDLE GPU-H",
]


def _number(value: float, precise: bool) -> str:
    """Two decimals for people (four below 0.01, so a short use is not shown as 0); four for
    scripts."""
    if precise or 0 < abs(value) < 0.01:
        return f"{value:.4f}"
    return f"{value:.2f}"


def rows(found: list[Row], by: str, precise: bool = False) -> list[list[str]]:
    out = []
    for row in found:
        second = (",".join(row.groups) or "-") if by == "user" else str(len(row.users))
        ratio = row.used_of_granted
        f = row.figures
        out.append(
            [
                row.key,
                second,
                *(_number(v, precise) for v in (f.used, f.granted)),
                "-" if ratio is None else f"{ratio:.0f}%",
                *(_number(v, precise) for v in (f.unused, f.reaped)),
            ]
        )
    return out


def records(
    session: Session, namespace: str | None, since: datetime, until: datetime
) -> list[uh.MonthRecord]:
    months = uh.months_between(since, until)
    selector = f"{COMPONENT_LABEL}={uh.COMPONENT},{names.USAGE_MONTH} in ({','.join(months)})"
    if namespace is None:
        found = session.core.list_config_map_for_all_namespaces(label_selector=selector)
    else:
        found = session.core.list_namespaced_config_map(namespace, label_selector=selector)
    out = []
    for item in found.items:
        if (item.metadata.labels or {}).get(MANAGED_BY_LABEL) != MANAGED_BY:
            continue
        try:
            record = uh.decode(item.data or {})
        except ValueError as error:
            where = f"{item.metadata.namespace}/{item.metadata.name}"
            raise CliError(f"usage history {where} is damaged: {error}") from None
        if record is not None:
            out.append(record)
    return out


@handled
def usage_command(args: argparse.Namespace) -> int:
    from controller.cli.ds01.student import since_of

    session = Session(args.kubeconfig, args.context)
    term = Terminal.detect()
    moment = datetime.now(UTC)
    until = since_of(args.until, moment) if args.until else moment
    since = since_of(args.since, moment)
    if since >= until:
        raise CliError(f"--since {args.since} is not before --until", 2)
    if args.all_accounts:
        namespace = None
    elif args.user:
        namespace = session.account_by_user(args.user).namespace
    else:
        namespace = session.my_namespace(args.namespace)
    found = report(records(session, namespace, since, until), since, until, args.by)
    headers = HEADERS[args.by] + FIGURES
    table = rows(found, args.by)
    if args.output == "csv":
        emit_csv(term, headers, rows(found, args.by, precise=True), args.no_headers)
        return OK
    if args.output in ("json", "yaml"):
        data: dict[str, Any] = {
            "since": since.isoformat(),
            "until": until.isoformat(),
            "by": args.by,
            "unit": "GPU-equivalent-hours",
            "rows": [
                {
                    "key": r.key,
                    "users": sorted(r.users),
                    "groups": list(r.groups),
                    "used": r.figures.used,
                    "granted": r.figures.granted,
                    "unusedReserved": r.figures.unused,
                    "reapedIdle": r.figures.reaped,
                }
                for r in found
            ],
        }
        emit_data(term, data, args.output)
        return OK
    if not args.no_headers:
        term.print(
            f"GPU usage {stamp(since)} - {stamp(until)}, by {args.by} (GPU-equivalent-hours)"
        )
        term.print()
    if not table:
        term.print("No GPU use recorded in this period.")
        return OK
    emit_table(term, headers, table, args.no_headers)
    return OK
