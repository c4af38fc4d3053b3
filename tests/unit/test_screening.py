"""Screening and isolation: one object that cannot be judged is set aside alone, and says why.

`test_plan_isolation.py` proves it through whole plans; here the two modules
directly: which objects pass, how a failure is worded (input error or code
fault), what a failed object keeps, and that its Event is posted once.
"""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.api.base import Condition
from controller.api.grant import GPUGrantStatus
from controller.api.kinds import GPURateLimit
from controller.policy import screening
from controller.policy.conditions import find
from controller.policy.grants import GrantSettings
from controller.policy.isolation import (
    MAX_MESSAGE,
    Failure,
    failed_conditions,
    failure,
    failure_events,
)
from controller.policy.records import ObjectRef
from tests.unit.fixtures import T0, a100_node, grant, later
from tests.unit.test_effective import limit
from tests.unit.test_nodes_and_exemptions import exemption
from tests.unit.test_plan_isolation import _poisoned

ABOUT = ObjectRef("GPUGrant", "g", "u-alice", "uid-1")


def student_limit() -> GPURateLimit:
    named = limit("student", [("Group", "student")], 1)
    spec = named.spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    return GPURateLimit.model_validate({"metadata": {"name": named.name}, "spec": spec})


# -- partition ---------------------------------------------------------------------------------


@settings(deadline=None)
@given(st.lists(st.booleans(), max_size=8))
def test_every_object_either_passes_or_is_set_aside_in_its_order(fails: list[bool]) -> None:
    def check(index: int) -> None:
        if fails[index]:
            raise ValueError(f"object {index} is broken")

    screened = screening.partition(
        list(range(len(fails))), lambda i: ObjectRef("X", str(i)), check, "testing it"
    )
    assert screened.passed == [i for i, bad in enumerate(fails) if not bad]
    assert [i for i, _ in screened.failed] == [i for i, bad in enumerate(fails) if bad]
    for index, failed in screened.failed:
        assert failed.about.name == str(index) and f"object {index} is broken" in failed.message


def test_a_grant_whose_gpus_cannot_be_counted_is_set_aside_alone() -> None:
    good, bad = grant("good"), _poisoned(grant("bad"))
    screened = screening.grants([bad, good], T0, GrantSettings())
    assert screened.passed == [good]
    ((which, why),) = screened.failed
    assert which is bad and why.key == "GPUGrant/u-alice/bad" and why.reason == "Invalid"
    assert "reading its window and GPUs" in why.message


def test_each_kind_is_screened_with_its_own_check() -> None:
    assert screening.limits([student_limit()]).passed == [student_limit()]
    assert screening.exemptions([exemption()], T0).failed == []
    assert screening.nodes([a100_node()], T0, "Enforce").failed == []
    broken_node = a100_node(mig={0: ["1g.10gb"]})
    assert broken_node.status and broken_node.status.devices
    device = broken_node.status.devices[0]
    odd = [m.model_copy(update={"profile": "9g.90gb"}) for m in device.mig_instances or ()]
    broken_node = broken_node.model_copy(
        update={
            "status": broken_node.status.model_copy(
                update={"devices": [device.model_copy(update={"mig_instances": odd})]}
            )
        }
    )
    ((_, why),) = screening.nodes([broken_node], T0, "Enforce").failed
    assert why.key == "GPUNode/gpu-node-1" and "9g.90gb" in why.message


# -- wording a failure ------------------------------------------------------------------------------


def test_bad_input_is_invalid_and_anything_else_is_a_fault_to_report() -> None:
    invalid = failure(ABOUT, OverflowError("date value out of range"), "reading its window")
    assert invalid.reason == "Invalid" and "please report" not in invalid.message
    assert invalid.message == (
        "cannot be decided (reading its window): OverflowError: date value out of range"
    )
    fault = failure(ABOUT, KeyError("x"), "deciding it")
    assert fault.reason == "Error" and fault.message.endswith("please report it")


def test_a_failure_message_is_one_line_never_empty_and_bounded() -> None:
    assert failure(ABOUT, ValueError("a\n  b\tc"), "x").message.endswith("ValueError: a b c")
    assert failure(ABOUT, ValueError(), "x").message.endswith("ValueError: no message")
    assert len(failure(ABOUT, ValueError("y" * 5000), "x").message) == MAX_MESSAGE


def test_a_failure_is_keyed_by_kind_namespace_and_name() -> None:
    assert Failure(ABOUT, "Invalid", "m").key == "GPUGrant/u-alice/g"
    assert Failure(ObjectRef("GPUNode", "n1"), "Invalid", "m").key == "GPUNode/n1"


# -- what a failed object keeps ------------------------------------------------------------------------


def condition(type_: str, reason: str, message: str, status: str = "True") -> Condition:
    return Condition.model_validate(
        {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": T0.isoformat(),
        }
    )


def test_a_failure_replaces_ready_and_keeps_every_other_condition() -> None:
    old = [condition("Ready", "Active", "fine"), condition("Approved", "AutoApproved", "ok")]
    failed = failure(ABOUT, ValueError("broken"), "x")
    kept = failed_conditions(old, failed, later(5), 3)
    assert find(kept, "Approved") == old[1]
    ready = find(kept, "Ready")
    assert ready is not None and (ready.status, ready.reason) == ("False", "Invalid")
    assert ready.last_transition_time == later(5) and ready.observed_generation == 3


def test_the_event_is_posted_when_a_failure_appears_or_changes_not_again() -> None:
    failed = failure(ABOUT, ValueError("broken"), "x")
    (event,) = failure_events(None, failed)
    assert (event.type, event.reason, event.about) == ("Warning", "Invalid", ABOUT)
    stored = [condition("Ready", failed.reason, failed.message, "False")]
    assert failure_events(stored, failed) == ()
    changed = failure(ABOUT, ValueError("broken differently"), "x")
    assert len(failure_events(stored, changed)) == 1


def test_a_failed_grant_keeps_its_state_and_a_new_one_is_invalid() -> None:
    failed = failure(ABOUT, ValueError("broken"), "x")
    fresh, events = screening.failed_grant(grant("g"), failed, T0)
    assert fresh.state == "Invalid" and len(events) == 1
    active = grant("g").model_copy(update={"status": GPUGrantStatus(state="Active")})
    kept, _ = screening.failed_grant(active, failed, T0 + timedelta(minutes=1))
    assert kept.state == "Active"
    ready = find(kept.conditions, "Ready")
    assert ready is not None and ready.reason == "Invalid"


def test_a_failed_exemption_or_limit_gets_ready_false_and_one_event() -> None:
    failed = failure(ABOUT, ValueError("broken"), "x")
    status, events = screening.failed_exemption(exemption(), failed, T0)
    assert find(status.conditions, "Ready") is not None and len(events) == 1
    status, events = screening.failed_limit(student_limit(), failed, T0)
    ready = find(status.conditions, "Ready")
    assert ready is not None and ready.status == "False" and len(events) == 1
