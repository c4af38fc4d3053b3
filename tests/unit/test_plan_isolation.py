"""No object the apiserver admits can stop the plan, and one that cannot be decided stops only itself.

The objects are generated from the CRDs' own OpenAPI schemas, CEL rules
included (`tests.unit.schema_strategies`). Three claims:

- every admitted object is read by the models (an unreadable one would be
  skipped by the operator without a word);
- `plan` decides any cluster of admitted objects without setting any of them
  aside: the schema and the policy code agree on what is valid;
- an object that cannot be decided anyway (written before a schema was
  tightened, or a fault in the policy) is marked `Ready=False` with a message
  and one Event, keeps what it holds, and every other object is decided.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.api.grant import GPUGrantStatus, GrantGPUs
from controller.api.kinds import GPUExemption, GPUGrant, GPUNode, GPURateLimit
from controller.policy.conditions import find
from controller.policy.plan import Plan, Settings, Snapshot, plan
from tests.unit import admitted
from tests.unit.fixtures import T0, grant
from tests.unit.test_plan import LIMITS, host_grant, settle

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    # Whole objects with status are large by nature; the schema bounds them, not the test.
    # The CRD-driven strategies filter (CEL rules, cross-field checks): on an unlucky
    # run more inputs are filtered than generated, which is not a failure of the property.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
MOMENTS = st.integers(-3 * 24 * 60, 3 * 24 * 60).map(lambda m: T0 + timedelta(minutes=m))


@pytest.mark.parametrize(
    ("strategy", "model"),
    [
        (admitted.grants, GPUGrant),
        (admitted.limits, GPURateLimit),
        (admitted.exemptions, GPUExemption),
        (admitted.nodes, GPUNode),
    ],
    ids=["GPUGrant", "GPURateLimit", "GPUExemption", "GPUNode"],
)
def test_every_admitted_object_is_read_by_the_models(strategy: Any, model: type) -> None:
    @PROPERTY
    @given(strategy())
    def check(obj: Any) -> None:
        assert isinstance(obj, model)
        assert model.model_validate(obj.model_dump(by_alias=True)) == obj

    check()


@PROPERTY
@given(admitted.snapshots(), MOMENTS)
def test_plan_decides_every_admitted_object_and_sets_none_aside(
    snapshot: Snapshot, now: datetime
) -> None:
    decided = plan(snapshot, now)
    assert decided.failures == [], [f.message for f in decided.failures]
    assert set(decided.grant_status) == {
        f"{g.metadata.namespace}/{g.metadata.name}" for g in snapshot.grants
    }
    assert set(decided.limit_status) == {lim.metadata.name for lim in snapshot.limits}
    assert set(decided.exemption_status) == {x.metadata.name for x in snapshot.exemptions}
    assert set(decided.node_specs) == {n.metadata.name for n in snapshot.nodes}


# -- an object that cannot be decided ---------------------------------------------

ACCOUNTS = admitted.ACCOUNTS


def _poisoned(g: GPUGrant) -> GPUGrant:
    """``g`` asking for an 8-slice MIG profile, as the schema allowed before it was
    tightened: no GPU has 8 slices, so its GPU-equivalents cannot be computed."""
    gpus = GrantGPUs.model_construct(count=g.spec.gpus.count, mig_profile="8g.80gb")
    return g.model_copy(update={"spec": g.spec.model_copy(update={"gpus": gpus})})


def _ready(decided: Plan, key: str) -> Any:
    return find(decided.grant_status[key].conditions, "Ready")


def test_a_grant_that_cannot_be_decided_is_marked_and_the_others_become_active() -> None:
    good = grant("good", created=T0)
    bad = _poisoned(grant("bad", created=T0 - timedelta(minutes=1)))
    snapshot = Snapshot(ACCOUNTS, LIMITS, [bad, good], [], [admitted.NODE])
    decided = plan(snapshot, T0 + timedelta(minutes=1))

    assert decided.grant_status["u-alice/good"].state == "Active"
    ready = _ready(decided, "u-alice/bad")
    assert (ready.status, ready.reason) == ("False", "Invalid")
    assert "migProfile" in ready.message and "8g.80gb" in ready.message
    assert decided.grant_status["u-alice/bad"].state == "Invalid"
    warnings = [e for e in decided.events if e.about.name == "bad"]
    assert [(e.type, e.reason) for e in warnings] == [("Warning", "Invalid")]
    assert [f.key for f in decided.failures] == ["GPUGrant/u-alice/bad"]


def test_a_failure_is_announced_once_not_on_every_pass() -> None:
    bad = _poisoned(grant("bad"))
    snapshot = settle(Snapshot(ACCOUNTS, LIMITS, [bad], [], [admitted.NODE]), T0)
    again = plan(snapshot, T0 + timedelta(minutes=5))
    assert [f.key for f in again.failures] == ["GPUGrant/u-alice/bad"]
    assert [e for e in again.events if e.about.name == "bad"] == []


def test_an_active_grant_that_starts_failing_keeps_its_devices_and_host_access() -> None:
    """Failing takes nothing away: its reservation and host access stay on the node
    (each ends at its own time) and its devices are given to no one else."""
    held = settle(Snapshot(ACCOUNTS, LIMITS, [host_grant()], [], [admitted.NODE]), T0)
    (active,) = held.grants
    assert active.status is not None and active.status.state == "Active"
    devices = [d.uuid for n in active.status.allocations or () for d in n.devices]
    rival = grant("rival", created=T0 + timedelta(minutes=1), placement={"deviceUUIDs": devices})
    snapshot = Snapshot(ACCOUNTS, LIMITS, [_poisoned(active), rival], [], [held.nodes[0]])
    decided = plan(snapshot, T0 + timedelta(minutes=2))

    spec = decided.node_specs[admitted.NODE.metadata.name]
    assert [h.user for h in spec.host_access or ()] == ["alice@lab.example"]
    assert {r.device_uuid for r in spec.reservations or ()} == set(devices)
    assert decided.grant_status["u-alice/rival"].state == "Approved"  # waits: not given away
    assert decided.grant_status["u-alice/host"].allocations == active.status.allocations


def test_an_exemption_that_cannot_be_decided_is_marked_and_the_grants_are_decided() -> None:
    exemption = GPUExemption.model_validate(
        {
            "metadata": {"name": "naive"},
            "spec": {
                "subject": {"kind": "User", "name": "alice@lab.example"},
                "exemptFrom": ["IdleTimeout"],
                "category": "Waiver",
                "reason": "test",
            },
        }
    )
    # A time without a zone (which no parsed object carries): comparing it raises,
    # standing for any fault in the policy code.
    broken = exemption.model_copy(
        update={"spec": exemption.spec.model_copy(update={"starts_at": datetime(2026, 1, 1)})}
    )
    snapshot = Snapshot(ACCOUNTS, LIMITS, [grant("good")], [broken], [admitted.NODE])
    decided = plan(snapshot, T0 + timedelta(minutes=1))
    assert decided.grant_status["u-alice/good"].state == "Active"
    ready = find(decided.exemption_status["naive"].conditions, "Ready")
    assert ready is not None and (ready.status, ready.reason) == ("False", "Error")
    assert "fault in ds01-controller" in ready.message
    assert [e.reason for e in decided.events if e.about.name == "naive"] == ["Error"]


def test_a_node_whose_report_cannot_be_read_keeps_its_spec_and_the_others_proceed() -> None:
    node2 = admitted.a100_node("gpu-node-2", mig={0: ["1g.10gb"]})
    assert node2.status is not None and node2.status.devices
    # A slice profile no GPU has (as an older schema let an agent write): its share of
    # the GPU cannot be computed.
    device = node2.status.devices[0]
    (mig,) = device.mig_instances or ()
    odd = mig.model_copy(update={"profile": "9g.90gb"})
    broken = node2.model_copy(
        update={
            "status": node2.status.model_copy(
                update={
                    "devices": [
                        device.model_copy(update={"mig_instances": [odd]}),
                        *node2.status.devices[1:],
                    ]
                }
            )
        }
    )
    snapshot = Snapshot(
        ACCOUNTS,
        LIMITS,
        [grant("good", placement={"reserve": True})],
        [],
        [admitted.NODE, broken],
    )
    decided = plan(snapshot, T0 + timedelta(minutes=1))
    assert decided.grant_status["u-alice/good"].state == "Active"
    assert decided.grant_status["u-alice/good"].allocations is not None
    assert [f.key for f in decided.failures] == ["GPUNode/gpu-node-2"]
    assert "9g.90gb" in decided.failures[0].message
    assert "gpu-node-2" not in decided.node_specs  # its stored spec is left as it is


def test_a_grant_whose_expiry_is_before_its_creation_is_invalid_naming_the_field() -> None:
    """expiresAt without start is compared with the creation time only by the operator."""
    early = grant("early", duration=None, expiresAt=(T0 - timedelta(days=1)).isoformat())
    decided = plan(Snapshot(ACCOUNTS, LIMITS, [early], [], [admitted.NODE]), T0)
    status: GPUGrantStatus = decided.grant_status["u-alice/early"]
    assert status.state == "Invalid"
    approved = find(status.conditions, "Approved")
    assert approved is not None and approved.message.startswith("spec.expiresAt:")
    assert decided.failures == []


def test_the_operator_announces_a_node_or_account_failure_once_per_change() -> None:
    """Nodes and accounts have no status of the operator's: their Event comes from the loop,
    once when the failure appears or changes, not on every pass."""
    from controller.operator import metrics
    from controller.operator.reconciler import Reconciler
    from controller.policy.isolation import Failure
    from controller.policy.records import ObjectRef

    reconciler = Reconciler(writer=None, settings=Settings())  # type: ignore[arg-type]
    node = Failure(ObjectRef("GPUNode", "gpu-node-2"), "Invalid", "cannot be decided: a")
    grant_failure = Failure(ObjectRef("GPUGrant", "bad", "u-alice"), "Invalid", "x")
    first = reconciler._failures(Plan(failures=[node, grant_failure]))
    assert [(e.about.kind, e.reason, e.type) for e in first] == [("GPUNode", "Invalid", "Warning")]
    assert reconciler._failures(Plan(failures=[node, grant_failure])) == []
    changed = Failure(node.about, "Error", "cannot be decided: b")
    assert [e.message for e in reconciler._failures(Plan(failures=[changed]))] == [changed.message]
    assert metrics.OBJECTS_FAILED.labels(kind="GPUNode")._value.get() == 1
    reconciler._failures(Plan())
    assert metrics.OBJECTS_FAILED.labels(kind="GPUNode")._value.get() == 0
