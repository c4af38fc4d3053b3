"""The agent's scan: read everything, attribute, report. One pass, called on a timer.

The sources are passed in (NVML, /proc, Docker, kubelet, the API), so the same
loop runs in production, against the fake NVML in tests, and on hosts without
Docker or kubelet. The API views (accounts, pods on this node) are refreshed
on their own slower clock and fail open: a scan never waits for the apiserver.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import structlog

from controller.agent import metrics
from controller.agent.enforcer import Enforcer, Outcome, Views
from controller.agent.inventory import Inventory, Sample
from controller.agent.lifecycle import DockerLifecycle
from controller.agent.procfs import ProcReader
from controller.agent.publisher import PolicyView, Publisher
from controller.agent.report import Health, status
from controller.agent.scan import (
    ContainerCache,
    account_groups,
    accounts,
    join,
    parents,
    read_passwd,
)
from controller.agent.state import Namespaces, ViewStore
from controller.api.node import EnforcementMode, GPUNodeSpec, GPUNodeStatus
from controller.api.ratelimit import GPURateLimitSpec
from controller.policy.attribution import Memory, NodeView, PodView, attribute
from controller.policy.effective import NamedLimit, effective_limits

log = structlog.get_logger("ds01.agent")


class GpuSource(Protocol):
    """NVML, or anything that answers like it."""

    def inventory(self) -> Inventory: ...

    def sample(self) -> Sample: ...


class ClusterView(Protocol):
    """What the agent reads from the apiserver besides its GPUNode."""

    def namespaces(self) -> list[tuple[str, dict[str, str], dict[str, str]]]: ...

    def pods(self) -> dict[str, tuple[str, str]]:
        """Pod UID -> (namespace, name) for pods bound to this node."""
        ...

    def limits(self) -> list[NamedLimit]:
        """Every GPURateLimit (all signed-in users may read them)."""
        ...


class PodDevices(Protocol):
    """kubelet's PodResources: which pod holds which of our devices."""

    def devices(self) -> dict[tuple[str, str], frozenset[str]] | None:
        """(namespace, pod) -> device IDs; None when kubelet could not be asked."""
        ...


class HealthSink(Protocol):
    """The device plugin, told about health so kubelet stops or resumes allocating."""

    def update(self, inventory: Inventory) -> None: ...


@dataclass
class _Views:
    """API-backed views, refreshed every `refresh`; stale ones are kept on failure."""

    cluster: ClusterView | None
    refresh: timedelta
    by_namespace: dict[str, str] = field(default_factory=dict)
    by_login: dict[str, str] = field(default_factory=dict)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    limits: list[NamedLimit] = field(default_factory=list)
    pods: dict[str, tuple[str, str]] = field(default_factory=dict)
    at: datetime | None = None
    store: ViewStore | None = None
    """Where accounts and limits are saved, so a restart without the apiserver still knows them."""

    def use(self, namespaces: Namespaces, limits: list[NamedLimit]) -> None:
        self.by_namespace, self.by_login = accounts(namespaces)
        self.groups = account_groups(namespaces)
        self.limits = limits

    def update(self, now: datetime) -> None:
        if self.cluster is None or (self.at is not None and now - self.at < self.refresh):
            return
        try:
            namespaces = self.cluster.namespaces()
            limits = self.cluster.limits()
            self.use(namespaces, limits)
            self.pods = self.cluster.pods()
            self.at = now
        except Exception as error:  # fail open: keep the last view
            log.warning("cannot refresh accounts and pods; keeping the last view", error=str(error))
            return
        if self.store is not None:
            try:
                self.store.save(namespaces, limits)
            except OSError as error:  # best effort: the live view is in force either way
                log.warning("cannot save accounts and limits", error=str(error))


