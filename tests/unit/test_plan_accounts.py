"""The whole-cluster plan's account part: which namespaces get objects, and from what."""

from __future__ import annotations

import json
from dataclasses import replace
from fractions import Fraction

from controller.api.kinds import GPUNode
from controller.policy.accounts import Stored
from controller.policy.plan import DecisionCache, Namespace, Snapshot, plan
from controller.policy.pods import Pod
from tests.unit.fixtures import a100_node, grant, later
from tests.unit.test_plan import ACCOUNTS, LIMITS, world

BROKEN = Namespace(
    "u-broken",
    {"gpu.ds01.io/user": "carol-lab.example"},
    {"gpu.ds01.io/user-name": "someone-else@lab.example"},
)
LEAVING = Namespace(
    "u-leaving",
    {"gpu.ds01.io/user": "dan-lab.example"},
    {"gpu.ds01.io/user-name": "dan@lab.example"},
    terminating=True,
)


def stored(kind: str, namespace: str) -> Stored:
    name = "ds01-policy" if kind == "ConfigMap" else "ds01"
    return Stored(kind, namespace, name, "uid", "1", {})  # type: ignore[arg-type]


def test_only_valid_live_accounts_get_objects_and_former_accounts_are_cleaned() -> None:
    snapshot = replace(
        world([]),
        namespaces=[*ACCOUNTS, BROKEN, LEAVING],
        managed=[
            stored("ResourceQuota", "default"),  # "default" is not (or no longer) an account
            stored("ConfigMap", "u-broken"),  # broken annotations keep their record
            stored("LimitRange", "u-leaving"),  # the namespace deletion removes it
            stored("ConfigMap", "gone"),  # namespace already gone
            # Labelled like ours by someone else (an admin): neither read nor removed.
            Stored("ConfigMap", "default", "admin-notes", "uid", "1", {}),
            Stored("ConfigMap", "u-alice", "admin-notes", "uid", "1", {"format": "x"}),
        ],
    )
    decided = plan(snapshot, later(1))
    assert sorted(decided.accounts) == ["u-alice", "u-bob"]
    assert [(o.kind, o.namespace) for o in decided.orphans] == [("ResourceQuota", "default")]


def test_active_grants_and_agent_reports_reach_the_account() -> None:
    extra = grant("extra", count=2)  # researchers' grants are auto-approved (LIMITS)
    node = a100_node(gpus=2)
    assert node.status is not None and node.status.devices
    device = node.status.devices[0].uuid
    reporting = GPUNode.model_validate(
        {
            **node.model_dump(by_alias=True, mode="json"),
            "status": {
                **node.status.model_dump(by_alias=True, mode="json", exclude_none=True),
                "workloads": [
                    {
                        "kind": "Pod",
                        "name": "train",
                        "namespace": "u-alice",
                        "owner": "alice@lab.example",
                        "ownerSource": "Namespace",
                        "devices": [device],
                    }
                ],
            },
        }
    )
    pod = Pod(
        "u-alice",
        "train",
        "uid-train",
        later(0),
        requests={"gpu.ds01.io/gpu": Fraction(1)},
    )
    snapshot = replace(world([extra], [reporting]), pods=[pod])
    decided = plan(snapshot, later(1)).accounts["u-alice"]
    # 1 (GPURateLimit/researcher) + 2 (the grant), 1 in use by the pod.
    assert decided.quota["requests.gpu.ds01.io/gpu"] == "3"
    doc = json.loads(decided.data["policy.json"])
    assert doc["allowance"]["grants"] == "2" and doc["allowance"]["inUse"] == "1"
    assert doc["usage"]["reportedGPUEquivalents"] == "1"
    assert doc["budget"]["rate"] == 1.0
    assert [g["name"] for g in doc["grants"]] == ["extra"]


def test_the_published_record_is_read_back() -> None:
    first = plan(world([]), later(1)).accounts["u-bob"]
    snapshot = replace(
        world([]),
        managed=[Stored("ConfigMap", "u-bob", "ds01-policy", "uid-1", "7", first.data)],
        pods=[Pod("u-bob", f"p{i}", f"uid-p{i}", later(2)) for i in range(3)],
    )
    second = plan(snapshot, later(3)).accounts["u-bob"]
    doc = json.loads(second.data["policy.json"])
    assert [s["pod"] for s in doc["rates"]["starts"]] == ["p0", "p1", "p2"]
    # Conditions keep the time they last changed.
    before = json.loads(first.data["policy.json"])["conditions"]
    assert [c["lastTransitionTime"] for c in doc["conditions"]] == [
        c["lastTransitionTime"] for c in before
    ]
    # Three pods of bob's three: an alert about the ConfigMap the operator read back.
    [alert] = second.events
    assert alert.reason == "QuotaAlert" and alert.about.uid == "uid-1"
    assert alert.about.namespace == "u-bob" and alert.about.name == "ds01-policy"


def test_plans_without_pods_or_managed_objects_still_work() -> None:
    bare = Snapshot(ACCOUNTS, LIMITS, [], [], [])
    assert set(plan(bare, later(1)).accounts) == {"u-alice", "u-bob"}


def test_account_decisions_are_the_same_with_and_without_the_cache() -> None:
    cache = DecisionCache()
    snapshot = replace(world([]), pods=[Pod("u-bob", "p", "uid-p", later(0))])
    for minute in (1, 2, 30, 59, 61, 300):
        cached = plan(snapshot, later(minute), cache=cache)
        fresh = plan(snapshot, later(minute))
        assert {n: (a.data, a.quota, a.events) for n, a in cached.accounts.items()} == {
            n: (a.data, a.quota, a.events) for n, a in fresh.accounts.items()
        }
        snapshot = replace(
            snapshot,
            managed=[
                Stored("ConfigMap", n, "ds01-policy", "uid", str(minute), a.data)
                for n, a in cached.accounts.items()
            ],
        )
