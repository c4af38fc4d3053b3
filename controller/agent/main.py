"""`ds01 agent --node NAME`: wire the sources to the scan loop and run it.

Every host path is an option, so the same program runs in a DaemonSet (with
the host's /proc, /dev, cgroups and kubelet sockets mounted under /host), as a
systemd service on a Docker host, and in tests against a prepared tree.
"""

from __future__ import annotations

import gc
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import structlog
from kubernetes import client, config
from prometheus_client import start_http_server

from controller.agent.agent import Agent
from controller.agent.cgroups import DeviceCgroups
from controller.agent.credentials import CredentialReloader
from controller.agent.deviceplugin.manager import DevicePluginManager
from controller.agent.docker import DockerClient
from controller.agent.enforcer import Enforcer, Notify
from controller.agent.gateway import AgentSource, Gateway, GatewayOptions
from controller.agent.gateway.core import USER_CAPABILITIES, AuditWrite
from controller.agent.inventory import Inventory
from controller.agent.lifecycle import DockerLifecycle
from controller.agent.nvml import Nvml
from controller.agent.podresources import PodResourcesClient
from controller.agent.procfs import ProcReader
from controller.agent.publisher import Publisher
from controller.agent.runner import Runner
from controller.agent.runtimegate import RuntimeGate
from controller.agent.scan import ContainerCache
from controller.agent.state import PolicyStore, StateError, ViewStore
from controller.agent.steering import Steering, asks_for
from controller.api.account import LABEL_USER
from controller.api.base import GROUP, VERSION
from controller.api.kinds import GPURateLimit
from controller.policy.effective import NamedLimit
from controller.runtime import fieldmanager, logs
from controller.runtime.audit import AuditLog
from controller.runtime.auditchain import Anchor
from controller.runtime.audittrail import AuditKeyError, AuditSettings, Trail

log = structlog.get_logger("ds01.agent")


@dataclass(frozen=True)
class AgentOptions:
    """Everything `ds01 agent` can be told."""

    node: str
    kubeconfig: Path | None = None
    nvml_library: Path | None = None
    proc_root: Path = Path("/proc")
    driver_proc_root: Path | None = None
    """Where NVML's /proc files are (`devices`, `driver/nvidia-caps`); the proc root by default."""
    dev_root: Path = Path("/dev")
    host_dev_root: Path | None = None
    """The host's path of `dev_root`, for kubelet and the Docker engine, when the agent sees
    it elsewhere. Unset: /dev for the kubelet (the DaemonSet's `/host/dev` is the host's
    /dev), `dev_root` itself for Docker (a Docker host's agent runs on the host)."""
    cgroup_root: Path = Path("/sys/fs/cgroup")
    passwd: Path = Path("/etc/passwd")
    docker_socket: str | None = None
    device_plugin_dir: Path | None = None
    pod_resources_socket: Path | None = None
    gateway_key: Path | None = None
    audit_log: Path | None = None
    metrics_port: int | None = None
    state_dir: Path | None = None
    interval_s: float = 5.0
    """Seconds between scans (inventory, attribution, status)."""
    enforce_interval_s: float = 2.0
    """Seconds between enforcement passes when nothing triggers one sooner."""
    grace_s: float = 300.0
    """Grace before ending GPU use whose right ended with no revocation entry (an expired
    host entry or reservation); revocations carry their own, never-granted use gets none."""
    kill_grace_s: float = 10.0
    stop_grace_s: int = 60
    lifecycle_interval_s: float = 300.0
    """Seconds between idle/runtime checks of GPU containers; 0 turns lifecycle off."""
    gateway_socket: Path | None = None
    """Serve the Docker gateway for users here (needs --docker-socket and --gateway-key)."""
    gateway_admin_group: str | None = None
    """Linux group whose members (and root) pass through the gateway unchanged."""
    gateway_bind_roots: tuple[str, ...] = ("{home}",)
    """Host paths users may bind-mount (`{home}`, `{login}` filled in per user)."""
    gateway_socket_mode: int = 0o666
    gateway_socket_group: str | None = None
    gateway_devices: tuple[str, ...] = ()
    """Host device paths users may map with --device (none by default)."""
    gateway_capabilities: tuple[str, ...] | None = None
    """Capabilities users may add (None: Docker's defaults plus IPC_LOCK and SYS_NICE)."""
    gateway_runtime: str | None = None
    gateway_host_etc: Path | None = None
    """The host's /etc for the gateway's user lookups, when the agent is not on the host."""
    """Runtime every user container runs under (the device-rule wrapper); the engine's
    default when unset."""
    runtime_dir: Path | None = None
    """Answer the runtime wrapper (`ds01-runc`) here: its socket and fail-closed table."""
    log_level: str = "INFO"
    audit: AuditSettings = field(default_factory=AuditSettings)
    """How the audit trail is kept (`--audit-*`); its latest signed checkpoint goes into this
    node's GPUNode status."""


