"""A grant that cannot be decided stops only itself; ended grants are deleted after the retention.

Its own control plane and operator (retention of a few seconds). The poisoned
grant is made the way such objects really arise: it is created while the CRD
still admits it (an older schema, applied here for a moment), then the
current CRD is put back; stored objects are not revalidated. Everything is
judged by the real apiserver and the operator running as its ServiceAccount.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest

from controller.cli.dev import add_simulated_node, install
from controller.devcluster.controlplane import KubectlError, LocalCluster
from controller.devcluster.process import wait_until
from tests.controlplane.conftest import OperatorEnv
from tests.controlplane.kube import Kube
from tests.controlplane.test_operator import (
    condition,
    events,
    grant,
    grant_manifest,
    make_account,
    wait_state,
)

RETENTION_S = 4
CRD = "gpugrants.gpu.ds01.io"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorEnv]:
    with LocalCluster(tmp_path_factory.mktemp("isolation-cluster")) as started:
        install(started, samples=True)
        add_simulated_node(started, "gpu-node-1")
        operator = OperatorEnv(started)
        operator.start(f"--finished-grant-retention={RETENTION_S}s")
        yield operator


@pytest.fixture(scope="module")
def researcher(env: OperatorEnv) -> tuple[str, Kube]:
    return make_account(env, "iso@lab.example", "researcher", "iso")


def _clean(crd: dict[str, Any]) -> dict[str, Any]:
    """``crd`` as a manifest to replace the stored one with."""
    out = copy.deepcopy(crd)
    for key in ("uid", "creationTimestamp", "generation", "managedFields"):
        out["metadata"].pop(key, None)
    out.pop("status", None)
    return out


def _without_time_bounds(crd: dict[str, Any]) -> dict[str, Any]:
    """The GPUGrant CRD as it was before spec times were bounded to 1970-2199."""
    older = _clean(crd)
    spec = older["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for name in ("start", "expiresAt"):
        spec["properties"][name].pop("x-kubernetes-validations", None)
    return older


def _replace_crd(env: OperatorEnv, crd: dict[str, Any]) -> None:
    stored = env.admin.get("crd", CRD)["metadata"]["resourceVersion"]
    body = {**crd, "metadata": {**crd["metadata"], "resourceVersion": stored}}
    env.admin.kubectl("replace", "-f", "-", stdin=json.dumps(body))


def _create_when_admitted(kube: Kube, manifest: dict[str, Any]) -> None:
    """Create ``manifest`` once the apiserver serves the schema that admits it."""

    def created() -> bool:
        try:
            kube.create(manifest)
        except KubectlError:
            return False
        return True

    wait_until(created, 30, "the older schema to admit the grant")


def test_a_grant_that_cannot_be_decided_is_marked_and_others_still_become_active(
    env: OperatorEnv, researcher: tuple[str, Kube]
) -> None:
    namespace, user = researcher
    # Today's schema refuses the poison at admission, naming the field.
    poison = grant_manifest(
        namespace, "poison", "iso@lab.example", start="9999-12-30T00:00:00Z", duration="8760h"
    )
    refused = user.create(poison, check=False)
    assert refused.returncode != 0
    assert "spec.start" in refused.stderr and "1970 to 2199" in refused.stderr

    current = env.admin.get("crd", CRD)
    _replace_crd(env, _without_time_bounds(current))
    try:
        _create_when_admitted(user, poison)
    finally:
        _replace_crd(env, _clean(current))

    # The operator sets it aside (its window would end after year 9999) ...
    def marked() -> bool:
        status = grant(user, namespace, "poison").get("status", {})
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
        return ready is not None and ready["reason"] == "Invalid"

    wait_until(marked, 30, "the poisoned grant to be marked Invalid")
    stored = grant(user, namespace, "poison")
    ready = condition(stored, "Ready")
    assert ready["status"] == "False"
    assert "OverflowError" in ready["message"] or "out of range" in ready["message"]
    assert [e["reason"] for e in events(user, namespace, "poison")] == ["Invalid"]

    # ... and everyone else is decided as usual, while it is still there.
    user.create(grant_manifest(namespace, "healthy", "iso@lab.example", duration="1h"))
    active = wait_state(user, namespace, "healthy", "Active")
    assert condition(active, "Ready")["status"] == "True"
    assert grant(user, namespace, "poison")["status"]["state"] == "Invalid"
    assert [e["reason"] for e in events(user, namespace, "poison")] == ["Invalid"]  # once


def test_ended_grants_are_deleted_after_the_retention_with_their_record_kept(
    env: OperatorEnv, researcher: tuple[str, Kube]
) -> None:
    namespace, user = researcher
    user.create(
        grant_manifest(
            namespace, "brief", "iso@lab.example", duration="3s", placement={"reserve": True}
        )
    )
    held = wait_state(user, namespace, "brief", "Active")
    assert "gpu.ds01.io/revocation" in held["metadata"]["finalizers"]
    wait_state(user, namespace, "brief", "Expired")

    def gone() -> bool:
        found = user.kubectl("get", "gpugrant", "brief", "-n", namespace, check=False)
        return found.returncode != 0 and "NotFound" in found.stderr

    wait_until(gone, 60, "the expired grant to be deleted by the retention policy")
    records = [r for r in env.audit_events() if r["details"].get("grant") == f"{namespace}/brief"]
    kinds = [r["event_type"] for r in records]
    assert kinds.index("grant.expired") < kinds.index("grant.deleted")
    (deleted,) = [r for r in records if r["event_type"] == "grant.deleted"]
    assert deleted["details"]["reason"] == "retention"
    assert deleted["details"]["state"] == "Expired"
    assert deleted["details"]["devices"]  # what it held, kept in the record
    assert deleted["details"]["usage"]["gpuHoursGranted"] > 0
    assert "Deleted" in [e["reason"] for e in events(user, namespace, "brief")]
