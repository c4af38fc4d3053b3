"""`kubectl ds01 status | request | why | who | usage`: what every user needs."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes.client.exceptions import ApiException

from controller.api.base import API_VERSION, GROUP, VERSION
from controller.api.kinds import GPUGrant
from controller.cli.ds01 import views
from controller.cli.ds01.common import (
    OK,
    REFUSED,
    TIMEOUT,
    CliError,
    Terminal,
    connection_flags,
    emit_data,
    emit_table,
    handled,
    output_flags,
)
from controller.cli.ds01.history import usage_command
from controller.cli.ds01.session import Session
from controller.cli.ds01.table import paint
from controller.policy.explain import PodView, explain_grant, explain_other, explain_pod
from controller.policy.pods import parse_pod
from controller.policy.requestcheck import screen
from controller.policy.units import parse_duration

DECIDED = ("Active", "Scheduled", "Denied", "Invalid", "Expired", "Revoked")


def session_of(args: argparse.Namespace) -> Session:
    return Session(args.kubeconfig, args.context)


def now() -> datetime:
    return datetime.now(UTC)


# -- status ---------------------------------------------------------------------------


@handled
def status(args: argparse.Namespace) -> int:
    session = session_of(args)
    term = Terminal.detect()
    moment = now()
    if args.all_accounts:
        docs = session.all_published()
        if args.output in ("json", "yaml"):
            emit_data(term, [d.to_wire() for d in docs], args.output)
        else:
            emit_table(
                term, views.ACCOUNT_HEADERS, views.account_rows(docs, moment), args.no_headers
            )
        return OK
    if args.user:
        namespace = session.account_by_user(args.user).namespace
    else:
        namespace = session.my_namespace(args.namespace)
    doc = session.published(namespace)
    grants = session.grants(namespace)
    if args.output in ("json", "yaml"):
        emit_data(term, views.status_data(doc, grants, moment), args.output)
        return OK
    wide = args.output == "wide"
    for label, cell in views.summary(doc, moment):
        head = paint(f"{label}:".ljust(9), "bold", term.colour)
        term.print(f"{head} {paint(cell.text, cell.style, term.colour)}")
    term.print()
    emit_table(term, ["LIMIT", "VALUE", "SOURCE"], views.limit_rows(doc, wide), args.no_headers)
    term.print()
    if grants:
        headers = views.GRANT_HEADERS + (views.GRANT_WIDE if wide else [])
        emit_table(term, headers, views.grant_rows(grants, moment, wide), args.no_headers)
    else:
        term.print(
            "No grants. Ask for GPUs with `kubectl ds01 request --gpus 1 --for 24h --reason ...`."
        )
    exemptions = views.exemption_rows(doc)
    if exemptions:
        term.print()
        emit_table(term, ["EXEMPTION", "FROM", "CATEGORY", "EXPIRES"], exemptions, args.no_headers)
    return OK


# -- request --------------------------------------------------------------------------


def _grant_body(args: argparse.Namespace, user: str, namespace: str) -> dict[str, Any]:
    gpus: dict[str, Any] = {"count": args.gpus}
    if args.mig:
        gpus["migProfile"] = args.mig
    spec: dict[str, Any] = {
        "subject": {"kind": "User", "name": user},
        "gpus": gpus,
        "reason": args.reason,
        "duration": args.duration,
    }
    if args.host:
        spec["access"] = "Host"
    placement: dict[str, Any] = {}
    if args.node:
        placement["nodeName"] = args.node
    if args.reserve and not args.host:
        placement["reserve"] = True
    if placement:
        spec["placement"] = placement
    metadata: dict[str, Any] = {"namespace": namespace}
    if args.name:
        metadata["name"] = args.name
    else:
        metadata["generateName"] = "gpu-"
    return {"apiVersion": API_VERSION, "kind": "GPUGrant", "metadata": metadata, "spec": spec}


@handled
def request(args: argparse.Namespace) -> int:
    if args.host and not args.node:
        raise CliError("--host needs --node: host access is to devices on one node", 2)
    try:
        parse_duration(args.duration)
    except ValueError as error:
        raise CliError(f"--for: {error}", 2) from None
    session = session_of(args)
    term = Terminal.detect()
    namespace = session.my_namespace(args.namespace)
    doc = session.published(namespace)
    body = _grant_body(args, doc.user, namespace)
    model = GPUGrant.model_validate(
        {**body, "metadata": {"name": args.name or "gpu-new", "namespace": namespace}}
    )
    verdict = screen(model, doc, session.grants(namespace), now())
    if verdict.refusal is not None:
        term.print(f"refused ({verdict.state}): {verdict.refusal}")
        return REFUSED
    if args.dry_run:
        term.print(_expectation(verdict.waits_for))
        return OK
    created = session.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "gpugrants", body
    )
    name = created["metadata"]["name"]
    term.print(f"gpugrant/{name} created in {namespace}: {_expectation(verdict.waits_for)}")
    if not args.wait:
        return OK
    return _wait(session, term, namespace, name, args.timeout)


def _expectation(waits_for: list[str]) -> str:
    if waits_for:
        return "it will wait for an approver: " + "; ".join(waits_for)
    return "within your policy: the operator approves it"


def _wait(session: Session, term: Terminal, namespace: str, name: str, timeout: str) -> int:
    deadline = time.monotonic() + parse_duration(timeout).total_seconds()
    grant = session.grant(namespace, name)
    while True:
        state = grant.status.state if grant.status else None
        if state in DECIDED:
            break
        if time.monotonic() > deadline:
            term.print(
                f"still {state or 'undecided'} after {timeout}: {views.grant_message(grant)}"
            )
            return TIMEOUT
        time.sleep(0.5)
        grant = session.grant(namespace, name)
    doc = session.published(namespace)
    events = session.events(namespace, name, "GPUGrant")
    term.print(f"{state}: {explain_grant(grant, events, doc, now())}")
    return OK if state in ("Active", "Scheduled") else REFUSED


# -- why --------------------------------------------------------------------------------


@handled
def why(args: argparse.Namespace) -> int:
    session = session_of(args)
    term = Terminal.detect()
    moment = now()
    namespace, name = session.my_namespace(args.namespace), args.name
    if "/" in name:
        namespace, name = name.split("/", 1)
    doc = _published_or_none(session, namespace)
    if args.kind in (None, "grant"):
        try:
            grant = session.grant(namespace, name)
        except ApiException as error:
            if error.status != 404 or args.kind == "grant":
                raise
        else:
            events = session.events(namespace, name, "GPUGrant")
            term.print(explain_grant(grant, events, doc, moment))
            return OK
    if args.kind in (None, "pod"):
        try:
            pod = session.core.read_namespaced_pod(name, namespace)
        except ApiException as error:
            if error.status != 404 or args.kind == "pod":
                raise
        else:
            view = _pod_view(session, pod)
            term.print(explain_pod(view, session.events(namespace, name, "Pod"), doc, moment))
            return OK
    other = explain_other(name, session.events(namespace, name))
    if other is None:
        raise CliError(f"nothing named {name!r} in {namespace}: no GPUGrant, pod or Events")
    term.print(other)
    return OK


def _published_or_none(session: Session, namespace: str) -> Any:
    try:
        return session.published(namespace)
    except CliError:
        return None


def _pod_view(session: Session, pod: Any) -> PodView:
    body = session.api.sanitize_for_serialization(pod)
    parsed = parse_pod(body)
    started, node = None, None
    for gpu_node in session.nodes():
        for workload in (gpu_node.status.workloads if gpu_node.status else None) or ():
            if workload.kind == "Pod" and (workload.namespace, workload.name) == (
                parsed.namespace,
                parsed.name,
            ):
                started, node = workload.started_at, gpu_node.metadata.name
    owner = f"{parsed.owner.kind}/{parsed.owner.name}" if parsed.owner else None
    return PodView(
        name=parsed.name,
        namespace=parsed.namespace,
        phase=(body.get("status") or {}).get("phase", "Unknown"),
        gpu_requests=parsed.gpu_requests(),
        annotations=parsed.annotations,
        owner=owner,
        created=parsed.created,
        started=started,
        node=node,
        workload_type="job" if parsed.owner and parsed.owner.kind == "Job" else "pod",
    )


# -- who --------------------------------------------------------------------------------


@handled
def who(args: argparse.Namespace) -> int:
    session = session_of(args)
    term = Terminal.detect()
    nodes = [n for n in session.nodes() if not args.node or n.metadata.name == args.node]
    if args.node and not nodes:
        raise CliError(f"no GPUNode named {args.node!r}")
    rows = views.who_rows(nodes, now())
    if args.output in ("json", "yaml"):
        data = [
            dict(zip(views.WHO_HEADERS, (getattr(c, "text", c) for c in row), strict=True))
            for row in rows
        ]
        emit_data(term, data, args.output)
        return OK
    emit_table(term, views.WHO_HEADERS, rows, args.no_headers)
    return OK


# -- registration ------------------------------------------------------------------------


def register(commands: Any) -> None:
    conn = connection_flags()
    p = commands.add_parser(
        "status",
        parents=[conn, output_flags("json", "yaml", "wide")],
        help="my limits, allowance, budget, rates, grants and exemptions",
    )
    who_group = p.add_mutually_exclusive_group()
    who_group.add_argument("--user", help="another user's account (approvers and admins)")
    who_group.add_argument(
        "-A", "--all-accounts", action="store_true", help="every account, one line each"
    )
    p.set_defaults(run=status)

    p = commands.add_parser(
        "request",
        parents=[conn],
        help="ask for GPUs: create a GPUGrant (checked against your published policy first)",
    )
    p.add_argument(
        "--gpus",
        type=int,
        default=1,
        help="devices: whole GPUs, or MIG slices with --mig (default 1)",
    )
    p.add_argument("--mig", metavar="PROFILE", help="MIG profile of each slice, e.g. 2g.20gb")
    p.add_argument(
        "--for",
        dest="duration",
        default="24h",
        metavar="DURATION",
        help="how long, e.g. 72h (default 24h)",
    )
    p.add_argument("--reason", required=True, help="why: shown to approvers")
    p.add_argument(
        "--host", action="store_true", help="Host access: use the GPUs directly on --node"
    )
    p.add_argument("--node", help="the node (required with --host)")
    p.add_argument(
        "--reserve", action="store_true", help="hold concrete devices for the whole window"
    )
    p.add_argument("--name", help="the grant's name (default: generated)")
    p.add_argument("--dry-run", action="store_true", help="only check it against your policy")
    p.add_argument("--wait", action="store_true", help="wait until it is decided")
    p.add_argument("--timeout", default="5m", help="how long --wait waits (default 5m)")
    p.set_defaults(run=request)

    p = commands.add_parser(
        "why", parents=[conn], help="why a grant or pod is pending, refused, stopped or about to be"
    )
    p.add_argument("name", metavar="GRANT|POD", help="a GPUGrant or pod name (NAMESPACE/NAME too)")
    p.add_argument("--kind", choices=["grant", "pod"], help="look only for this kind")
    p.set_defaults(run=why)

    p = commands.add_parser(
        "who", parents=[conn, output_flags("json", "yaml")], help="who holds each GPU and MIG slice"
    )
    p.add_argument("--node", help="only this node")
    p.set_defaults(run=who)

    p = commands.add_parser(
        "usage",
        parents=[conn, output_flags("csv", "json", "yaml")],
        help="GPU-hours used vs granted, unused reserved and reaped idle time (sreport-style)",
    )
    p.add_argument(
        "--since", default="30d", help="start: a duration back (30d, 12h) or a date (2026-01-01)"
    )
    p.add_argument("--until", help="end: a date or time (default: now)")
    p.add_argument("--by", choices=["user", "group", "node"], default="user")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--user", help="another user's account (admins)")
    scope.add_argument("-A", "--all-accounts", action="store_true", help="every account (admins)")
    p.set_defaults(run=usage_command)


def since_of(text: str, moment: datetime) -> datetime:
    """``30d`` / ``12h`` back from ``moment``, or an ISO date or time (UTC when naive)."""
    if text and text[-1] == "d" and text[:-1].isdigit():
        return moment - timedelta(days=int(text[:-1]))
    try:
        return moment - parse_duration(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(
            f"{text!r} is neither a duration (30d, 12h) nor a date (2026-01-01)", 2
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