class ConfigError(ValueError):
    """Options that do not make a working agent (the start is refused)."""


class KubeCluster:
    """Accounts and this node's pods, read from the apiserver."""

    def __init__(self, api: client.ApiClient, node: str) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.node = node

    def namespaces(self) -> list[tuple[str, dict[str, str], dict[str, str]]]:
        out = []
        for ns in self.core.list_namespace(label_selector=LABEL_USER).items:
            meta = ns.metadata
            if meta is not None and meta.name:
                out.append((meta.name, dict(meta.labels or {}), dict(meta.annotations or {})))
        return out

    def limits(self) -> list[NamedLimit]:
        listing = cast(
            dict[str, Any], self.custom.list_cluster_custom_object(GROUP, VERSION, "gpuratelimits")
        )
        return [
            NamedLimit(item["metadata"]["name"], GPURateLimit.model_validate(item).spec)
            for item in listing.get("items", [])
        ]

    def pending(self, resource: str) -> list[tuple[str, str]]:
        """Pods bound to this node, not yet running, asking for ``resource``."""
        listing = self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node},status.phase=Pending"
        )
        return [
            (str(pod.metadata.namespace), str(pod.metadata.name))
            for pod in listing.items
            if pod.metadata is not None
            and pod.metadata.deletion_timestamp is None
            and asks_for(pod, resource)
        ]

    def pods(self) -> dict[str, tuple[str, str]]:
        listing = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.node}")
        out = {}
        for pod in listing.items:
            meta = pod.metadata
            if meta is not None and meta.uid and meta.namespace and meta.name:
                out[meta.uid] = (meta.namespace, meta.name)
        return out


class KubeletDevices:
    """PodResources answers as (namespace, pod) -> our device IDs; None when kubelet is away."""

    def __init__(self, socket: Path) -> None:
        self.client = PodResourcesClient(socket)

    def devices(self) -> dict[tuple[str, str], frozenset[str]] | None:
        result = self.client.list()
        if result.error is not None:
            return None
        out: dict[tuple[str, str], set[str]] = {}
        for entry in result.containers:
            out.setdefault((entry.ref.namespace, entry.ref.pod), set()).update(entry.device_ids)
        return {key: frozenset(ids) for key, ids in out.items()}


class PluginHealth:
    """Feeds NVML's health to the device plugin."""

    def __init__(self, manager: DevicePluginManager) -> None:
        self.manager = manager

    def update(self, inventory: Inventory) -> None:
        self.manager.update(inventory)


def cgroup_version(root: Path) -> str | None:
    """`v1` when the devices controller is mounted as a v1 hierarchy, `v2` on a unified mount."""
    if (root / "devices" / "devices.allow").exists():
        return "v1"
    if (root / "cgroup.controllers").exists():
        return "v2"
    return None


