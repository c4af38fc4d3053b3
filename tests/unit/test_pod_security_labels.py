"""Pod Security Admission labels on account namespaces: which level, and when to rewrite.

The operator keeps `pod-security.kubernetes.io/*` on every namespace labelled
`gpu.ds01.io/user`; a user cannot change them (admission), and whatever an admin
changes by hand is put back unless they chose the level with the account's
`gpu.ds01.io/pod-security` annotation.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from controller.policy.accounts import (
    POD_SECURITY_LEVELS,
    AccountSettings,
    pod_security_labels,
    pod_security_patch,
)
from controller.policy.plan import Namespace, plan
from tests.unit.fixtures import later
from tests.unit.test_plan import ACCOUNTS, world
from tests.unit.test_plan_accounts import BROKEN, LEAVING

SETTINGS = AccountSettings()
PSA = "pod-security.kubernetes.io/"


def test_accounts_enforce_baseline_and_warn_at_restricted_by_default() -> None:
    assert pod_security_labels({}, SETTINGS) == {
        f"{PSA}enforce": "baseline",
        f"{PSA}enforce-version": "latest",
        f"{PSA}warn": "restricted",
        f"{PSA}warn-version": "latest",
        f"{PSA}audit": "restricted",
        f"{PSA}audit-version": "latest",
    }


@given(st.sampled_from(POD_SECURITY_LEVELS))
def test_an_admins_annotation_chooses_the_enforced_level_of_one_account(level: str) -> None:
    labels = pod_security_labels({"gpu.ds01.io/pod-security": level}, SETTINGS)
    assert labels[f"{PSA}enforce"] == level
    assert labels[f"{PSA}warn"] == "restricted"


@given(st.text(max_size=12).filter(lambda t: t.strip() not in POD_SECURITY_LEVELS))
def test_an_annotation_that_is_not_a_level_never_weakens_the_account(value: str) -> None:
    labels = pod_security_labels({"gpu.ds01.io/pod-security": value}, SETTINGS)
    assert labels[f"{PSA}enforce"] == SETTINGS.pod_security_enforce


@given(
    st.dictionaries(
        st.sampled_from(
            [f"{PSA}{m}{v}" for m in ("enforce", "warn", "audit") for v in ("", "-version")]
        ),
        st.sampled_from(["privileged", "baseline", "restricted", "latest", "v1.22", ""]),
    ),
    st.dictionaries(st.sampled_from(["team", "kubernetes.io/metadata.name"]), st.text(max_size=5)),
)
def test_the_patch_rewrites_exactly_the_labels_that_differ(
    psa: dict[str, str], others: dict[str, str]
) -> None:
    current = {**others, **psa}
    patch = pod_security_patch(current, {}, SETTINGS)
    wanted = pod_security_labels({}, SETTINGS)
    assert {**current, **patch} == {**others, **wanted}
    assert all(current.get(k) != v for k, v in patch.items())
    assert not pod_security_patch({**current, **patch}, {}, SETTINGS)


def test_every_labelled_namespace_is_labelled_but_terminating_and_unlabelled_ones_are_not() -> None:
    plain = Namespace("default", {}, {})
    relaxed = Namespace(
        "u-data",
        {"gpu.ds01.io/user": "erin-lab.example", f"{PSA}enforce": "baseline"},
        {"gpu.ds01.io/user-name": "erin@lab.example", "gpu.ds01.io/pod-security": "privileged"},
    )
    snapshot = replace(world([]), namespaces=[*ACCOUNTS, BROKEN, LEAVING, plain, relaxed])
    decided = plan(snapshot, later(1))
    # Broken annotations do not exempt a namespace: ds01-pod-security judges its pods too.
    assert sorted(decided.pod_security) == ["u-alice", "u-bob", "u-broken", "u-data"]
    assert decided.pod_security["u-data"][f"{PSA}enforce"] == "privileged"
    assert decided.pod_security["u-alice"][f"{PSA}enforce"] == "baseline"


def test_a_namespace_that_already_carries_its_labels_is_not_written() -> None:
    done = [
        Namespace(
            ns.name, {**ns.labels, **pod_security_labels(ns.annotations, SETTINGS)}, ns.annotations
        )
        for ns in ACCOUNTS
    ]
    decided = plan(replace(world([]), namespaces=done), later(1))
    assert decided.pod_security == {}
