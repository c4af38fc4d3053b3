"""kopf wiring: one index per kind, and every watch event pokes the reconciler.

Handlers decide nothing. Indexes hold parsed projections (the pydantic models,
compacted by `controller.api.compact`, or for namespaces just labels and
annotations), never raw bodies. There are no change or delete handlers, so kopf
writes no annotations and adds no finalizers of its own; the reconciler manages
the one finalizer it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import structlog
from kubernetes import client, config

from controller.api.accountpolicy import MANAGED_BY, MANAGED_BY_LABEL
from controller.api.base import GROUP, VERSION
from controller.api.compact import compact
from controller.api.kinds import GPUExemption, GPUGrant, GPUNode, GPURateLimit
from controller.operator.election import LeaderElector
from controller.operator.lifecycle import PodLifecycle
from controller.operator.reconciler import Reconciler
from controller.operator.usagehistory import UsageRecorder
from controller.policy.accounts import Stored, StoredKind
from controller.policy.nodereport import decisive_part
from controller.policy.plan import Namespace
from controller.policy.pods import Pod, parse_pod
from controller.policy.usagehistory import MONTH_LABEL as USAGE_MONTH_LABEL

log = structlog.get_logger("ds01.operator")


def _parse(model: Any, body: kopf.Body) -> Any:
    """The object as ``model``, compacted: it is kept until its next version (`compact`)."""
    try:
        return compact(model.model_validate(dict(body)))
    except ValueError as error:
        # The apiserver validated it against the CRD, so this means a schema newer
        # than this operator: skip the object rather than decide from a guess.
        log.warning(
            "cannot read object; ignoring it",
            kind=body.get("kind"),
            name=body.get("metadata", {}).get("name"),
            error=str(error)[:500],
        )
        return None


def connection_info(kubeconfig: Path) -> kopf.ConnectionInfo:
    """kopf's credentials from an explicit kubeconfig (certificate or bearer token)."""
    loaded = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=loaded)
    header = loaded.get_api_key_with_prefix("BearerToken") or loaded.get_api_key_with_prefix(
        "authorization"
    )
    token = header.split(" ", 1)[-1] if header else None
    return kopf.ConnectionInfo(
        server=loaded.host,
        ca_path=loaded.ssl_ca_cert,
        certificate_path=loaded.cert_file,
        private_key_path=loaded.key_file,
        scheme="Bearer" if token else None,
        token=token,
    )


class RetryForever:
    """kopf's backoffs for API errors it retries (connections, 5xx): never giving up.

    With a list, kopf escalates once it is used up, and an escalated error in its
    resource observer stops the whole operator: an apiserver down for longer than
    the list's sum (a control-plane upgrade, an etcd restore) turned into a crash,
    and in a pod into CrashLoopBackOff with growing delays after the apiserver was
    back. client-go's reflectors retry without end, and so does this: 1, 2, 5 s,
    then every 10 s. Not `Sized`, so kopf counts no last attempt; a fresh iterator
    per request. Refusals (4xx) are not retried by kopf either way.
    """

    def __iter__(self) -> Iterator[float]:
        return itertools.chain((1.0, 2.0, 5.0), itertools.repeat(10.0))


def _configure(settings: kopf.OperatorSettings) -> None:
    """kopf's settings: our annotation prefix, quiet Events, bounded watches."""
    settings.persistence.finalizer = f"{GROUP}/kopf"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.error_backoffs = RetryForever()
    # No worker limit: kopf holds each object's worker until every index is
    # populated, so a limit below the number of objects deadlocks the start-up.
    settings.batching.worker_limit = None
    settings.execution.max_workers = 4


def _background(
    registry: kopf.OperatorRegistry,
    reconciler: Reconciler,
    lifecycle: PodLifecycle | None,
    usage: UsageRecorder | None,
    elector: LeaderElector | None,
) -> None:
    """The operator's own tasks beside kopf's: started with it, stopped before it ends.

    With ``elector``, they write only while this replica holds the Lease; at
    shutdown it stops writing, lets the writes in flight finish, and hands the
    Lease back so another replica takes over at once.
    """

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        _configure(settings)
        if elector is not None:
            elector.start()
        memo["task"] = asyncio.create_task(reconciler.run(), name="ds01-reconciler")
        if lifecycle is not None:
            memo["lifecycle"] = asyncio.create_task(lifecycle.run(), name="ds01-lifecycle")
        if usage is not None:
            memo["usage"] = asyncio.create_task(usage.run(), name="ds01-usage-history")

    @kopf.on.cleanup(registry=registry)
    async def stop(memo: kopf.Memo, **_: Any) -> None:
        for name in ("task", "lifecycle", "usage"):
            task = memo.get(name)
            if task is not None:
                task.cancel()
        if elector is not None:
            await asyncio.to_thread(elector.resign)  # no write is sent after this
        with contextlib.suppress(TimeoutError):  # Events are best effort; audit is written
            await asyncio.wait_for(reconciler.writer.drain(), 5)
        if elector is not None:
            await asyncio.to_thread(reconciler.writer.pool.shutdown, wait=True)
            await asyncio.to_thread(elector.release)

    @kopf.on.probe(registry=registry, id="leader")
    def leader(**_: Any) -> bool:
        """In the liveness endpoint's answer: whether this replica leads (it may write)."""
        return reconciler.gate.leading()


