"""`kubectl ds01 onboard | import ds01 | audit`: the admin's day."""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from controller.api.account import (
    ANNOTATION_GROUPS,
    ANNOTATION_LINUX_USER,
    ANNOTATION_USER,
    LABEL_USER,
    Account,
    label_value,
)
from controller.api.base import API_VERSION, GROUP, VERSION
from controller.cli.ds01 import auditview
from controller.cli.ds01.common import (
    OK,
    REFUSED,
    USAGE,
    CliError,
    Terminal,
    connection_flags,
    emit_data,
    emit_table,
    handled,
    output_flags,
)
from controller.cli.ds01.session import Session, conventional_namespace
from controller.cli.ds01.table import Style, paint
from controller.policy import ds01import
from controller.runtime.audit import read_records
from controller.runtime.auditchain import Anchor, matching_anchor, raw_lines
from controller.runtime.auditchain import verify as check_trail
from controller.runtime.audittrail import AuditKeyError, read_key

OWNER_BINDING = "ds01-account-owner"
USER_ROLE = "ds01-user"


# -- onboard ------------------------------------------------------------------------


def account_of(user: str, groups: list[str], linux_user: str | None, namespace: str) -> Account:
    try:
        return Account(namespace=namespace, user=user, groups=tuple(groups), linux_user=linux_user)
    except ValidationError as error:
        first = error.errors()[0]
        flag = {"user": "USER", "groups": "--groups", "linux_user": "--linux-user"}.get(
            str(first["loc"][0]), str(first["loc"][0])
        )
        raise CliError(f"{flag}: {first['msg']}", USAGE) from None


def namespace_meta(account: Account) -> dict[str, Any]:
    """The labels and annotations that make a namespace this account (only ours)."""
    annotations = {ANNOTATION_USER: account.user, ANNOTATION_GROUPS: ",".join(account.groups)}
    if account.linux_user:
        annotations[ANNOTATION_LINUX_USER] = account.linux_user
    return {"labels": {LABEL_USER: label_value(account.user)}, "annotations": annotations}


def binding_body(account: Account) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": OWNER_BINDING, "namespace": account.namespace},
        "subjects": [
            {"kind": "User", "name": account.user, "apiGroup": "rbac.authorization.k8s.io"}
        ],
        "roleRef": {
            "kind": "ClusterRole",
            "name": USER_ROLE,
            "apiGroup": "rbac.authorization.k8s.io",
        },
    }


def _ours(meta: Any) -> dict[str, Any]:
    """The account keys a stored namespace carries (for comparison)."""
    labels = {k: v for k, v in (meta.labels or {}).items() if k == LABEL_USER}
    keys = (ANNOTATION_USER, ANNOTATION_GROUPS, ANNOTATION_LINUX_USER)
    annotations = {k: v for k, v in (meta.annotations or {}).items() if k in keys}
    return {"labels": labels, "annotations": annotations}


def _existing_namespace(session: Session, user: str) -> str | None:
    found = session.core.list_namespace(label_selector=f"{LABEL_USER}={label_value(user)}")
    for ns in found.items:
        if (ns.metadata.annotations or {}).get(ANNOTATION_USER, label_value(user)) == user:
            return str(ns.metadata.name)
    return None


def plan_account(session: Session, account: Account) -> list[ds01import.Change]:
    """What onboarding ``account`` would change."""
    try:
        ns = session.core.read_namespace(account.namespace)
        current: dict[str, Any] | None = _ours(ns.metadata)
        owner = (ns.metadata.labels or {}).get(LABEL_USER)
        if owner is not None and owner != label_value(account.user):
            raise CliError(
                f"namespace {account.namespace} is the account of {owner!r}, not "
                f"{account.user!r}; pass --namespace"
            )
    except ApiException as error:
        if error.status != 404:
            raise
        current = None
    desired = namespace_meta(account)
    if current is not None and ANNOTATION_LINUX_USER not in desired["annotations"]:
        # Onboarding again without --linux-user keeps the login already set.
        kept = current["annotations"].get(ANNOTATION_LINUX_USER)
        if kept:
            desired["annotations"][ANNOTATION_LINUX_USER] = kept
    changes = [ds01import.change(f"Namespace/{account.namespace}", current, desired)]
    try:
        rb = session.rbac.read_namespaced_role_binding(OWNER_BINDING, account.namespace)
        stored: dict[str, Any] | None = {
            "subjects": [
                {"kind": s.kind, "name": s.name, "apiGroup": s.api_group} for s in rb.subjects or ()
            ],
            "roleRef": {
                "kind": rb.role_ref.kind,
                "name": rb.role_ref.name,
                "apiGroup": rb.role_ref.api_group,
            },
        }
    except ApiException as error:
        if error.status != 404:
            raise
        stored = None
    wanted = {k: v for k, v in binding_body(account).items() if k in ("subjects", "roleRef")}
    changes.append(
        ds01import.change(f"RoleBinding/{account.namespace}/{OWNER_BINDING}", stored, wanted)
    )
    return changes


