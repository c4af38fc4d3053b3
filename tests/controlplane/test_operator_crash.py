"""The operator is SIGKILLed while 200 grants are being created, then restarted.

Every grant must converge (a decided state for its current generation), no
device may be held by two grants at once, and no grant may be lost. Capacity
is deliberately smaller than demand so that the devices are contested.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client

from controller.cli.dev import add_simulated_node
from controller.devcluster import simnode
from controller.devcluster.process import wait_until
from tests.controlplane.conftest import OperatorEnv
from tests.controlplane.test_operator import make_account

USERS = 20
PER_USER = 10
NODES = ("crash-a", "crash-b")


def _grant(namespace: str, user: str, index: int) -> dict[str, Any]:
    return {
        "apiVersion": "gpu.ds01.io/v1alpha1",
        "kind": "GPUGrant",
        "metadata": {"name": f"load-{index:03d}", "namespace": namespace},
        "spec": {
            "subject": {"kind": "User", "name": user},
            "gpus": {"count": 1},
            "placement": {"reserve": True, "nodeSelector": {"gpu.ds01.io/crash-test": "true"}},
            "duration": "1h",
            "reason": "crash test",
        },
    }


def test_sigkill_during_200_creations_loses_nothing(operator_env: OperatorEnv) -> None:
    admin = operator_env.admin
    admin.apply(
        {
            "apiVersion": "gpu.ds01.io/v1alpha1",
            "kind": "GPURateLimit",
            "metadata": {"name": "crash-test"},
            "spec": {
                "subjects": [{"kind": "Group", "name": "crash-test"}],
                "priority": 50,
                "grants": {"approval": "Auto", "maxGPUEquivalents": "Unlimited"},
                "rates": {"grantRequestsPerDay": "Unlimited"},
            },
        }
    )
    for name in NODES:
        add_simulated_node(operator_env.cluster, name, {"gpu.ds01.io/crash-test": "true"})
    whole_gpus = sum(
        1 for name in NODES for d in simnode.inventory(name) if "migInstances" not in d
    )

    accounts = [
        make_account(operator_env, f"load{u:02d}@lab.example", "crash-test") for u in range(USERS)
    ]
    bodies = [
        (namespace, _grant(namespace, f"load{u:02d}@lab.example", u * PER_USER + i))
        for u, (namespace, _) in enumerate(accounts)
        for i in range(PER_USER)
    ]
    api = client.CustomObjectsApi(admin.api)

    def create(item: tuple[str, dict[str, Any]]) -> None:
        api.create_namespaced_custom_object(
            "gpu.ds01.io", "v1alpha1", item[0], "gpugrants", item[1]
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, bodies[:100]))
        operator_env.kill()
        list(pool.map(create, bodies[100:]))
    operator_env.start()

    def everything() -> list[dict[str, Any]]:
        items = api.list_cluster_custom_object("gpu.ds01.io", "v1alpha1", "gpugrants")["items"]
        return [g for g in items if g["metadata"]["name"].startswith("load-")]

    seen: Counter[tuple[Any, ...]] = Counter()

    def converged() -> bool:
        items = everything()
        seen.clear()
        seen.update(
            (
                g.get("status", {}).get("state"),
                g.get("status", {}).get("observedGeneration") == g["metadata"]["generation"],
                "gpu.ds01.io/revocation" in g["metadata"].get("finalizers", []),
            )
            for g in items
        )
        return len(items) == len(bodies) and set(seen) <= {
            ("Active", True, True),
            ("Approved", True, True),
        }

    try:
        wait_until(converged, 120, "all 200 grants to converge after the restart")
    except TimeoutError as error:
        raise AssertionError(f"{error}; (state, current, finalizer) counts: {dict(seen)}") from None
    items = everything()
    states = Counter(g["status"]["state"] for g in items)
    holders = Counter(
        d["uuid"] for g in items for a in g["status"].get("allocations") or () for d in a["devices"]
    )
    assert len(items) == 200
    assert states["Active"] == whole_gpus, states
    assert states["Approved"] == 200 - whole_gpus, states
    assert max(holders.values()) == 1, "a device is held by two grants"
    assert len(holders) == whole_gpus
    waiting = next(g for g in items if g["status"]["state"] == "Approved")
    message = next(c for c in waiting["status"]["conditions"] if c["type"] == "Active")["message"]
    assert "no node has 1 x whole GPU free" in message

    reserved = [
        r["deviceUUID"]
        for name in NODES
        for r in admin.get("gpunode", name)["spec"].get("reservations", [])
    ]
    assert sorted(reserved) == sorted(holders)
