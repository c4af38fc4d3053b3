"""`ds01 operator`: the kopf operator (one active replica per cluster)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from controller.policy.units import parse_duration


def _duration(text: str) -> Any:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive_duration(text: str) -> Any:
    value = _duration(text)
    if not value:
        raise argparse.ArgumentTypeError(f"{text!r} must be longer than 0s")
    return value


def _run(args: argparse.Namespace) -> int:
    from controller.operator.main import OperatorOptions, run

    return run(
        OperatorOptions(
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
        )
    )


def register(commands: Any) -> None:
    parser = commands.add_parser("operator", help="run the operator")
    parser.add_argument("--kubeconfig", type=Path, help="default: in-cluster, else $KUBECONFIG")
    parser.add_argument(
        "--audit-log",
        type=Path,
        default=os.environ.get("DS01_AUDIT_LOG"),
        help="JSON-lines audit file (default: $DS01_AUDIT_LOG, else to the log)",
    )
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    parser.add_argument(
        "--liveness", help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz"
    )
    parser.add_argument("--log-level", default="INFO")
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
    parser.set_defaults(run=_run)
