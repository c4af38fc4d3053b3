"""The agent's decisions hold for any spec the apiserver admits and anything NVML reports.

GPUNode specs come from the CRD's own schema (`tests.unit.schema_strategies`);
NVML readings are drawn beyond what any real GPU reports (utilisation over
100, negative memory, process IDs of 0, UUIDs that are not UUIDs, MIG slices
without their numbers). The claims: reading the spec, deciding enforcement,
attributing processes and writing the status never raise; a spec entry that
cannot be read is reported and left out while the rest is enforced; a GPU
whose readings are out of range is still reported, without those readings.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.agent.inventory import DeviceNode, Gpu, Inventory, MigSlice, Sample
from controller.agent.report import Health, devices, status
from controller.api.node import GPUNodeSpec
from controller.policy.attribution import Memory, NodeView, ProcessUse, attribute
from controller.policy.enforcement import Holder, Place, SlotDevices, decide
from controller.policy.nodespec import read_spec
from tests.unit.fixtures import T0
from tests.unit.schema_strategies import crd_schema, values

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    # The CRD-driven strategies filter (CEL rules, cross-field checks): on an unlucky
    # run more inputs are filtered than generated, which is not a failure of the property.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
USERS = ["alice@lab.example", "bob@lab.example"]
UUIDS = [f"GPU-{i:08x}-0000-4000-8000-000000000000" for i in range(3)]
SLOTS = [SlotDevices(u, u, frozenset({(195, i)})) for i, u in enumerate(UUIDS)]
SPEC_OVERRIDES = {
    ".spec.hostAccess[].user": st.sampled_from(USERS),
    ".spec.hostAccess[].deviceUUIDs[]": st.sampled_from(UUIDS),
    ".spec.reservations[].user": st.sampled_from(USERS),
    ".spec.reservations[].deviceUUID": st.sampled_from(UUIDS),
    ".spec.revocations[].user": st.sampled_from(USERS),
    ".spec.revocations[].deviceUUIDs[]": st.sampled_from(UUIDS),
}
MOMENTS = st.integers(-3 * 24 * 60, 3 * 24 * 60).map(lambda m: T0 + timedelta(minutes=m))


def specs() -> st.SearchStrategy[dict[str, Any]]:
    return values(crd_schema("gpunodes")["properties"]["spec"], SPEC_OVERRIDES, ".spec")


def node_body(spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "n", "generation": 3, "uid": "u"}, "spec": spec}


@PROPERTY
@given(specs())
def test_every_admitted_spec_is_read_whole(spec: dict[str, Any]) -> None:
    read = read_spec(node_body(spec))
    assert read.skipped == []
    assert read.spec == GPUNodeSpec.model_validate(spec)


def test_an_unreadable_spec_entry_is_reported_and_the_rest_takes_effect() -> None:
    good = {
        "user": "alice@lab.example",
        "linuxUser": "alice",
        "source": {"kind": "GPUGrant", "name": "g", "namespace": "u-alice"},
    }
    bad = {**good, "user": "bob@lab.example", "linuxUser": "Not A Login!"}
    read = read_spec(node_body({"enforcement": "Enforce", "hostAccess": [bad, good]}))
    assert read.spec.enforcement == "Enforce"
    assert [h.user for h in read.spec.host_access or ()] == ["alice@lab.example"]
    assert len(read.skipped) == 1 and read.skipped[0].startswith("spec.hostAccess[0]: linuxUser")


def test_a_spec_whose_mode_cannot_be_read_reports_only() -> None:
    read = read_spec(node_body({"enforcement": "Sometimes"}))
    assert read.spec.enforcement == "Audit"
    assert read.skipped and "enforcement" in read.skipped[0]


_PLACES = st.builds(
    Place,
    path=st.sampled_from(["/a", "/b", "/c"]),
    kind=st.sampled_from(["container", "pod", "session", "other"]),
    owner=st.sampled_from([*USERS, None]),
    allocated=st.frozensets(st.sampled_from(UUIDS)),
    uid=st.one_of(st.none(), st.integers(0, 70000)),
)


@PROPERTY
@given(specs(), st.lists(_PLACES, max_size=4), st.data(), MOMENTS)
def test_enforcement_decides_for_any_admitted_spec(
    spec: dict[str, Any], places: list[Place], data: st.DataObject, now: datetime
) -> None:
    holders = [
        Holder(pid, 1, number, place, place.owner)
        for place in places
        for pid, number in data.draw(
            st.lists(st.tuples(st.integers(1, 9999), st.sampled_from([(195, 0), (195, 1), (1, 3)])))
        )
    ]
    for mode in ("Enforce", "Audit", "Off"):
        decided = decide(
            spec=read_spec(node_body(spec)).spec,
            mode=mode,  # type: ignore[arg-type]
            slots=SLOTS,
            places=places,
            holders=holders,
            first_seen={},
            grace=timedelta(minutes=5),
            now=now,
        )
        assert set(decided.deny) | set(decided.would_deny) <= {p.path for p in places}


# -- what NVML reports --------------------------------------------------------------

_ANY_INT = st.one_of(st.integers(-5, 200), st.integers(-(2**40), 2**40))
_ANY_UUID = st.one_of(st.sampled_from(UUIDS), st.text(max_size=12))
_SLICES = st.builds(
    MigSlice,
    uuid=st.one_of(st.just("MIG-00000000-0000-4000-8000-000000000001"), st.text(max_size=8)),
    profile=st.sampled_from(["1g.10gb", "3g.40gb", "9g.1gb", ""]),
    slices=_ANY_INT,
    placement_start=_ANY_INT,
    gpu_instance_id=_ANY_INT,
    compute_instance_id=_ANY_INT,
    capabilities=st.lists(
        st.builds(DeviceNode, st.just("/dev/x"), _ANY_INT, _ANY_INT), max_size=1
    ).map(tuple),
    healthy=st.booleans(),
)
_GPUS = st.builds(
    Gpu,
    index=st.one_of(st.integers(0, 7), _ANY_INT),
    uuid=_ANY_UUID,
    name=st.text(max_size=300),
    memory_mib=_ANY_INT,
    device=st.builds(DeviceNode, st.just("/dev/nvidia0"), st.just(195), st.integers(0, 7)),
    pci_bus_id=st.one_of(st.none(), st.text(max_size=40)),
    mig_enabled=st.booleans(),
    mig_total_slices=st.one_of(st.none(), _ANY_INT),
    mig=st.lists(_SLICES, max_size=9).map(tuple),
    nvlink_peers=st.frozensets(_ANY_INT, max_size=4),
    healthy=st.booleans(),
    health_reason=st.one_of(st.none(), st.text(max_size=300)),
)


@PROPERTY
@given(st.lists(_GPUS, max_size=4), st.data())
def test_any_nvml_report_is_written_and_gpus_with_bad_readings_are_still_reported(
    gpus: list[Gpu], data: st.DataObject
) -> None:
    inventory = Inventory(tuple(gpus), driver_version="570.00")
    uuids = [g.uuid for g in gpus]
    sample = Sample(
        utilization=data.draw(
            st.dictionaries(st.sampled_from(uuids or ["x"]), st.one_of(st.none(), _ANY_INT))
        ),
        memory_used_mib=data.draw(st.dictionaries(st.sampled_from(uuids or ["x"]), _ANY_INT)),
        processes=(),
        lost=frozenset(data.draw(st.lists(st.sampled_from(uuids or ["x"])))),
    )
    reported = status(
        inventory=inventory,
        sample=sample,
        workloads=[],
        violations=[],
        mode="Enforce",
        applied_generation=1,
        previous=None,
        health=Health(),
        cgroup_version="v1",
        now=T0,
    )
    named = [g for g in gpus if g.uuid in UUIDS and 0 <= g.index <= 63 and g.memory_mib >= 0]
    assert {d.uuid for d in devices(inventory, sample)} >= {g.uuid for g in named}
    for device in reported.devices or ():
        assert device.utilization_percent is None or 0 <= device.utilization_percent <= 100
        assert device.memory_used_mib is None or device.memory_used_mib >= 0
    if len(reported.devices or ()) < len(gpus):
        current = next(c for c in reported.conditions or () if c.type == "InventoryCurrent")
        assert (current.status, current.reason) == ("False", "NVMLUnreadable")


_USES = st.builds(
    ProcessUse,
    pid=_ANY_INT,
    start_ticks=_ANY_INT,
    device_uuid=_ANY_UUID,
    used_memory_mib=st.one_of(st.none(), _ANY_INT),
    uid=st.integers(0, 70000),
    comm=st.text(max_size=20),
    container_id=st.one_of(st.none(), st.text(max_size=12)),
    pod_uid=st.one_of(st.none(), st.text(max_size=12)),
)


@PROPERTY
@given(specs(), st.lists(_USES, max_size=5), MOMENTS)
def test_attribution_holds_for_any_process_nvml_reports(
    spec: dict[str, Any], uses: list[ProcessUse], now: datetime
) -> None:
    view = NodeView(
        spec=read_spec(node_body(spec)).spec,
        parents={u: u for u in UUIDS},
        logins={1000: "alice"},
        accounts_by_login={"alice": "alice@lab.example"},
        accounts_by_namespace={},
    )
    first = attribute(uses, view, Memory(), now)
    again = attribute(uses, view, first.memory, now + timedelta(seconds=5))
    for report in again.workloads:
        assert all(p.pid >= 1 for p in report.processes or ())