def build(
    options: AgentOptions, api: client.ApiClient | None
) -> tuple[Agent, list[Callable[[], None]]]:
    """The agent, and what to call (in reverse order) when it stops.

    ``api``'s writes are recorded under the field manager `ds01-agent`.
    """
    if api is not None:
        fieldmanager.name_writes(api, fieldmanager.AGENT)
    nvml = Nvml(
        library=options.nvml_library,
        proc_root=options.driver_proc_root or options.proc_root,
        dev_root=options.dev_root,
    )
    inventory = nvml.start()
    closers: list[Callable[[], None]] = [nvml.close]
    plugin = None
    if options.device_plugin_dir is not None:
        plugin = DevicePluginManager(
            inventory,
            options.device_plugin_dir,
            device_root=str(options.dev_root),
            host_device_root=str(options.host_dev_root or "/dev"),
        )
        plugin.start()
        closers.append(plugin.stop)
    publishers: list[Publisher] = []

    def anchors(anchor: Anchor) -> None:  # kept in this node's GPUNode status
        for found in publishers:
            found.keep_anchor(anchor)

    trail = Trail(options.audit_log, "ds01-agent", options.audit, post=anchors)
    audit = trail.log
    closers.append(trail.close)
    publisher = Publisher(api, options.node, audit) if api is not None else None
    publishers += [publisher] if publisher is not None else []

    key = options.gateway_key.read_bytes().strip() if options.gateway_key else None
    docker = DockerClient(options.docker_socket) if options.docker_socket else None
    proc = ProcReader(options.proc_root)
    enforcer = Enforcer(
        cgroups=DeviceCgroups(options.cgroup_root / "devices"),
        proc=proc,
        proc_root=options.proc_root,
        docker=docker,
        key=key,
        notify=publisher.notify if publisher is not None else _log_only(audit),
        grace=timedelta(seconds=options.grace_s),
        kill_grace=timedelta(seconds=options.kill_grace_s),
        stop_grace_s=options.stop_grace_s,
    )
    agent = Agent(
        node=options.node,
        source=nvml,
        proc=proc,
        publisher=publisher,
        containers=ContainerCache(docker, key),
        cluster=KubeCluster(api, options.node) if api is not None else None,
        kubelet=KubeletDevices(options.pod_resources_socket)
        if options.pod_resources_socket
        else None,
        health_sink=PluginHealth(plugin) if plugin else None,
        passwd=options.passwd,
        cgroup_version=cgroup_version(options.cgroup_root),
        enforcer=enforcer,
        lifecycle=DockerLifecycle(
            docker,
            enforcer.notify,
            cgroup_root=options.cgroup_root,
            proc_root=options.proc_root,
            state_file=options.state_dir / "lifecycle.json" if options.state_dir else None,
        )
        if docker is not None and options.lifecycle_interval_s > 0
        else None,
        lifecycle_every=timedelta(seconds=options.lifecycle_interval_s),
    )
    agent.inventory = inventory
    if plugin is not None and isinstance(agent.cluster, KubeCluster):
        # The admitted pod's owner gets their reserved devices first (`agent.steering`).
        plugin.steer = Steering(agent, agent.cluster.pending)
    agent.view_store = ViewStore(options.state_dir) if options.state_dir is not None else None
    agent.accounts_view()  # saved accounts and limits, before any other thread reads them
    store = PolicyStore(options.state_dir) if options.state_dir is not None else None
    if store is not None:
        agent.policy = store.load(options.node)  # a corrupt file stops the start here
    if publisher is not None:
        try:
            agent.policy = publisher.ensure_node()
            if store is not None:
                store.save(agent.policy, options.node)
        except Exception as error:  # fail open: the saved policy (or Audit) until the API answers
            log.warning(
                "apiserver unreachable at start; using the saved policy",
                saved=agent.policy is not None,
                error=str(error)[:300],
            )
    if options.runtime_dir is not None:
        # Before the gateway: a container it creates finds the gate answering.
        gate = RuntimeGate(options.runtime_dir, agent, docker, key, enforcer.notify)
        gate.start()
        agent.on_pass = gate.publish
        closers.append(gate.stop)
    if options.gateway_socket is not None:
        gateway = _gateway(options, agent, key, publisher, audit)
        gateway.start()
        closers.append(gateway.stop)
    # Start-up is over: what exists now (modules, classes, the clients) lives as long as
    # the agent. Frozen, the collector's full passes no longer walk those ~80,000
    # objects; they cost 45-60 ms of CPU each and made the scan's p99. Garbage is
    # collected first, so that none of it is frozen with them.
    gc.collect()
    gc.freeze()
    return agent, closers


