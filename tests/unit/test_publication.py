"""The published per-account policy: what it says, and that reading it back gives the same facts.

`test_accounts.py` drives whole passes; here the wording module alone, from
hand-built facts: each condition's state and reason, the admission
parameters the ValidatingAdmissionPolicy reads, and the round trip through
the ConfigMap that is the operator's only memory of budgets, starts and alerts.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.api import accountpolicy as ap
from controller.api.grant import GPUGrantStatus
from controller.api.names import GPU_RESOURCE
from controller.policy import publication
from controller.policy.alerts import Sent
from controller.policy.budget import Bucket, Ledger
from controller.policy.pods import Pod
from controller.policy.quota import mig_resource
from controller.policy.rates import Start, StartVerdict
from tests.unit.fixtures import grant, later
from tests.unit.test_accounts import ALICE, EQ, MIG2, gpu_pod, limits
from tests.unit.test_nodes_and_exemptions import exemption

NOW = later(60)


def facts(**changes: Any) -> publication.Facts:
    """An account within every limit: 1 of 2 GPU-equivalents in use, no budget spent."""
    base = publication.Facts(
        account=ALICE,
        limits=limits(),
        base=Fraction(2),
        granted=Fraction(0),
        allowance=Fraction(2),
        in_use=Fraction(1),
        used={GPU_RESOURCE: 1},
        equivalents=EQ,
        allowed=frozenset({GPU_RESOURCE, MIG2}),
        workloads=1,
        cpu_used=Fraction(4),
        memory_used=Fraction(16 * 1024**3),
        reported=Fraction(1),
        hard={"requests.gpu.ds01.io/gpu": "2", "pods": "3"},
        budget_limit=1.0,
        budget_window=timedelta(hours=24),
        budget_spent=0.25,
        over_budget=False,
        ledger=Ledger(),
        budget_exempt=False,
        exhausted=False,
        starts=(),
        starts_limit=10,
        starts_window=timedelta(hours=1),
        started=StartVerdict(count=1, limited=False),
        rate_exempt=False,
        limited=False,
        max_workloads=3,
        grants=(),
        exemptions=(),
    )
    return dataclasses.replace(base, **changes)


def wanted(f: publication.Facts, excess: Fraction = Fraction(0), live: Any = ()) -> dict[str, Any]:
    return {w.type: w for w in publication.conditions(f, excess, list(live))}


def status(state: str) -> GPUGrantStatus:
    return GPUGrantStatus(state=state)  # type: ignore[arg-type]


# -- reading back ---------------------------------------------------------------------


def test_nothing_or_another_format_or_a_broken_document_reads_back_as_nothing() -> None:
    assert publication.parse(None) is None
    assert publication.parse({}) is None
    assert publication.parse({ap.KEY_FORMAT: "ds01.policy/v0", ap.KEY_DOCUMENT: "{}"}) is None
    assert publication.parse({ap.KEY_FORMAT: ap.POLICY_FORMAT, ap.KEY_DOCUMENT: "{"}) is None
    assert publication.parse({ap.KEY_FORMAT: ap.POLICY_FORMAT}) is None


def test_no_previous_document_means_an_empty_memory() -> None:
    assert publication.ledger(None) == Ledger()
    assert publication.starts(None) == ()
    assert publication.sent(None) == ()


def published(f: publication.Facts, alerts: tuple[Sent, ...] = ()) -> dict[str, str]:
    doc = publication.document(f, alerts, [], NOW)
    return publication.config_data(f, doc)


def test_the_ledger_starts_and_alerts_read_back_as_they_were_published() -> None:
    ledger = Ledger(
        (Bucket(later(0), later(30), 0.5), Bucket(later(30), later(60), 0.25)), 1.0, NOW
    )
    starts = (Start(later(10), "uid-a", "a"), Start(later(20), "uid-b", "b"))
    alerts = (Sent("gpu", 80, later(15)),)
    f = facts(ledger=ledger, starts=starts, budget_spent=0.75)
    previous = publication.parse(published(f, alerts))
    assert previous is not None
    assert publication.ledger(previous) == ledger
    assert publication.starts(previous) == starts
    assert publication.sent(previous) == alerts


# -- conditions ---------------------------------------------------------------------------


def test_every_account_gets_ready_budget_starts_and_overuse_conditions_in_that_order() -> None:
    assert [w.type for w in publication.conditions(facts(), Fraction(0), [])] == [
        "Ready",
        "BudgetExhausted",
        "WorkloadStartsLimited",
        "OverUse",
    ]


def test_ready_names_the_limits_applied_or_the_built_in_defaults() -> None:
    assert "GPURateLimit/student" in wanted(facts())["Ready"].message
    plain = dataclasses.replace(facts().limits, applied=())
    assert "the built-in defaults" in wanted(facts(limits=plain))["Ready"].message


def test_budget_condition_follows_limit_exhaustion_and_exemption() -> None:
    cases = [
        (facts(budget_limit=None), False, "Unlimited"),
        (facts(), False, "WithinBudget"),
        (facts(exhausted=True, over_budget=True, budget_spent=1.0), True, "Exhausted"),
        (facts(over_budget=True, budget_exempt=True, budget_spent=1.5), False, "Exempt"),
    ]
    for f, status_, reason in cases:
        budget = wanted(f)["BudgetExhausted"]
        assert (budget.status, budget.reason) == (status_, reason)


def test_an_exhausted_budget_says_when_it_comes_back_and_what_to_do() -> None:
    ledger = Ledger((Bucket(later(0), later(60), 1.0),), 1.0, NOW)
    f = facts(exhausted=True, over_budget=True, budget_spent=1.0, ledger=ledger)
    message = publication.budget_message(f)
    # The only bucket leaves the 24 h window a day after it ended.
    assert "until about 2026-11-26T13:00:00Z" in message
    assert "1 of 1 GPU-hours used in the last 24h" in message
    assert "GPUExemption from Budget" in message
    assert "GPURateLimit/student" in message


def test_gpu_hours_are_written_without_trailing_zeros_or_as_unlimited() -> None:
    assert publication.budget_message(facts(budget_spent=0.5)).startswith("0.5 of 1 GPU-hours")
    unlimited = publication.budget_message(facts(budget_limit=None, budget_window=None))
    assert "0.25 of Unlimited GPU-hours used over all time" in unlimited


def test_starts_condition_follows_the_limit_and_its_exemption() -> None:
    blocked = StartVerdict(count=10, limited=True, next_allowed=later(70))
    cases = [
        (facts(), False, "WithinRate"),
        (facts(started=blocked, limited=True), True, "RateLimited"),
        (facts(started=blocked, rate_exempt=True), False, "Exempt"),
    ]
    for f, status_, reason in cases:
        starts = wanted(f)["WorkloadStartsLimited"]
        assert (starts.status, starts.reason) == (status_, reason)
    assert "refused until 2026-11-25T13:10:00Z" in publication.starts_message(cases[1][0])
    assert "not enforced" in publication.starts_message(cases[2][0])


def test_one_start_is_singular_others_plural() -> None:
    one = publication.starts_message(facts(started=StartVerdict(1, False)))
    two = publication.starts_message(facts(started=StartVerdict(2, False)))
    assert one.startswith("1 workload start in") and two.startswith("2 workload starts in")
    assert "(limit Unlimited from" in publication.starts_message(facts(starts_limit=None))


def test_overuse_names_the_newest_gpu_pods_that_bring_the_account_back() -> None:
    live = [
        gpu_pod("old", 0),
        gpu_pod("cpu-only", 1, count=0),
        gpu_pod("mid", 2),
        gpu_pod("new", 3),
    ]
    over = wanted(facts(in_use=Fraction(3)), Fraction(2), live)["OverUse"]
    assert (over.status, over.reason) == (True, "AllowanceExceeded")
    assert "(the newest: new, mid)" in over.message
    assert "your allowance is 2 (GPURateLimit/student)" in over.message
    within = wanted(facts())["OverUse"]
    assert (within.status, within.reason) == (False, "WithinAllowance")
    assert within.message == "1 of 2 GPU-equivalents in use"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from([GPU_RESOURCE, MIG2, None]), min_size=1, max_size=8),
    st.integers(1, 20),
)
def test_the_pods_named_for_overuse_are_the_fewest_newest_that_cover_the_excess(
    resources: list[str | None], excess_sevenths: int
) -> None:
    live = [
        gpu_pod(f"p{i}", i, resource or GPU_RESOURCE, count=0 if resource is None else 1)
        for i, resource in enumerate(resources)
    ]
    excess = Fraction(excess_sevenths, 7)
    named = publication._overuse_pods(live, facts(), excess)
    gpu_pods = [p for p in reversed(live) if p.gpu_requests()]
    assert [p.name for p in gpu_pods[: len(named)]] == named  # newest first, GPU pods only

    def size(pods: list[Pod]) -> Fraction:
        return sum((EQ[r] * n for p in pods for r, n in p.gpu_requests().items()), Fraction(0))

    chosen = gpu_pods[: len(named)]
    if size(gpu_pods) >= excess:
        assert size(chosen) >= excess
        assert not named or size(chosen[:-1]) < excess  # none more than needed
    else:
        assert named == [p.name for p in gpu_pods]


def test_audit_details_carry_the_numbers_of_the_condition_that_changed() -> None:
    f = facts()
    assert publication.audit_details(f, "BudgetExhausted") == {
        "gpuHoursUsed": 0.25,
        "gpuHours": 1.0,
        "window": "24h",
    }
    assert publication.audit_details(f, "WorkloadStartsLimited") == {"starts": 1, "limit": 10}
    assert publication.audit_details(f, "OverUse") == {
        "gpuEquivalentsInUse": "1",
        "allowance": "2",
        "pods": {GPU_RESOURCE: 1},
    }


# -- the document and the admission parameters ---------------------------------------------


def test_the_allowance_source_adds_only_active_grants() -> None:
    grants = (
        (grant("extra"), status("Active")),
        (grant("later"), status("Scheduled")),
        (grant("asked"), status("Pending")),
    )
    assert (
        publication.allowance_source(facts(grants=grants))
        == "GPURateLimit/student + GPUGrant/extra"
    )
    assert publication.allowance_source(facts()) == "GPURateLimit/student"


def test_grants_in_force_and_pending_are_listed_apart_oldest_first() -> None:
    grants = (
        (grant("b-new", created=later(5)), status("Active")),
        (grant("a-old", created=later(1)), status("Scheduled")),
        (grant("wait", created=later(2)), status("Pending")),
        (grant("gone", created=later(0)), status("Expired")),
    )
    doc = publication.document(facts(grants=grants), (), [], NOW)
    assert [g.name for g in doc.grants] == ["a-old", "b-new"]
    assert [g.name for g in doc.pending] == ["wait"]


def test_the_grant_lists_are_capped() -> None:
    many = tuple((grant(f"g{i:03}", created=later(i)), status("Active")) for i in range(60))
    doc = publication.document(facts(grants=many), (), [], NOW)
    assert len(doc.grants) == publication.MAX_GRANTS and doc.grants[0].name == "g000"


def test_exemptions_are_listed_by_name() -> None:
    found = (
        exemption().model_copy(
            update={"metadata": exemption().metadata.model_copy(update={"name": n})}
        )
        for n in ("zz", "aa")
    )
    doc = publication.document(facts(exemptions=tuple(found)), (), [], NOW)
    assert [e.name for e in doc.exemptions] == ["aa", "zz"]


def test_remaining_allowance_is_never_negative_and_unlimited_stays_unlimited() -> None:
    over = published(facts(in_use=Fraction(3)))
    assert over[ap.KEY_GPU_REMAINING] == "0.0"
    assert publication.parse(over).allowance.remaining == "0"  # type: ignore[union-attr]
    unlimited = published(facts(allowance=None, base=None))
    assert unlimited[ap.KEY_GPU_REMAINING] == "Unlimited"
    assert unlimited[ap.KEY_GPU_ALLOWANCE] == "Unlimited"


def test_admission_parameters_block_gpu_pods_only_when_exhausted_and_pods_only_when_limited() -> (
    None
):
    plain = published(facts())
    assert plain[ap.KEY_GPU_BLOCKED] == plain[ap.KEY_PODS_BLOCKED] == ""
    exhausted = published(facts(exhausted=True, over_budget=True, budget_spent=1.0))
    assert exhausted[ap.KEY_GPU_BLOCKED].startswith("your GPU budget is used up")
    assert exhausted[ap.KEY_PODS_BLOCKED] == ""
    blocked = StartVerdict(count=10, limited=True, next_allowed=later(70))
    limited = published(facts(started=blocked, limited=True))
    assert limited[ap.KEY_PODS_BLOCKED].startswith("you started 10 workloads")
    assert limited[ap.KEY_GPU_BLOCKED] == ""


def test_admission_parameters_list_the_allowed_resources_and_their_equivalents() -> None:
    data = published(facts())
    assert data[ap.KEY_GPU_RESOURCES] == "gpu,mig-2g.20gb"
    assert data[f"{ap.KEY_EQUIVALENT_PREFIX}gpu"] == "1.0"
    assert float(data[f"{ap.KEY_EQUIVALENT_PREFIX}mig-2g.20gb"]) == float(Fraction(2, 7))
    only_mig = published(facts(allowed=frozenset({mig_resource("2g.20gb")})))
    assert only_mig[ap.KEY_GPU_RESOURCES] == "mig-2g.20gb"
    assert f"{ap.KEY_EQUIVALENT_PREFIX}gpu" not in only_mig
    nothing = published(facts(allowed=frozenset()))
    assert (
        nothing[ap.KEY_GPU_RESOURCES] == ""
        and "you may ask for: none" in nothing[ap.KEY_GPU_RESOURCES_NOTE]
    )


def test_quota_lines_report_use_per_resource_kind() -> None:
    f = facts(
        hard={
            "requests.gpu.ds01.io/gpu": "2",
            f"requests.{MIG2}": "3",
            "pods": "3",
            "limits.cpu": "96",
            "limits.memory": "96Gi",
        },
        used={GPU_RESOURCE: 1},
    )
    lines = {q.resource: q for q in publication.document(f, (), [], NOW).quota}
    assert (
        lines["requests.gpu.ds01.io/gpu"].used,
        lines["requests.gpu.ds01.io/gpu"].gpu_equivalents_each,
    ) == ("1", "1")
    assert (lines[f"requests.{MIG2}"].used, lines[f"requests.{MIG2}"].gpu_equivalents_each) == (
        "0",
        "0.286",
    )
    assert (lines["pods"].used, lines["pods"].gpu_equivalents_each) == ("1", None)
    assert lines["limits.cpu"].used == "4" and lines["limits.memory"].used == "16Gi"
