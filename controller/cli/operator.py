"""`ds01 operator`: the kopf operator (replicas elect one leader that writes)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from controller.cli import auditflags, leaderflags, options
from controller.cli.options import duration as _duration
from controller.cli.options import positive_duration as _positive_duration


def _run(args: argparse.Namespace) -> int:
    from controller.operator.main import OperatorOptions, run
    from controller.runtime import logs
    from controller.runtime.audittrail import AuditKeyError

    sources = options.resolve(args)  # flags, then $DS01_*, then defaults; exits 2 if bad
    logs.configure(args.log_level)
    options.log_effective("ds01.operator", args, sources)
    try:
        leader = leaderflags.settings(args)
    except ValueError as error:
        print(f"ds01 operator: {error}", file=sys.stderr)
        return 2
    try:
        settings = OperatorOptions(
            kubeconfig=args.kubeconfig,
            audit_log=args.audit_log,
            metrics_port=args.metrics_port,
            liveness=args.liveness,
            log_level=args.log_level,
            default_enforcement=args.default_enforcement,
            default_duration=args.default_duration,
            expiry_warning=args.expiry_warning,
            operator_user=args.operator_user,
            budget_bucket=args.budget_bucket,
            workload_starts_window=args.workload_starts_window,
            alert_cooldown=args.alert_cooldown,
            lifecycle_interval=args.lifecycle_interval,
            report_max_age=args.report_max_age,
            finished_grant_retention=args.finished_grant_retention,
            pod_security_enforce=args.pod_security_enforce,
            pod_security_warn=args.pod_security_warn,
            usage_interval=args.usage_interval,
            usage_retention=args.usage_retention,
            audit=auditflags.settings(args),
            audit_anchor=args.audit_anchor or None,
            **leader,
        )
        return run(settings)
    except AuditKeyError as error:
        print(f"ds01 operator: {error}", file=sys.stderr)
        return 2


def register(commands: Any) -> None:
    parser = commands.add_parser("operator", help="run the operator")
    parser.add_argument("--kubeconfig", type=Path, help="default: in-cluster, else $KUBECONFIG")
    parser.add_argument(
        "--audit-log", type=Path, help="JSON-lines audit file (default: to the log)"
    )
    parser.add_argument(
        "--metrics-port", type=options.port, help="serve Prometheus metrics on this port"
    )
    parser.add_argument(
        "--liveness", help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz"
    )
    parser.add_argument(
        "--log-level", type=options.log_level, default="INFO", help="DEBUG, INFO, WARNING, ERROR"
    )
    parser.add_argument(
        "--default-enforcement",
        choices=["Enforce", "Audit", "Off"],
        default="Enforce",
        help="mode of GPUNodes without an enforcement label",
    )
    parser.add_argument(
        "--default-duration",
        type=_duration,
        default="24h",
        help="window of grants that set neither duration nor expiresAt",
    )
    parser.add_argument(
        "--expiry-warning",
        type=_duration,
        default="1h",
        help="warn this long before a grant expires",
    )
    parser.add_argument(
        "--operator-user",
        default="system:serviceaccount:ds01-system:ds01-operator",
        help="the identity admission stamps on the operator's approvals",
    )
    parser.add_argument(
        "--budget-bucket",
        type=_positive_duration,
        default="1h",
        help="GPU-hour budgets are recorded in buckets of this length (use leaves the window "
        "at most one bucket late)",
    )
    parser.add_argument(
        "--workload-starts-window",
        type=_positive_duration,
        default="1h",
        help="the window rates.workloadStartsPerHour is counted over (shorten only for tests)",
    )
    parser.add_argument(
        "--alert-cooldown",
        type=_duration,
        default="4h",
        help="least time between two quota alerts of one measure and level",
    )
    parser.add_argument(
        "--lifecycle-interval",
        type=_duration,
        default="5m",
        help="between idle/max-runtime checks of GPU pods (0s: the operator reaps no pods); "
        "idle is confirmed over the policy's idle.consecutiveChecks checks",
    )
    parser.add_argument(
        "--report-max-age",
        type=_positive_duration,
        default="5m",
        help="GPU pods on a node whose agent has not reported for this long are not judged",
    )
    parser.add_argument(
        "--pod-security-enforce",
        choices=["baseline", "restricted"],
        default="baseline",
        help="Pod Security Admission level kept on account namespaces (an admin's "
        "gpu.ds01.io/pod-security annotation chooses another for one account)",
    )
    parser.add_argument(
        "--pod-security-warn",
        choices=["privileged", "baseline", "restricted"],
        default="restricted",
        help="Pod Security Admission level users are warned about and the audit log notes",
    )
    parser.add_argument(
        "--finished-grant-retention",
        type=options.duration_or_unlimited,
        default="720h",
        help="delete grants this long after they expired, were revoked or denied (their "
        "record stays in the audit log); Unlimited keeps them",
    )
    parser.add_argument(
        "--usage-interval",
        type=_duration,
        default="15s",
        help="between looks at every account's use for the usage history (0s: no history)",
    )
    parser.add_argument(
        "--usage-retention",
        type=_positive_duration,
        default="9600h",
        help="how long the usage history is kept (default 400 days)",
    )
    parser.set_defaults(run=_run)
    auditflags.add(parser)
    parser.add_argument(
        "--audit-anchor",
        default="ds01-system/ds01-audit-anchor",
        help="NAMESPACE/NAME of the ConfigMap the latest signed checkpoint is kept in "
        "(empty: none)",
    )
    leaderflags.add(parser)
    options.with_environment(parser)  # keep last: it covers every option added above