@dataclass
class Agent:
    """One node's agent state between scans."""

    node: str
    source: GpuSource
    proc: ProcReader
    publisher: Publisher | None
    containers: ContainerCache
    cluster: ClusterView | None = None
    kubelet: PodDevices | None = None
    health_sink: HealthSink | None = None
    passwd: Path = Path("/etc/passwd")
    cgroup_version: str | None = None
    refresh: timedelta = timedelta(seconds=30)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    policy: PolicyView | None = None
    """The GPUNode spec in force: None until one was read (from the API or the state file)."""
    enforcer: Enforcer | None = None
    applied_generation: int | None = None
    lifecycle: DockerLifecycle | None = None
    """Idle reclaim and runtime limits for Docker containers (None: not on this host)."""
    lifecycle_every: timedelta = timedelta(minutes=5)
    _lifecycle_at: datetime | None = None
    inventory: Inventory | None = None
    memory: Memory = field(default_factory=Memory)
    last: GPUNodeStatus | None = None
    view_store: ViewStore | None = None
    _views: _Views | None = None
    _pod_devices: Mapping[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    on_pass: Callable[[], None] | None = None
    """Called after every enforcement pass (the runtime gate republishes its table)."""

    @property
    def mode(self) -> EnforcementMode:
        """Audit until a policy is known; then what the spec says."""
        return self.policy.spec.enforcement if self.policy is not None else "Audit"

    def views(self, now: datetime) -> Views:
        """Identities and allocations, refreshed on their own clock (fail open)."""
        self._views = self._views_or_saved()
        self._views.update(now)
        current = True
        if self.kubelet is not None:
            answered = self.kubelet.devices()
            if answered is not None:
                self._pod_devices = answered
            current = answered is not None
        return Views(
            logins=read_passwd(self.passwd),
            accounts_by_login=self._views.by_login,
            accounts_by_namespace=self._views.by_namespace,
            pods=self._views.pods,
            pod_devices=self._pod_devices,
            pod_devices_current=current,
        )

    def allocations_now(
        self,
    ) -> tuple[Mapping[str, str], Mapping[tuple[str, str], frozenset[str]]]:
        """(namespace -> account as last read, the kubelet's allocations now) for answers
        that must come fast (the runtime wrapper waits 3 s): no apiserver call here, only
        the local PodResources socket, and the last answer when the kubelet is away."""
        views = self._views_or_saved()
        devices = self._pod_devices
        if self.kubelet is not None and (answered := self.kubelet.devices()) is not None:
            devices = answered
        return views.by_namespace, devices

    def _views_or_saved(self) -> _Views:
        if self._views is None:
            self._views = _Views(self.cluster, self.refresh, store=self.view_store)
            saved = self.view_store.load() if self.view_store is not None else None
            if saved is not None:
                self._views.use(*saved)
        # Both may be set after build() (tests, dev setups): the views follow them.
        self._views.cluster = self.cluster
        self._views.refresh = self.refresh
        return self._views

    def reread_views(self) -> None:
        """Read accounts and pods on the next pass instead of waiting for `refresh`.

        A new spec may name a user whose account appeared since the last read;
        without this their container would count as nobody's until then.
        """
        if self._views is not None:
            self._views.at = None

    def accounts_view(self) -> tuple[dict[str, str], dict[str, tuple[str, ...]], list[NamedLimit]]:
        """(login -> account, account -> groups, rate limits) as last read (or saved)."""
        views = self._views_or_saved()
        return views.by_login, views.groups, views.limits

    def enforce(self) -> Outcome | None:
        """Write the spec's device rules and end GPU use that lost its right (Enforce mode)."""
        if self.enforcer is None:
            return None
        now = self.clock()
        inventory = self.inventory if self.inventory is not None else self.source.inventory()
        spec = self.policy.spec if self.policy is not None else GPUNodeSpec()
        outcome = self.enforcer.run(spec, self.mode, inventory, self.views(now), now)
        if self.enforcer.unknown_pods:
            self.reread_views()  # a pod started since the list was read: name it next pass
        if self.policy is not None:
            self.applied_generation = self.policy.generation
        if self.on_pass is not None:
            self.on_pass()
        return outcome

    def scan(self) -> GPUNodeStatus:
        """One full pass: inventory, sample, attribution, status (published when due)."""
        started, cpu = time.perf_counter(), time.process_time()
        now = self.clock()
        views = self.views(now)
        health = Health(policy_message=self._policy_message())
        try:
            inventory = self.source.inventory()
            sample: Sample | None = self.source.sample()
        except Exception as error:  # NVML gone: report it, keep serving the last policy
            log.error("NVML failed", error=str(error))
            inventory, sample = Inventory(()), None
            health = Health(
                inventory_ok=False,
                inventory_message=f"NVML failed: {error}",
                policy_message=self._policy_message(),
            )
        else:
            self.inventory = inventory
        if self.health_sink is not None:
            self.health_sink.update(inventory)
        uses = join(sample, self.proc) if sample else []
        pods = {
            uid: PodView(uid, ns, name, views.pod_devices.get((ns, name), frozenset()))
            for uid, (ns, name) in views.pods.items()
        }
        node_view = NodeView(
            spec=self.policy.spec if self.policy is not None else GPUNodeSpec(),
            parents=parents(inventory),
            logins=views.logins,
            accounts_by_login=views.accounts_by_login,
            accounts_by_namespace=views.accounts_by_namespace,
            containers=self.containers.views(
                {u.container_id for u in uses if u.container_id and not u.pod_uid}, inventory
            ),
            pods=pods,
        )
        result = attribute(uses, node_view, self.memory, now)
        before = (
            (list(self.last.workloads or ()), list(self.last.violations or ()))
            if self.last
            else ([], [])
        )
        self.memory = result.memory
        report = status(
            inventory=inventory,
            sample=sample,
            workloads=result.workloads,
            violations=result.violations,
            mode=self.mode,
            applied_generation=self.applied_generation,
            observed_generation=self.policy.generation if self.policy else None,
            previous=self.last,
            health=health,
            cgroup_version=self.cgroup_version,
            now=now,
        )
        if self.publisher is not None:
            try:
                if self.publisher.publish(report, now):
                    metrics.STATUS_WRITTEN.set(now.timestamp())
                self.publisher.announce(before, (result.workloads, result.violations))
            except Exception as error:  # fail open: the next scan tries again
                log.warning("cannot publish status", error=str(error))
        self.last = report
        if sample is not None:
            self._judge_lifecycle(inventory, sample, now)
        metrics.observe(
            inventory,
            sample,
            result.violations,
            time.perf_counter() - started,
            time.process_time() - cpu,
            node=self.node,
            mode=self.mode,
        )
        return report

    def _judge_lifecycle(self, inventory: Inventory, sample: Sample, now: datetime) -> None:
        """One lifecycle check of the GPU containers the last enforcement pass found."""
        if self.lifecycle is None or self.enforcer is None or self.policy is None:
            return  # without a policy nothing is known about limits or exemptions
        if self.mode == "Off":
            return
        if self._lifecycle_at is not None and now - self._lifecycle_at < self.lifecycle_every:
            return
        self._lifecycle_at = now
        views = self._views
        groups = views.groups if views is not None else {}
        limits = views.limits if views is not None else []
        cache: dict[str | None, GPURateLimitSpec] = {}

        def limits_of(owner: str | None) -> GPURateLimitSpec:
            if owner not in cache:
                user = owner or ""
                cache[owner] = effective_limits(user, groups.get(user, ()), limits).spec
            return cache[owner]

        self.lifecycle.run(
            self.enforcer.gpu_containers,
            inventory=inventory,
            sample=sample,
            limits_of=limits_of,
            spec=self.policy.spec,
            now=now,
            audit=self.mode == "Audit",
        )

    def _policy_message(self) -> str:
        if self.policy is None:
            return "no policy yet (GPUNode spec unread): reporting only (Audit) until one arrives"
        if self.enforcer is None or not self.enforcer.cgroups.supported():
            return (
                f"spec generation {self.policy.generation} read; no device cgroups here, so "
                "enforcing by ending holders only"
            )
        return f"applying spec generation {self.policy.generation} in {self.mode} mode"
