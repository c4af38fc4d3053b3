"""`kubectl ds01` output: tables fit the terminal, colour stays out of widths, audit filters."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.cli.ds01 import auditview
from controller.cli.ds01.completion import bash_script, words
from controller.cli.ds01.table import ELLIPSIS, Cell, layout
from controller.cli.main import build_parser

ANSI = re.compile(r"\x1b\[[0-9;]*m")
text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=1, max_value=8).flatmap(
        lambda n: st.tuples(
            st.lists(text, min_size=n, max_size=n),
            st.lists(st.lists(text, min_size=n, max_size=n), max_size=6),
        )
    ),
    st.integers(min_value=1, max_value=200),
    st.booleans(),
)
def test_a_table_never_exceeds_the_terminal_width(table, width, colour) -> None:
    headers, rows = table
    styled = [[Cell(c, "red") for c in row] for row in rows]
    for line in layout(headers, styled, width, colour=colour):
        assert len(ANSI.sub("", line)) <= width


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=1, max_value=6).flatmap(
        lambda n: st.tuples(
            st.lists(text, min_size=n, max_size=n),
            st.lists(st.lists(text, min_size=n, max_size=n), min_size=1, max_size=6),
        )
    )
)
def test_without_a_width_nothing_is_cut_and_columns_align(table) -> None:
    headers, rows = table
    lines = layout(headers, rows, None)
    assert len(lines) == len(rows) + 1
    for line, row in zip(lines[1:], rows, strict=True):
        assert ELLIPSIS not in line or any(ELLIPSIS in c for c in row)
        for cell in row:
            assert cell.rstrip() in line


def test_the_widest_column_gives_way_first_and_cut_cells_say_so() -> None:
    lines = layout(["NAME", "WHY"], [["a", "x" * 50]], width=30)
    assert lines[1] == "a     " + "x" * 23 + ELLIPSIS
    assert max(len(line) for line in lines) <= 30


def test_colour_codes_appear_only_when_colour_is_on() -> None:
    plain = layout(["STATE"], [[Cell("Denied", "red")]], 80, colour=False)
    coloured = layout(["STATE"], [[Cell("Denied", "red")]], 80, colour=True)
    assert "\x1b[" not in "".join(plain)
    assert "\x1b[31mDenied\x1b[0m" in coloured[1]


def test_no_headers_leaves_the_header_line_out() -> None:
    assert layout(["A", "B"], [["1", "2"]], headers_shown=False) == ["1  2"]


RECORDS = [
    {
        "timestamp": "2026-03-01T10:00:00.000000Z",
        "event_type": "grant.approved",
        "user": "kim",
        "source": "ds01-operator",
        "details": {"grant": "u-kim/a", "auto": True},
    },
    {
        "timestamp": "2026-03-05T10:00:00.000000Z",
        "event_type": "quota.budget_exhausted",
        "user": "lee",
        "source": "ds01-operator",
        "details": {"namespace": "u-lee"},
    },
    {
        "timestamp": "2026-03-06T10:00:00.000000Z",
        "event_type": "grant.revoked",
        "user": "kim",
        "source": "ds01-operator",
        "details": {"grant": "u-kim/b", "reason": "Revoked"},
    },
]


def test_audit_filters_by_time_user_and_type_category_or_glob() -> None:
    from datetime import UTC, datetime

    since = datetime(2026, 3, 2, tzinfo=UTC)
    assert [r[1] for r in auditview.rows(RECORDS, since=since)] == [
        "quota.budget_exhausted",
        "grant.revoked",
    ]
    assert [r[1] for r in auditview.rows(RECORDS, user="kim")] == [
        "grant.approved",
        "grant.revoked",
    ]
    assert [r[1] for r in auditview.rows(RECORDS, types="grant")] == [
        "grant.approved",
        "grant.revoked",
    ]
    assert [r[1] for r in auditview.rows(RECORDS, types="quota.budget_*")] == [
        "quota.budget_exhausted"
    ]
    assert auditview.rows(RECORDS, types="grant.approved")[0][4] == "grant=u-kim/a auto=True"


def test_completion_offers_every_command_and_its_flags() -> None:
    parser = build_parser()
    known = words(parser)
    for command in [
        "status",
        "request",
        "why",
        "who",
        "usage",
        "approve",
        "deny",
        "extend",
        "revoke",
        "pending",
        "onboard",
        "import",
        "audit",
        "completion",
    ]:
        assert command in known[""]
    assert "--mig" in known["request"]
    assert "--apply" in known["import ds01"]
    script = bash_script(parser, ("ds01", "kubectl-ds01"))
    assert "complete -F _ds01_complete ds01 kubectl-ds01" in script
    assert "'import ds01')" in script
