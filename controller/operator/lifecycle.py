"""The pod lifecycle pass: every interval, judge the GPU pods and act on their owners.

The decisions are `controller.policy.podlife` (the judge is shared with the
agent's Docker lifecycle). This module writes them: the pod's state
annotations first (a pod whose write failed is neither announced nor
stopped; the next pass decides again), then the stop, then the Events and
audit records. A stop acts on the workload's owner so that it is not simply
recreated: a Job is suspended, a Deployment, StatefulSet or lone ReplicaSet
is scaled to zero, a bare pod is deleted with its type's stop grace.

The pass reads kopf's pod cache, which can lag a moment behind the
operator's own annotation writes; what this process wrote is laid over the
cached annotations until the cache shows it (or for `OVERLAY_TTL`), so a
lagging cache does not repeat a warning or restart an idle clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.operator.reconciler import Reconciler
from controller.operator.writer import Writer
from controller.policy.podlife import (
    DEFAULT_REPORT_MAX_AGE,
    PodStep,
    decide,
    inputs_of,
    overlaid,
    stop_target,
)
from controller.policy.pods import OwnerRef, Pod

log = structlog.get_logger("ds01.operator.lifecycle")
OVERLAY_TTL = 30.0
"""Seconds an annotation write of ours is laid over a cache that does not show it yet."""


@dataclass
class _Written:
    annotations: dict[str, str | None]
    at: float


class PodLifecycle:
    """Runs `podlife.decide` on the reconciler's snapshot every ``interval``."""

    def __init__(
        self,
        api: client.ApiClient,
        writer: Writer,
        reconciler: Reconciler,
        interval: timedelta,
        *,
        report_max_age: timedelta = DEFAULT_REPORT_MAX_AGE,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.writer = writer
        self.reconciler = reconciler
        self.interval = interval
        self.report_max_age = report_max_age
        self.clock = clock
        self._written: dict[str, _Written] = {}
        self.on_stop: Callable[[PodStep, datetime], None] | None = None
        """Told of every stop (the usage history charges reaped idle time)."""

    async def run(self) -> None:
        """Check forever while leading; cancelled by the operator's shutdown."""
        while True:
            await self.reconciler.leading()
            try:
                await self.one_pass()
            except Exception:  # one bad pass must not stop the checks
                log.exception("lifecycle pass failed")
            await asyncio.sleep(self.interval.total_seconds())

    async def one_pass(self) -> list[PodStep]:
        snapshot = self.reconciler.snapshot()
        pods = [self._overlay(p) for p in snapshot.pods]
        steps = decide(inputs_of(replace(snapshot, pods=pods)), self.clock(), self.report_max_age)
        await asyncio.gather(*(self._apply(step) for step in steps))
        return steps

    def _overlay(self, pod: Pod) -> Pod:
        written = self._written.get(pod.uid)
        if written is None:
            return pod
        laid = overlaid(pod, written.annotations)
        if laid is None or time.monotonic() - written.at > OVERLAY_TTL:
            del self._written[pod.uid]
            return pod
        return laid

    async def _apply(self, step: PodStep) -> None:
        pod = step.pod
        if step.annotations:
            patch = {"metadata": {"annotations": dict(step.annotations)}}
            if not await self.writer.call(
                "pod/annotations", self.core.patch_namespaced_pod, pod.name, pod.namespace, patch
            ):
                return
            self._written[pod.uid] = _Written(dict(step.annotations), time.monotonic())
        audit = step.audit
        if step.stops:
            stopped = await self._stop(pod, step.stop_grace)
            audit = tuple(replace(r, details={**r.details, "stopped": stopped}) for r in audit)
            log.info("stopped a GPU workload", pod=f"{pod.namespace}/{pod.name}", stopped=stopped)
            if self.on_stop is not None:
                self.on_stop(step, self.clock())
        await self.writer.announce(step.events, audit, set())

    async def _read_owner(self, pod: Pod, ref: OwnerRef) -> OwnerRef | None:
        """The controller of a ReplicaSet (its Deployment), read from the apiserver."""
        try:
            rs = await asyncio.to_thread(
                self.apps.read_namespaced_replica_set, ref.name, pod.namespace
            )
        except ApiException as error:
            log.warning("cannot read a ReplicaSet", name=ref.name, status=error.status)
            return None
        owners = (rs.metadata.owner_references if rs.metadata else None) or ()
        found = next((o for o in owners if o.controller), None)
        return OwnerRef(found.api_version, found.kind, found.name) if found else None

    async def _stop(self, pod: Pod, grace: timedelta) -> str:
        """Stop the pod's workload at its owner; what was done, for the audit record."""
        chain: list[OwnerRef] = []
        if pod.owner is not None:
            chain.append(pod.owner)
            if pod.owner.kind == "ReplicaSet":
                above = await self._read_owner(pod, pod.owner)
                chain += [above] if above is not None else []
        target = stop_target(chain)
        ns = pod.namespace
        if target is None:
            if pod.owner is not None:
                log.warning(
                    "a GPU pod of a controller the operator cannot stop; deleting the pod",
                    pod=f"{ns}/{pod.name}",
                    owner=f"{pod.owner.kind}/{pod.owner.name}",
                )
            seconds = int(grace.total_seconds())
            deleted = await self.writer.call(
                "pod/delete",
                self.core.delete_namespaced_pod,
                pod.name,
                ns,
                grace_period_seconds=seconds,
            )
            return f"Pod/{pod.name} " + ("deleted" if deleted else "not deleted yet")
        scale: dict[str, Any] = {"spec": {"replicas": 0}}
        calls: dict[str, tuple[Callable[..., Any], dict[str, Any], str]] = {
            "Job": (self.batch.patch_namespaced_job, {"spec": {"suspend": True}}, "suspended"),
            "Deployment": (self.apps.patch_namespaced_deployment_scale, scale, "scaled to 0"),
            "StatefulSet": (self.apps.patch_namespaced_stateful_set_scale, scale, "scaled to 0"),
            "ReplicaSet": (self.apps.patch_namespaced_replica_set_scale, scale, "scaled to 0"),
        }
        fn, body, done = calls[target.kind]
        ok = await self.writer.call(f"{target.kind.lower()}/stop", fn, target.name, ns, body)
        return f"{target.kind}/{target.name} " + (done if ok else "not stopped yet")
