"""`kubectl ds01 request` judges with the limits read back from the published policy.

`test_cli_decisions.py` proves the local verdict is the operator's word for
word; here the read-back itself: every effective policy the samples give,
published and read back, is the same policy with the same sources, so the
local check never judges against a limit the operator does not apply.
"""

from __future__ import annotations

import pytest

from controller.policy.effective import effective_limits, leaves
from controller.policy.publication import document
from controller.policy.requestcheck import limits_from
from tests.unit.test_effective import samples
from tests.unit.test_publication import NOW, facts


@pytest.mark.parametrize(
    "groups", [("student",), ("researcher",), ("faculty",), ("admin",), ()], ids=str
)
def test_published_limits_read_back_as_exactly_the_effective_limits(
    groups: tuple[str, ...],
) -> None:
    effective = effective_limits("248835@lab.example", groups, samples())
    doc = document(facts(limits=effective), (), [], NOW)
    read = limits_from(doc)
    assert read.spec.model_dump(exclude={"subjects"}) == effective.spec.model_dump(
        exclude={"subjects"}
    )
    assert read.applied == effective.applied
    for path, _ in leaves(effective.spec):
        assert read.source_of(path) == effective.source_of(path), path
