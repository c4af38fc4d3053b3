"""Helpers for the per-account tests: pods, the published policy, quota status, Events."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from controller.devcluster.process import wait_until
from tests.controlplane.kube import Kube

DEADLINE_S = 30


def pod(
    name: str,
    gpus: dict[str, int] | None = None,
    memory: str | None = None,
    **container: Any,
) -> dict[str, Any]:
    """A pod with one container asking for ``gpus`` (resource name -> count)."""
    limits: dict[str, str] = {k: str(v) for k, v in (gpus or {}).items()}
    if memory:
        limits["memory"] = memory
    main = {"name": "main", "image": "busybox:local", **container}
    if limits:
        main["resources"] = {"limits": limits}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [main]},
    }


def create_pod(kube: Kube, namespace: str, body: dict[str, Any], check: bool = True) -> Any:
    return kube.kubectl("create", "-n", namespace, "-f", "-", stdin=json.dumps(body), check=check)


def published(kube: Kube, namespace: str) -> dict[str, Any]:
    """The ConfigMap ds01-policy's data, with policy.json parsed (empty when absent)."""
    try:
        data = kube.core.read_namespaced_config_map("ds01-policy", namespace).data or {}
    except ApiException as error:
        if error.status == 404:
            return {}
        raise
    out: dict[str, Any] = dict(data)
    if "policy.json" in out:
        out["policy.json"] = json.loads(out["policy.json"])
    return out


def document(kube: Kube, namespace: str) -> dict[str, Any]:
    return published(kube, namespace).get("policy.json", {})


def condition(doc: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in doc.get("conditions", []) if c["type"] == type_), {})


def wait_document(
    kube: Kube,
    namespace: str,
    holds: Callable[[dict[str, Any]], bool],
    what: str,
    deadline_s: float = DEADLINE_S,
) -> dict[str, Any]:
    """Wait until the published document satisfies ``holds``; return it."""
    found: dict[str, Any] = {}

    def check() -> bool:
        found.clear()
        found.update(document(kube, namespace))
        return bool(found) and holds(found)

    try:
        wait_until(check, deadline_s, what, 0.2)
    except TimeoutError as error:
        brief = {k: found.get(k) for k in ("allowance", "quota", "conditions", "rates")}
        raise AssertionError(f"{error}; published: {json.dumps(brief)[:3000]}") from None
    return found


def quota(kube: Kube, namespace: str) -> dict[str, Any]:
    return kube.core.read_namespaced_resource_quota("ds01", namespace).to_dict()


def wait_quota(
    kube: Kube, namespace: str, expected: dict[str, str], deadline_s: float = DEADLINE_S
) -> None:
    """Wait until ResourceQuota ds01 holds ``expected`` lines in spec and in status.

    Admission enforces `status.hard`, which kube-controller-manager copies from
    the spec, so both must agree before a test relies on a limit.
    """
    seen: dict[str, Any] = {}

    def applied() -> bool:
        try:
            current = quota(kube, namespace)
        except ApiException:
            return False
        seen.update(current)
        spec = current["spec"]["hard"] or {}
        status = (current.get("status") or {}).get("hard") or {}
        return all(spec.get(k) == v and status.get(k) == v for k, v in expected.items())

    try:
        wait_until(applied, deadline_s, f"quota lines {expected} in {namespace}", 0.2)
    except TimeoutError as error:
        raise AssertionError(
            f"{error}; spec {seen.get('spec', {}).get('hard')}, "
            f"status {(seen.get('status') or {}).get('hard')}"
        ) from None


def events(kube: Kube, namespace: str, reason: str) -> list[dict[str, Any]]:
    listing = kube.get("events", "-n", namespace, "--field-selector", f"reason={reason}")
    return listing["items"]


def wait_event(kube: Kube, namespace: str, reason: str, count: int = 1) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = events(kube, namespace, reason)
        return len(found) >= count

    wait_until(seen, DEADLINE_S, f"{count} {reason} Event(s) in {namespace}", 0.2)
    return found


def refused_with(kube: Kube, namespace: str, body: dict[str, Any], fragment: str) -> str:
    """Create ``body`` and return the refusal, once the refusal says ``fragment``.

    The admission policies read the operator's parameters through the
    apiserver's own watch cache, a moment behind what a client reads back:
    server-side dry runs (judged by admission, stored nowhere) are polled
    until the refusal is the expected one, then the real request must agree.
    """

    def says() -> bool:
        result = kube.kubectl(
            "create",
            "--dry-run=server",
            "-n",
            namespace,
            "-f",
            "-",
            stdin=json.dumps(body),
            check=False,
        )
        return fragment in " ".join(result.stderr.split())

    wait_until(says, DEADLINE_S, f"admission to refuse {body['metadata']['name']}: {fragment}", 0.2)
    result = create_pod(kube, namespace, body, check=False)
    assert result.returncode != 0, f"{body['metadata']['name']} was admitted"
    message = " ".join(result.stderr.split())
    assert fragment in message, message
    return message