def _gateway(
    options: AgentOptions,
    agent: Agent,
    key: bytes | None,
    publisher: Publisher | None,
    audit: AuditLog,
) -> Gateway:
    """The Docker gateway, sharing the agent's views, key and voice (audit first, then Events)."""
    if options.docker_socket is None or key is None:
        raise ConfigError(
            "--gateway-socket needs --docker-socket (the engine's own socket) and "
            "--gateway-key (the key container labels are signed with)"
        )
    assert options.gateway_socket is not None
    return Gateway(
        GatewayOptions(
            socket=options.gateway_socket,
            engine_socket=options.docker_socket,
            key=key,
            admin_group=options.gateway_admin_group,
            dev_root=options.dev_root,
            host_dev_root=options.host_dev_root,
            bind_roots=options.gateway_bind_roots,
            socket_mode=options.gateway_socket_mode,
            socket_group=options.gateway_socket_group,
            devices=options.gateway_devices,
            runtime=options.gateway_runtime,
            host_etc=options.gateway_host_etc,
            capabilities=USER_CAPABILITIES
            if options.gateway_capabilities is None
            else frozenset(c.upper().removeprefix("CAP_") for c in options.gateway_capabilities),
        ),
        AgentSource(agent),
        publisher.audit_record if publisher is not None else _audit_only(audit),
        publisher.post_event if publisher is not None else None,
    )


def _audit_only(audit: AuditLog) -> AuditWrite:
    def write(event_type: str, user: str | None, message: str, details: dict[str, Any]) -> None:
        audit.write(event_type, user or "unknown", {"message": message, **details})

    return write


def _log_only(audit: AuditLog) -> Notify:
    def notify(
        event_type: str, user: str | None, message: str, kind: str, details: dict[str, object]
    ) -> None:
        audit.write(event_type, user or "unknown", {"message": message, **details})

    return notify


def run(options: AgentOptions) -> int:
    """Run until SIGINT/SIGTERM; see `controller.agent.runner`."""
    logs.configure(options.log_level)
    api: client.ApiClient
    if options.kubeconfig is not None:
        api = config.new_client_from_config(config_file=str(options.kubeconfig))
    else:
        config.load_incluster_config()
        api = client.ApiClient()
    try:
        agent, closers = build(options, api)
    except (StateError, ConfigError, AuditKeyError) as error:
        log.error("refusing to start", error=str(error))
        return 2
    if options.kubeconfig is not None:  # a Docker host's certificate is renewed in place
        reloader = CredentialReloader(api, options.kubeconfig)
        reloader.start()
        closers.append(reloader.stop)
    if options.metrics_port is not None:
        start_http_server(options.metrics_port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    store = PolicyStore(options.state_dir) if options.state_dir is not None else None
    runner = Runner(
        agent,
        api,
        store,
        interval_s=options.interval_s,
        enforce_interval_s=options.enforce_interval_s,
        docker_socket=options.docker_socket,
    )
    log.info(
        "agent started",
        node=options.node,
        gpus=len(agent.source.inventory().gpus),
        policy="saved" if agent.policy else "none yet",
    )
    try:
        runner.run(stop)
    finally:
        for close in reversed(closers):
            close()
    return 0
