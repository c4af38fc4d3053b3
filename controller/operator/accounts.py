"""Writes each account's ResourceQuota, LimitRange, policy ConfigMap and Pod Security labels,
and removes orphans.

Only what differs from the stored object is written. Quantities are compared
as numbers (the apiserver rewrites ``0.5`` as ``500m``). The policy ConfigMap
is also the operator's memory (budget record, starts, alerts sent), so it is
patched at the resourceVersion it was read at: a pass that decided from an
older copy fails with 409 instead of overwriting newer memory, and its Events
and audit records are not announced (the next pass decides again).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.api.accountpolicy import (
    COMPONENT_LABEL,
    LIMIT_RANGE_NAME,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    POLICY_CONFIGMAP,
    QUOTA_NAME,
)
from controller.operator.patches import merge_patch
from controller.policy.accounts import AccountDecision, Stored, object_key, ours
from controller.policy.plan import Plan, Snapshot
from controller.policy.quantity import same_quantities
from controller.policy.quota import same_limit_range

Call = Callable[..., Coroutine[Any, Any, bool]]
"""`Writer.call`: runs a client call in the pool, counts it, returns whether it succeeded."""
After = Callable[[str], Callable[[], None] | None]
"""The audit records to write on the thread of an object's write, by its failure key."""

LABELS = {MANAGED_BY_LABEL: MANAGED_BY, "app.kubernetes.io/part-of": "ds01-controller"}


def _metadata(name: str, namespace: str, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": {**LABELS, COMPONENT_LABEL: component},
    }


def _create_or_patch(
    create: Callable[..., Any],
    patch: Callable[..., Any],
    namespace: str,
    name: str,
    body: dict[str, Any],
) -> None:
    """Create; when it exists without our label (so our index missed it), take it over."""
    try:
        create(namespace, body)
    except ApiException as error:
        if error.status != 409:
            raise
        patch(name, namespace, body)


def account_jobs(
    core: client.CoreV1Api,
    call: Call,
    plan: Plan,
    snapshot: Snapshot,
    after: After = lambda key: None,
) -> list[tuple[str, Coroutine[Any, Any, bool]]]:
    """(failure key, write) for every account object that must change."""
    stored = ours(snapshot.managed)
    jobs: list[tuple[str, Coroutine[Any, Any, bool]]] = []
    for namespace, decided in plan.accounts.items():
        jobs += _quota(core, call, decided, stored.get(("ResourceQuota", namespace)))
        jobs += _limit_range(core, call, decided, stored.get(("LimitRange", namespace)))
        jobs += _policy(core, call, decided, stored.get(("ConfigMap", namespace)), after)
    for namespace, labels in sorted(plan.pod_security.items()):
        # Pod Security Admission's labels (ds01-account-labels lets only the
        # operator and admins change them on accounts).
        jobs.append(
            (
                f"namespace:{namespace}",
                call(
                    "namespace/pod-security",
                    core.patch_namespace,
                    namespace,
                    {"metadata": {"labels": labels}},
                ),
            )
        )
    for orphan in plan.orphans:
        delete = {
            "ResourceQuota": core.delete_namespaced_resource_quota,
            "LimitRange": core.delete_namespaced_limit_range,
            "ConfigMap": core.delete_namespaced_config_map,
        }[orphan.kind]
        jobs.append(
            (
                f"{orphan.kind.lower()}:{orphan.namespace}/{orphan.name}",
                call(f"{orphan.kind.lower()}/delete", delete, orphan.name, orphan.namespace),
            )
        )
    return jobs


def _quota(
    core: client.CoreV1Api, call: Call, decided: AccountDecision, stored: Stored | None
) -> list[tuple[str, Coroutine[Any, Any, bool]]]:
    if stored is not None and same_quantities(stored.content, decided.quota):
        return []
    key = f"resourcequota:{decided.namespace}/{QUOTA_NAME}"
    if stored is None:
        body = {
            "metadata": _metadata(QUOTA_NAME, decided.namespace, "quota"),
            "spec": {"hard": decided.quota},
        }
        write = call(
            "resourcequota",
            _create_or_patch,
            core.create_namespaced_resource_quota,
            core.patch_namespaced_resource_quota,
            decided.namespace,
            QUOTA_NAME,
            body,
        )
    else:
        patch = {"spec": {"hard": merge_patch(dict(stored.content), decided.quota)}}
        write = call(
            "resourcequota",
            core.patch_namespaced_resource_quota,
            QUOTA_NAME,
            decided.namespace,
            patch,
        )
    return [(key, write)]


def _limit_range(
    core: client.CoreV1Api, call: Call, decided: AccountDecision, stored: Stored | None
) -> list[tuple[str, Coroutine[Any, Any, bool]]]:
    if same_limit_range(stored.content if stored else None, decided.limit_range):
        return []
    key = f"limitrange:{decided.namespace}/{LIMIT_RANGE_NAME}"
    body = {
        "metadata": _metadata(LIMIT_RANGE_NAME, decided.namespace, "limits"),
        "spec": decided.limit_range,
    }
    if stored is None:
        write = call(
            "limitrange",
            _create_or_patch,
            core.create_namespaced_limit_range,
            core.patch_namespaced_limit_range,
            decided.namespace,
            LIMIT_RANGE_NAME,
            body,
        )
    else:
        # A list replaces the stored one whole under a merge patch.
        write = call(
            "limitrange",
            core.patch_namespaced_limit_range,
            LIMIT_RANGE_NAME,
            decided.namespace,
            {"spec": decided.limit_range},
        )
    return [(key, write)]


def _policy(
    core: client.CoreV1Api,
    call: Call,
    decided: AccountDecision,
    stored: Stored | None,
    after: After,
) -> list[tuple[str, Coroutine[Any, Any, bool]]]:
    if stored is not None and dict(stored.content) == decided.data:
        return []
    key = object_key(decided.namespace)
    if stored is None:
        body = {
            "metadata": _metadata(POLICY_CONFIGMAP, decided.namespace, "policy"),
            "data": decided.data,
        }
        write = call(
            "configmap",
            _create_or_patch,
            core.create_namespaced_config_map,
            core.patch_namespaced_config_map,
            decided.namespace,
            POLICY_CONFIGMAP,
            body,
            after=after(key),
        )
    else:
        patch = {
            "metadata": {"resourceVersion": stored.resource_version},
            "data": merge_patch(dict(stored.content), decided.data),
        }
        write = call(
            "configmap",
            core.patch_namespaced_config_map,
            POLICY_CONFIGMAP,
            decided.namespace,
            patch,
            after=after(key),
        )
    return [(key, write)]
