"""`kubectl ds01 approve | deny | extend | revoke | pending`: the approver's day.

Each decision is a merge patch of the grant's spec; who decided is stamped by
admission from the caller's identity, and admission refuses what the caller
may not do (their own grant, a non-approver deciding, changing an approved
request): those refusals come back word for word, exit code 1.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from controller.api import names
from controller.api.base import GROUP, VERSION
from controller.api.kinds import GPUGrant
from controller.cli.ds01 import views
from controller.cli.ds01.common import (
    OK,
    CliError,
    Terminal,
    connection_flags,
    emit_data,
    emit_table,
    handled,
    output_flags,
)
from controller.cli.ds01.session import Session
from controller.policy.explain import stamp
from controller.policy.units import parse_duration


def _find(args: argparse.Namespace) -> tuple[Session, GPUGrant]:
    session = Session(args.kubeconfig, args.context)
    return session, session.find_grant(args.grant, args.namespace)


"""Why an approver extended the grant (informational: the window itself is in spec)."""


def _patch(
    session: Session,
    grant: GPUGrant,
    spec: dict[str, Any],
    annotations: dict[str, str] | None = None,
) -> GPUGrant:
    patch: dict[str, Any] = {"spec": spec}
    if annotations:
        patch["metadata"] = {"annotations": annotations}
    body = session.custom.patch_namespaced_custom_object(
        GROUP, VERSION, grant.metadata.namespace, "gpugrants", grant.metadata.name, patch
    )
    return GPUGrant.model_validate(body)


def _label(grant: GPUGrant) -> str:
    where = f"{grant.metadata.namespace}/{grant.metadata.name}"
    return f"gpugrant {where} ({grant.spec.subject.name}, {views.shape(grant)})"


def _decide(args: argparse.Namespace, decision: str) -> int:
    session, grant = _find(args)
    state = grant.status.state if grant.status else None
    if grant.spec.approval is not None:
        raise CliError(
            f"{_label(grant)} was already {grant.spec.approval.decision.lower()} by "
            f"{grant.spec.approval.approved_by or 'the operator'}; decisions stand "
            "(revoke an approved grant instead)"
        )
    if state not in (None, "Pending"):
        raise CliError(f"{_label(grant)} is {state}, not waiting for a decision")
    _patch(session, grant, {"approval": {"decision": decision, "note": args.note}})
    Terminal.detect().print(f"{_label(grant)} {decision.lower()}")
    return OK


@handled
def approve(args: argparse.Namespace) -> int:
    return _decide(args, "Approved")


@handled
def deny(args: argparse.Namespace) -> int:
    return _decide(args, "Denied")


@handled
def extend(args: argparse.Namespace) -> int:
    session, grant = _find(args)
    window = grant.status.window if grant.status else None
    if window is None:
        raise CliError(f"{_label(grant)} has no window yet; wait for the operator to decide it")
    if args.until:
        try:
            end = datetime.fromisoformat(args.until.replace("Z", "+00:00"))
        except ValueError:
            raise CliError(f"--until: {args.until!r} is not a date or time", 2) from None
        end = end if end.tzinfo else end.replace(tzinfo=UTC)
    else:
        try:
            end = window.end + parse_duration(args.by)
        except ValueError as error:
            raise CliError(f"--by: {error}", 2) from None
    if end <= window.end:
        raise CliError(
            f"{stamp(end)} does not extend {_label(grant)}: it ends {stamp(window.end)}", 2
        )
    # expiresAt is absolute; the start stays what it was (the creation time when unset).
    spec: dict[str, Any] = {"duration": None, "expiresAt": end.isoformat().replace("+00:00", "Z")}
    # The approval (and its note) is frozen once given: the extension's note is an annotation.
    note = {names.EXTENSION_NOTE: f"until {stamp(end)}: {args.note}"} if args.note else None
    _patch(session, grant, spec, note)
    Terminal.detect().print(f"{_label(grant)} now ends {stamp(end)}")
    return OK


@handled
def revoke(args: argparse.Namespace) -> int:
    session, grant = _find(args)
    if grant.spec.revocation is not None:
        raise CliError(f"{_label(grant)} is already revoked: {grant.spec.revocation.reason}")
    _patch(session, grant, {"revocation": {"reason": args.note}})
    Terminal.detect().print(
        f"{_label(grant)} revoked: GPU use that depends on it ends after the grace period"
    )
    return OK


@handled
def pending(args: argparse.Namespace) -> int:
    session = Session(args.kubeconfig, args.context)
    term = Terminal.detect()
    grants = session.grants(args.namespace)
    rows = views.pending_rows(grants, datetime.now(UTC))
    if args.output in ("json", "yaml"):
        emit_data(
            term, [dict(zip(views.PENDING_HEADERS, r, strict=True)) for r in rows], args.output
        )
        return OK
    if not rows:
        term.print("No requests are waiting for an approver.")
        return OK
    emit_table(term, views.PENDING_HEADERS, rows, args.no_headers)
    return OK


def register(commands: Any) -> None:
    conn = connection_flags()
    for name, run, summary in (
        ("approve", approve, "approve a pending GPUGrant"),
        ("deny", deny, "deny a pending GPUGrant"),
        ("revoke", revoke, "end a GPUGrant early"),
    ):
        p = commands.add_parser(name, parents=[conn], help=summary)
        p.add_argument("grant", metavar="GRANT", help="its name, or NAMESPACE/NAME")
        p.add_argument("--note", required=True, help="why, for the requester")
        p.set_defaults(run=run)
    p = commands.add_parser("extend", parents=[conn], help="make an approved GPUGrant last longer")
    p.add_argument("grant", metavar="GRANT", help="its name, or NAMESPACE/NAME")
    until = p.add_mutually_exclusive_group(required=True)
    until.add_argument("--by", help="how much longer, e.g. 24h")
    until.add_argument("--until", help="the new end, e.g. 2026-06-01T12:00Z")
    p.add_argument("--note", help=f"why (kept in the grant's annotation {names.EXTENSION_NOTE})")
    p.set_defaults(run=extend)
    p = commands.add_parser(
        "pending",
        parents=[conn, output_flags("json", "yaml")],
        help="requests waiting for an approver, oldest first",
    )
    p.set_defaults(run=pending)
