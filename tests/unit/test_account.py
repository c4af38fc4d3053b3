"""Accounts are read from namespace labels and annotations, with errors that name them."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.api.account import (
    ANNOTATION_GROUPS,
    ANNOTATION_LINUX_USER,
    ANNOTATION_USER,
    LABEL_USER,
    AccountError,
    label_value,
    parse_account,
)

LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def test_label_value_replaces_what_labels_cannot_hold() -> None:
    assert label_value("248835@lab.example") == "248835-lab.example"
    assert label_value("alice") == "alice"


@given(st.text(min_size=1, max_size=300))
def test_label_value_is_always_a_valid_label_value(user: str) -> None:
    value = label_value(user)
    assert len(value) <= 63
    assert LABEL_VALUE.match(value)


def test_parse_account_reads_groups_and_linux_user() -> None:
    account = parse_account(
        "u-248835",
        {LABEL_USER: "248835-lab.example"},
        {
            ANNOTATION_USER: "248835@lab.example",
            ANNOTATION_GROUPS: "student, approver,student",
            ANNOTATION_LINUX_USER: "u248835",
        },
    )
    assert account is not None
    assert account.user == "248835@lab.example"
    assert account.groups == ("student", "approver")
    assert account.linux_user == "u248835"


def test_unlabelled_namespace_is_not_an_account() -> None:
    assert parse_account("kube-system", {}, {ANNOTATION_USER: "x"}) is None


def test_user_annotation_must_match_label() -> None:
    with pytest.raises(AccountError, match=ANNOTATION_USER):
        parse_account("u-x", {LABEL_USER: "alice"}, {ANNOTATION_USER: "mallory@lab.example"})


def test_bad_linux_user_names_the_annotation() -> None:
    with pytest.raises(AccountError, match=ANNOTATION_LINUX_USER):
        parse_account("u-a", {LABEL_USER: "alice"}, {ANNOTATION_LINUX_USER: "Not A Login"})


def test_bad_group_names_the_annotation() -> None:
    with pytest.raises(AccountError, match=ANNOTATION_GROUPS):
        parse_account("u-a", {LABEL_USER: "alice"}, {ANNOTATION_GROUPS: "student,bad group"})