def register(
    registry: kopf.OperatorRegistry,
    reconciler: Reconciler,
    kubeconfig: Path | None = None,
    lifecycle: PodLifecycle | None = None,
    usage: UsageRecorder | None = None,
    *,
    elector: LeaderElector | None = None,
) -> None:
    """Register the handlers of one operator instance on ``registry``.

    With ``lifecycle``, its checks of GPU pods run beside the reconciler; with
    ``usage``, so does the usage history; with ``elector``, only while leading.

    With ``kubeconfig``, kopf authenticates from that file only (not from
    whatever $KUBECONFIG the process inherited); without, in-cluster or default.
    """
    _background(registry, reconciler, lifecycle, usage, elector)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if kubeconfig is None:
            return kopf.login_via_client(**kwargs)
        return connection_info(kubeconfig)

    @kopf.index("namespaces", registry=registry, id="namespace_index")
    def namespace_index(
        name: str, labels: kopf.Labels, annotations: kopf.Annotations, meta: kopf.Meta, **_: Any
    ) -> dict[str, Namespace]:
        terminating = meta.get("deletionTimestamp") is not None
        return {name: Namespace(name, dict(labels), dict(annotations), terminating)}

    @kopf.index("pods", registry=registry, id="pod_index")
    def pod_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[str, Pod]:
        reconciler.nudge()
        return {f"{namespace}/{name}": parse_pod(body)}

    def managed(kind: StoredKind, field: str) -> Any:
        """An index of the operator's own objects of ``kind`` (by their managed-by label)."""

        def index(
            namespace: str | None, name: str, body: kopf.Body, meta: kopf.Meta, **_: Any
        ) -> dict[str, Stored]:
            reconciler.nudge()
            content = copy.deepcopy(dict(body.get(field) or {}))
            if kind == "ResourceQuota":
                content = dict(content.get("hard") or {})
            stored = Stored(
                kind, namespace or "", name, meta.get("uid"), meta.get("resourceVersion"), content
            )
            return {f"{namespace}/{name}": stored}

        return index

    owned = {MANAGED_BY_LABEL: MANAGED_BY}
    # The usage history (a ConfigMap per account and month, a year of them) is
    # the operator's too, but written by the UsageRecorder and never indexed.
    not_history: dict[str, Any] = {**owned, USAGE_MONTH_LABEL: kopf.ABSENT}
    for plural, kind, field in (
        ("resourcequotas", "ResourceQuota", "spec"),
        ("limitranges", "LimitRange", "spec"),
        ("configmaps", "ConfigMap", "data"),
    ):
        kopf.index(plural, registry=registry, id=f"{plural}_index", labels=not_history)(
            managed(kind, field)  # type: ignore[arg-type]
        )

    @kopf.index(GROUP, VERSION, "gpuratelimits", registry=registry, id="limit_index")
    def limit_index(name: str, body: kopf.Body, **_: Any) -> dict[str, GPURateLimit]:
        parsed = _parse(GPURateLimit, body)
        return {name: parsed} if parsed else {}

    @kopf.index(GROUP, VERSION, "gpugrants", registry=registry, id="grant_index")
    def grant_index(
        namespace: str | None, name: str, body: kopf.Body, **_: Any
    ) -> dict[str, GPUGrant]:
        parsed = _parse(GPUGrant, body)
        reconciler.nudge()
        return {f"{namespace}/{name}": parsed} if parsed else {}

    @kopf.index(GROUP, VERSION, "gpuexemptions", registry=registry, id="exemption_index")
    def exemption_index(name: str, body: kopf.Body, **_: Any) -> dict[str, GPUExemption]:
        parsed = _parse(GPUExemption, body)
        return {name: parsed} if parsed else {}

    decisive: dict[str, int] = {}
    """Per node, a hash of its last `decisive_part`: agents write their readings and
    heartbeat every few seconds, and those alone need no pass at once."""

    @kopf.index(GROUP, VERSION, "gpunodes", registry=registry, id="node_index")
    def node_index(name: str, body: kopf.Body, **_: Any) -> dict[str, GPUNode]:
        parsed = _parse(GPUNode, body)
        seen = hash(decisive_part(body))
        reconciler.nudge(decisive=decisive.get(name) != seen)
        decisive[name] = seen
        return {name: parsed} if parsed else {}

    def poke(**kwargs: Any) -> None:
        reconciler.poke(kwargs)

    def deleted(type: str, **_: Any) -> bool:
        return type == "DELETED"

    # Few objects, rare changes: every event pokes. Grants and nodes are many and
    # busy (our own status writes echo back), so their index functions nudge the
    # loop instead, which costs far less than a kopf handler per event; only their
    # deletions, which skip indexing, need a handler.
    for resource in (
        ("namespaces",),
        (GROUP, VERSION, "gpuratelimits"),
        (GROUP, VERSION, "gpuexemptions"),
    ):
        kopf.on.event(*resource, registry=registry, id=f"poke-{resource[-1]}")(poke)
    for plural in ("gpugrants", "gpunodes"):
        kopf.on.event(
            GROUP, VERSION, plural, registry=registry, id=f"deleted-{plural}", when=deleted
        )(poke)
    kopf.on.event("pods", registry=registry, id="deleted-pods", when=deleted)(poke)
    for plural in ("resourcequotas", "limitranges", "configmaps"):
        kopf.on.event(
            plural, registry=registry, id=f"deleted-{plural}", labels=owned, when=deleted
        )(poke)
