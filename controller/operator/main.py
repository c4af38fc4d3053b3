"""`ds01 operator`: run the operator against a kubeconfig or in-cluster."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import kopf
import structlog
from kubernetes import client, config
from prometheus_client import start_http_server

from controller.api.node import EnforcementMode
from controller.operator.handlers import register
from controller.operator.lifecycle import PodLifecycle
from controller.operator.reconciler import Reconciler
from controller.operator.writer import Writer
from controller.policy.accounts import AccountSettings
from controller.policy.grants import GrantSettings
from controller.policy.plan import Settings
from controller.runtime import logs
from controller.runtime.audit import AuditLog

log = structlog.get_logger("ds01.operator")


@dataclass(frozen=True)
class OperatorOptions:
    """Everything `ds01 operator` can be told."""

    kubeconfig: Path | None = None
    audit_log: Path | None = None
    metrics_port: int | None = None
    liveness: str | None = None
    log_level: str = "INFO"
    default_enforcement: EnforcementMode = "Enforce"
    default_duration: timedelta = timedelta(hours=24)
    expiry_warning: timedelta = timedelta(hours=1)
    operator_user: str = "system:serviceaccount:ds01-system:ds01-operator"
    budget_bucket: timedelta = timedelta(hours=1)
    workload_starts_window: timedelta = timedelta(hours=1)
    alert_cooldown: timedelta = timedelta(hours=4)
    lifecycle_interval: timedelta = timedelta(minutes=5)
    """Between idle/runtime checks of GPU pods; zero turns the pod lifecycle off."""
    report_max_age: timedelta = timedelta(minutes=5)
    """A node whose agent has not reported for this long is not judged (its data is stale)."""


def api_client(kubeconfig: Path | None) -> client.ApiClient:
    """A client from the kubeconfig, or the pod's ServiceAccount when there is none."""
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
        return client.ApiClient()
    path = str(kubeconfig) if kubeconfig else None
    api: client.ApiClient = config.new_client_from_config(config_file=path)
    return api


def run(options: OperatorOptions) -> int:
    """Run until SIGINT/SIGTERM."""
    logs.configure(options.log_level)
    settings = Settings(
        grants=GrantSettings(
            default_duration=options.default_duration,
            expiry_warning=options.expiry_warning,
            operator_user=options.operator_user,
        ),
        default_enforcement=options.default_enforcement,
        accounts=AccountSettings(
            budget_bucket=options.budget_bucket,
            starts_window=options.workload_starts_window,
            alert_cooldown=options.alert_cooldown,
        ),
    )
    audit = AuditLog(options.audit_log, source="ds01-operator")
    api = api_client(options.kubeconfig)
    writer = Writer(api, audit)
    reconciler = Reconciler(writer, settings)
    lifecycle = None
    if options.lifecycle_interval:
        lifecycle = PodLifecycle(
            api,
            writer,
            reconciler,
            options.lifecycle_interval,
            report_max_age=options.report_max_age,
        )
    registry = kopf.OperatorRegistry()
    register(registry, reconciler, options.kubeconfig, lifecycle)
    if options.metrics_port is not None:
        start_http_server(options.metrics_port)
    log.info(
        "starting",
        enforcement=options.default_enforcement,
        audit_log=str(options.audit_log) if options.audit_log else "stderr",
    )
    kopf.run(
        registry=registry,
        clusterwide=True,
        standalone=True,
        liveness_endpoint=options.liveness,
    )
    return 0