def apply_account(session: Session, account: Account, changes: list[ds01import.Change]) -> None:
    ns_change, rb_change = changes
    meta = namespace_meta(account)
    if ns_change.action == "create":
        session.core.create_namespace(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": account.namespace, **meta},
            }
        )
    elif ns_change.action == "update":
        session.core.patch_namespace(account.namespace, {"metadata": meta})
    if rb_change.action == "create":
        session.rbac.create_namespaced_role_binding(account.namespace, binding_body(account))
    elif rb_change.action == "update":
        # roleRef cannot change in place.
        session.rbac.delete_namespaced_role_binding(OWNER_BINDING, account.namespace)
        session.rbac.create_namespaced_role_binding(account.namespace, binding_body(account))


@handled
def onboard(args: argparse.Namespace) -> int:
    session = Session(args.kubeconfig, args.context)
    term = Terminal.detect()
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    namespace = (
        args.namespace
        or _existing_namespace(session, args.user)
        or conventional_namespace(args.user)
    )
    account = account_of(args.user, groups, args.linux_user, namespace)
    changes = plan_account(session, account)
    if not args.dry_run:
        apply_account(session, account, changes)
    for item in changes:
        verb = {"create": "created", "update": "configured", "unchanged": "unchanged"}[item.action]
        dry = " (dry run)" if args.dry_run and item.action != "unchanged" else ""
        term.print(f"{item.what.lower()} {verb}{dry}")
    return OK


# -- import ds01 ---------------------------------------------------------------------


def _members(directory: Path | None) -> dict[str, list[str]]:
    if directory is None:
        return {}
    out: dict[str, list[str]] = {}
    for file in sorted(directory.glob("*.members")):
        lines = [line.split("#", 1)[0].strip() for line in file.read_text().splitlines()]
        out[file.stem] = [line for line in lines if line]
    return out


