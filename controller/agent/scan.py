"""Gathering the facts for one scan: NVML processes joined with /proc, containers, pods, users.

Everything here reads; nothing decides (that is `controller.policy.attribution`).
Each source fails open: a Docker engine or kubelet that does not answer leaves
the last view in place and is reported, it never stops the scan.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from controller.agent.docker import Container, DockerClient, DockerError
from controller.agent.inventory import Inventory, Sample
from controller.agent.procfs import ProcReader
from controller.agent.trust import verify
from controller.api.account import AccountError, parse_account
from controller.policy.attribution import ContainerView, ProcessUse

log = structlog.get_logger("ds01.agent")


def read_passwd(path: Path) -> dict[int, str]:
    """UID -> login from a passwd file (the host's, mounted into the agent)."""
    logins: dict[int, str] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        log.warning(
            "cannot read passwd; host processes will be unattributed",
            path=str(path),
            error=str(error),
        )
        return logins
    for line in lines:
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            logins.setdefault(int(fields[2]), fields[0])
    return logins


def parents(inventory: Inventory) -> dict[str, str]:
    """Device UUID -> its physical GPU's UUID."""
    out = {gpu.uuid: gpu.uuid for gpu in inventory.gpus}
    out.update({mig.uuid: gpu.uuid for gpu in inventory.gpus for mig in gpu.mig})
    return out


def join(sample: Sample, proc: ProcReader) -> list[ProcessUse]:
    """NVML's processes with their owner UID, command and cgroup; gone processes dropped."""
    uses = []
    proc.forget_except({p.pid for p in sample.processes})
    for process in sample.processes:
        info = proc.process(process.pid)
        if info is None:
            continue
        uses.append(
            ProcessUse(
                pid=process.pid,
                start_ticks=info.start_ticks,
                device_uuid=process.device_uuid,
                used_memory_mib=process.used_memory_mib,
                uid=info.uid,
                comm=info.comm,
                container_id=info.cgroup.container_id,
                pod_uid=info.cgroup.pod_uid,
            )
        )
    return uses


def allocated(
    container: Container,
    inventory: Inventory,
    gateway_devices: Iterable[str],
    trusted_only: bool = False,
) -> frozenset[str]:
    """The device UUIDs a container was given.

    With a gateway (``trusted_only``), only what the gateway signed: a user who
    reached the engine some other way and mapped a GPU in gets nothing from it.
    Without one (a plain Docker host, as DS01 ran), GPU device requests (UUIDs or
    indexes) and mapped GPU device nodes count too: whoever can talk to that
    engine is root anyway.
    """
    if trusted_only:
        return frozenset(d for d in gateway_devices if d in parents(inventory))
    by_index = {str(gpu.index): gpu.uuid for gpu in inventory.gpus}
    by_path = {gpu.device.path: gpu.uuid for gpu in inventory.gpus}
    known = set(parents(inventory))
    devices = set(gateway_devices)
    if container.gpu_request_all:
        devices |= {gpu.uuid for gpu in inventory.gpus}
    for requested in container.device_ids:
        devices.add(by_index.get(requested, requested))
    for path in container.device_paths:
        if path in by_path:
            devices.add(by_path[path])
    return frozenset(d for d in devices if d in known)


@dataclass
class ContainerCache:
    """Inspect results by container ID; a container's identity does not change once created."""

    docker: DockerClient | None
    key: bytes | None = None
    _seen: dict[str, Container | None] = field(default_factory=dict)
    healthy: bool = True

    def views(self, ids: Iterable[str], inventory: Inventory) -> dict[str, ContainerView]:
        wanted = set(ids)
        for gone in self._seen.keys() - wanted:
            del self._seen[gone]
        out: dict[str, ContainerView] = {}
        for container_id in sorted(wanted):
            if container_id not in self._seen and self.docker is not None:
                try:
                    self._seen[container_id] = self.docker.inspect(container_id)
                    self.healthy = True
                except DockerError as error:
                    self.healthy = False
                    log.warning(
                        "docker engine unavailable; keeping the last view", error=str(error)
                    )
                    continue
            container = self._seen.get(container_id)
            if container is None:
                continue
            stamp = verify(self.key, container.name, container.labels)
            out[container_id] = ContainerView(
                id=container.id,
                name=container.name,
                allocated=allocated(
                    container,
                    inventory,
                    stamp.devices if stamp else (),
                    trusted_only=self.key is not None,
                ),
                owner=stamp.owner if stamp else None,
                started_at=container.started_at,
            )
        return out


def account_groups(
    namespaces: Iterable[tuple[str, Mapping[str, str], Mapping[str, str]]],
) -> dict[str, tuple[str, ...]]:
    """Account user -> groups (from the account namespaces' annotations)."""
    out: dict[str, tuple[str, ...]] = {}
    for name, labels, notes in namespaces:
        try:
            account = parse_account(name, labels, notes)
        except AccountError:
            continue
        if account is not None:
            out[account.user] = account.groups
    return out


def accounts(
    namespaces: Iterable[tuple[str, Mapping[str, str], Mapping[str, str]]],
) -> tuple[dict[str, str], dict[str, str]]:
    """(namespace -> account user, Linux login -> account user) from namespace metadata."""
    by_namespace: dict[str, str] = {}
    by_login: dict[str, str] = {}
    for name, labels, notes in namespaces:
        try:
            account = parse_account(name, labels, notes)
        except AccountError:
            continue  # the operator reports it; here it simply owns nothing
        if account is None:
            continue
        by_namespace[account.namespace] = account.user
        if account.linux_user:
            by_login[account.linux_user] = account.user
    return by_namespace, by_login
