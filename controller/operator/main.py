"""`ds01 operator`: run the operator against a kubeconfig or in-cluster."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import kopf
import structlog
from kubernetes import client, config
from prometheus_client import start_http_server

from controller.api.node import EnforcementMode
from controller.operator import agentrenewals
from controller.operator.election import Gate, Standalone, kube_elector
from controller.operator.handlers import register
from controller.operator.lifecycle import PodLifecycle
from controller.operator.reconciler import Reconciler
from controller.operator.usagehistory import UsageRecorder
from controller.operator.writer import Writer
from controller.policy.accounts import AccountSettings, PodSecurityLevel
from controller.policy.grants import GrantSettings
from controller.policy.leadership import ElectionTimings
from controller.policy.plan import Settings
from controller.policy.retention import DEFAULT_RETENTION
from controller.runtime import fieldmanager, kubeversion, logs
from controller.runtime.auditchain import Anchor
from controller.runtime.audittrail import AuditSettings, Trail

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
    finished_grant_retention: timedelta | None = DEFAULT_RETENTION
    """How long ended grants are kept before they are deleted; None keeps them."""
    pod_security_enforce: PodSecurityLevel = "baseline"
    """Pod Security Admission level kept on account namespaces."""
    pod_security_warn: PodSecurityLevel = "restricted"
    usage_interval: timedelta = timedelta(seconds=15)
    """Between looks at what every account uses, for the usage history; zero turns it off."""
    usage_retention: timedelta = timedelta(days=400)
    """How long the usage history is kept."""
    audit: AuditSettings = field(default_factory=AuditSettings)
    audit_anchor: str | None = "ds01-system/ds01-audit-anchor"
    """NAMESPACE/NAME of the ConfigMap the trail's latest signed checkpoint is kept in."""
    leader_election: bool = True
    """Write only while holding the Lease (docs/operator.md, "High availability")."""
    leader_lease: str = "ds01-system/ds01-operator"
    leader_identity: str | None = None
    """This replica in the Lease (the pod's name); None: host name, pid and a random suffix."""
    leader_lease_duration: timedelta = timedelta(seconds=15)
    leader_renew_deadline: timedelta = timedelta(seconds=10)
    leader_retry_period: timedelta = timedelta(seconds=2)


def anchor_poster(api: client.ApiClient, where: str, identity: str) -> Callable[[Anchor], None]:
    """Keeps the latest checkpoint in a ConfigMap, outside the operator's pod and volume.

    One key per replica (its identity): each replica writes its own trail (only the leader
    writes records), so each trail has its own anchor, and a former leader's last
    checkpoint never overwrites the current leader's.
    """
    namespace, _, name = where.partition("/")
    core = client.CoreV1Api(api)
    key = anchor_key(identity)

    def post(anchor: Anchor) -> None:
        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(
                name=name, labels={"app.kubernetes.io/managed-by": "ds01-operator"}
            ),
            data={key: f"{anchor.seq}:{anchor.chain}"},
        )
        try:
            core.patch_namespaced_config_map(name, namespace, body)
        except client.ApiException as error:
            if error.status != 404:
                raise
            core.create_namespaced_config_map(namespace, body)

    return post


def anchor_key(identity: str) -> str:
    """A ConfigMap key for a replica's identity (keys allow letters, digits, `-`, `_`, `.`)."""
    return re.sub(r"[^-._a-zA-Z0-9]", "_", identity)[:253] or "operator"


def api_client(kubeconfig: Path | None) -> client.ApiClient:
    """A client from the kubeconfig, or the pod's ServiceAccount when there is none;
    its writes are recorded under the field manager `ds01-operator`."""
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
        return fieldmanager.name_writes(client.ApiClient(), fieldmanager.OPERATOR)
    path = str(kubeconfig) if kubeconfig else None
    api: client.ApiClient = config.new_client_from_config(config_file=path)
    return fieldmanager.name_writes(api, fieldmanager.OPERATOR)


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
        finished_grant_retention=options.finished_grant_retention,
        accounts=AccountSettings(
            budget_bucket=options.budget_bucket,
            starts_window=options.workload_starts_window,
            alert_cooldown=options.alert_cooldown,
            pod_security_enforce=options.pod_security_enforce,
            pod_security_warn=options.pod_security_warn,
        ),
    )
    api = api_client(options.kubeconfig)
    if too_old := kubeversion.check(api):
        log.error("refusing to start", error=too_old)
        return 2
    elector = None
    if options.leader_election:
        timings = ElectionTimings(
            options.leader_lease_duration,
            options.leader_renew_deadline,
            options.leader_retry_period,
        )
        elector = kube_elector(api, options.leader_lease, options.leader_identity, timings)
    gate: Gate = elector or Standalone()
    trail = Trail(
        options.audit_log,
        "ds01-operator",
        options.audit,
        anchor_poster(api, options.audit_anchor, gate.identity) if options.audit_anchor else None,
    )
    writer = Writer(api, trail.log, may_write=gate.leading, instance=gate.identity)
    reconciler = Reconciler(writer, settings, gate=gate)
    lifecycle = None
    if options.lifecycle_interval:
        lifecycle = PodLifecycle(
            api,
            writer,
            reconciler,
            options.lifecycle_interval,
            report_max_age=options.report_max_age,
        )
    usage = None
    if options.usage_interval:
        usage = UsageRecorder(
            api, reconciler, options.usage_interval, retention=options.usage_retention
        )
        if lifecycle is not None:
            lifecycle.on_stop = usage.reaped
    registry = kopf.OperatorRegistry()
    register(registry, reconciler, options.kubeconfig, lifecycle, usage, elector=elector)
    agentrenewals.register(registry, api, trail.log, gate.leading)  # Docker-host agents' certs
    if options.metrics_port is not None:
        start_http_server(options.metrics_port)
    log.info(
        "starting",
        enforcement=options.default_enforcement,
        audit_log=str(options.audit_log) if options.audit_log else "stderr",
        leader_election=options.leader_lease if elector else "off",
        identity=gate.identity,
    )
    try:
        kopf.run(
            registry=registry,
            clusterwide=True,
            standalone=True,
            liveness_endpoint=options.liveness,
        )
    finally:
        trail.close()  # sign what is left
    return 0