def _stored_limit(session: Session, name: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        body = session.custom.get_cluster_custom_object(GROUP, VERSION, "gpuratelimits", name)
    except ApiException as error:
        if error.status != 404:
            raise
        return None, None
    return body.get("spec") or {}, body["metadata"]["resourceVersion"]


@handled
def import_ds01(args: argparse.Namespace) -> int:
    try:
        document = yaml.safe_load(Path(args.file).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise CliError(f"{args.file}: {error}", USAGE) from None
    try:
        plan = ds01import.translate(document, _members(args.members_dir), args.domain)
    except ds01import.DS01FileError as error:
        raise CliError(f"{args.file}: {error}", USAGE) from None
    session = Session(args.kubeconfig, args.context)
    term = Terminal.detect()
    applied = 0
    for name, spec in plan.limits.items():
        stored, version = _stored_limit(session, name)
        item = ds01import.change(f"GPURateLimit/{name}", stored, spec)
        _show(term, item)
        if args.apply and item.action != "unchanged":
            body: dict[str, Any] = {
                "apiVersion": API_VERSION,
                "kind": "GPURateLimit",
                "metadata": {"name": name},
                "spec": spec,
            }
            if version is None:
                session.custom.create_cluster_custom_object(GROUP, VERSION, "gpuratelimits", body)
            else:
                body["metadata"]["resourceVersion"] = version
                session.custom.replace_cluster_custom_object(
                    GROUP, VERSION, "gpuratelimits", name, body
                )
            applied += 1
    for wanted in plan.accounts:
        namespace = _existing_namespace(session, wanted.user) or conventional_namespace(wanted.user)
        account = account_of(wanted.user, [wanted.group], wanted.linux_user, namespace)
        changes = plan_account(session, account)
        for item in changes:
            _show(term, item)
        if args.apply:
            apply_account(session, account, changes)
            applied += sum(1 for c in changes if c.action != "unchanged")
    for note in plan.notes:
        term.print(f"note: {note}")
    if args.apply:
        term.print(f"applied: {applied} objects created or changed")
    else:
        term.print("dry run: nothing was changed; run again with --apply to apply")
    return OK


def _show(term: Terminal, item: ds01import.Change) -> None:
    term.print(f"{item.action:<9} {item.what}")
    if item.diff:
        for line in item.diff.splitlines():
            style: Style = (
                "green" if line.startswith("+") else "red" if line.startswith("-") else ""
            )
            term.print("  " + paint(line, style, term.colour))


# -- audit ----------------------------------------------------------------------------


def _trail_path(args: argparse.Namespace) -> Path:
    path = args.file or os.environ.get("DS01_AUDIT_LOG")
    if not path:
        raise CliError(
            "--file: where is the audit log? The operator writes it to its --audit-log "
            "($DS01_AUDIT_LOG); in a cluster, copy it out of the operator pod first",
            USAGE,
        )
    if not Path(path).exists() and not list(Path(path).parent.glob(Path(path).name + ".*")):
        raise CliError(f"--file: {path} does not exist")
    return Path(path)


@handled
def audit(args: argparse.Namespace) -> int:
    from controller.cli.ds01.student import since_of

    if args.action == "verify":
        return verify(args)
    path = _trail_path(args)
    since = since_of(args.since, datetime.now(UTC)) if args.since else None
    records = read_records(path)
    chosen = [r for r in records if auditview.matches(r, since, args.user, args.type)]
    term = Terminal.detect()
    if args.output in ("json", "yaml"):
        emit_data(term, chosen, args.output)
        return OK
    emit_table(term, auditview.HEADERS, auditview.rows(chosen), args.no_headers)
    return OK


def _anchor(args: argparse.Namespace) -> Anchor | None:
    """The checkpoint kept outside the trail: given, or read from the cluster."""
    if args.anchor:
        seq, _, chain = args.anchor.partition(":")
        if not seq.isdigit() or len(chain) != 64:
            raise CliError("--anchor: give SEQ:SHA256 (as `kubectl get` shows it)", USAGE)
        return Anchor(int(seq), chain)
    if not args.anchor_from:
        return None
    session = Session(args.kubeconfig, args.context)
    kind, _, name = args.anchor_from.partition("/")
    if kind == "node":
        node = session.custom.get_cluster_custom_object(GROUP, VERSION, "gpunodes", name)
        kept = ((node.get("status") or {}).get("agent") or {}).get("auditAnchor")
        if not kept:
            raise CliError(f"GPUNode {name} keeps no audit anchor (its agent has no --audit-key)")
        return Anchor(int(kept["seq"]), str(kept["chain"]))
    namespace, _, configmap = name.partition("/")
    if kind != "configmap" or not configmap:
        raise CliError("--anchor-from: node/NAME or configmap/NAMESPACE/NAME", USAGE)
    data = session.core.read_namespaced_config_map(configmap, namespace).data or {}
    anchors = [_parse_anchor(value) for value in data.values()]
    return matching_anchor([a for a in anchors if a is not None], raw_lines(_trail_path(args)))


def _parse_anchor(value: str) -> Anchor | None:
    seq, _, chain = value.partition(":")
    return Anchor(int(seq), chain) if seq.isdigit() and len(chain) == 64 else None


def verify(args: argparse.Namespace) -> int:
    """`ds01 audit verify`: the chain, the signatures, the anchor; exit 1 on any break."""
    path = _trail_path(args)
    try:
        key = read_key(Path(args.key_file)) if args.key_file else None
    except AuditKeyError as error:
        raise CliError(str(error).replace("--audit-key", "--key-file"), USAGE) from None
    report = check_trail(raw_lines(path), key, _anchor(args))
    term = Terminal.detect()
    term.print(f"{path}: {report.summary()}")
    if report.legacy:
        term.print(f"  {report.legacy} record(s) from before the trail was chained")
    for problem in report.problems:
        term.print("  " + paint(f"BROKEN: {problem}", "red", term.colour))
    if key is None:
        term.print("  (no --key-file: checkpoint signatures were not checked)")
    return OK if report.ok else REFUSED


def register(commands: Any) -> None:
    conn = connection_flags()
    p = commands.add_parser(
        "onboard", parents=[conn], help="create or update a user's account (idempotent)"
    )
    p.add_argument("user", metavar="USER", help="the user name as the cluster authenticates it")
    p.add_argument("--groups", required=True, help="comma-separated lab groups, e.g. student")
    p.add_argument("--linux-user", help="the user's Linux login on GPU nodes (Host access, Docker)")
    p.add_argument("--dry-run", action="store_true", help="show what would change")
    p.set_defaults(run=onboard)

    p = commands.add_parser("import", help="migrate from another system")
    sub = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    q = sub.add_parser(
        "ds01", parents=[conn], help="DS01's resource-limits.yaml: limits and accounts"
    )
    q.add_argument("file", metavar="FILE", help="DS01's config/resource-limits.yaml")
    q.add_argument("--members-dir", type=Path, help="DS01's config/groups (<group>.members files)")
    q.add_argument("--domain", help="append @DOMAIN to DS01 logins to make user names")
    q.add_argument("--apply", action="store_true", help="apply (default: show the diff only)")
    q.set_defaults(run=import_ds01)

    p = commands.add_parser(
        "audit",
        parents=[output_flags("json", "yaml"), conn],
        help="read the audit trail across rotations, or verify it (audit verify)",
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=("list", "verify"),
        default="list",
        help="list records (default), or verify the chain, signatures and anchor",
    )
    p.add_argument("--key-file", help="verify: the trail's signing key (the --audit-key file)")
    p.add_argument("--anchor", help="verify: the checkpoint kept outside the trail, SEQ:SHA256")
    p.add_argument(
        "--anchor-from",
        help="verify: read it from the cluster: node/NAME (an agent's) or "
        "configmap/NAMESPACE/NAME (the operator's: configmap/ds01-system/ds01-audit-anchor)",
    )
    p.add_argument("--file", help="the audit log (default: $DS01_AUDIT_LOG)")
    p.add_argument("--since", help="only records since: 7d, 12h or a date")
    p.add_argument("--user", help="only records about this user")
    p.add_argument("--type", help="event type, category (grant) or glob (quota.budget_*)")
    p.set_defaults(run=audit)
