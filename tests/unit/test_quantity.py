"""Kubernetes quantities as exact numbers: every spelling the apiserver may return compares equal.

The operator compares its quotas with what the apiserver stored (in the
apiserver's canonical spelling); a wrong parse would rewrite the same object
on every pass, or worse, leave a changed limit unwritten.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.policy.quantity import (
    format_quantity,
    gibibytes,
    parse_quantity,
    parse_quantity_bytes,
    same_quantities,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2", 2),
        ("500m", Fraction(1, 2)),
        ("0.5", Fraction(1, 2)),
        (".5", Fraction(1, 2)),
        ("5.", 5),
        ("+3", 3),
        ("-3", -3),
        ("100n", Fraction(1, 10**7)),
        ("250u", Fraction(1, 4000)),
        ("1k", 1000),
        ("1M", 10**6),
        ("1G", 10**9),
        ("1T", 10**12),
        ("1P", 10**15),
        ("1E", 10**18),  # a suffix alone: exa, not an exponent
        ("1e3", 1000),
        ("1E3", 1000),
        ("5e-1", Fraction(1, 2)),
        ("1Ki", 1024),
        ("1Mi", 1024**2),
        ("32Gi", 32 * 1024**3),
        ("1.5Gi", 3 * 2**29),
        ("1Ti", 1024**4),
        ("1Pi", 1024**5),
        ("1Ei", 1024**6),
        (" 8 ", 8),
        (7, 7),
    ],
)
def test_every_quantity_spelling_reads_as_its_exact_value(text: int | str, value: Fraction) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "Gi", "1 Gi", "1gi", "1KiB", "0x10", "1e100", "1e", "--1"])
def test_what_is_not_a_quantity_is_refused_naming_the_value(text: str) -> None:
    with pytest.raises(ValueError, match="is not a Kubernetes quantity"):
        parse_quantity(text)


def test_bytes_must_be_whole_and_not_negative() -> None:
    assert parse_quantity_bytes("1Mi") == 1024**2
    assert parse_quantity_bytes("500M") == 500 * 10**6
    for text in ("500m", "-1Gi", "0.5"):
        with pytest.raises(ValueError, match="is not a quantity of bytes"):
            parse_quantity_bytes(text)


def test_amounts_are_written_as_whole_units_or_millis() -> None:
    assert format_quantity(Fraction(96)) == "96"
    assert format_quantity(Fraction(1, 2)) == "500m"
    assert format_quantity(Fraction(3, 2)) == "1500m"


def test_memory_is_written_in_the_largest_whole_binary_unit() -> None:
    assert format_quantity(Fraction(96 * 1024**3), memory=True) == "96Gi"
    assert format_quantity(Fraction(1536 * 1024**2), memory=True) == "1536Mi"
    assert format_quantity(Fraction(3 * 1024), memory=True) == "3Ki"
    assert format_quantity(Fraction(1000), memory=True) == "1000"
    assert format_quantity(Fraction(0), memory=True) == "0"


@given(st.integers(0, 10**9))
def test_a_written_milli_amount_reads_back_the_same(millis: int) -> None:
    amount = Fraction(millis, 1000)
    assert parse_quantity(format_quantity(amount)) == amount


@given(st.integers(0, 2**50))
def test_written_memory_reads_back_the_same(size: int) -> None:
    assert parse_quantity(format_quantity(Fraction(size), memory=True)) == size


def test_quantities_compare_by_value_not_by_spelling() -> None:
    assert same_quantities({"cpu": "500m", "memory": "1Gi"}, {"cpu": "0.5", "memory": 1024**3})
    assert not same_quantities({"cpu": "500m"}, {"cpu": "0.6"})
    assert not same_quantities({"cpu": "1"}, {"cpu": "1", "memory": "1Gi"})
    assert not same_quantities({"cpu": "lots"}, {"cpu": "1"})  # unreadable: rewrite it


def test_gibibytes_for_people_drop_trailing_zeros() -> None:
    assert gibibytes(Fraction(32 * 1024**3)) == "32Gi"
    assert gibibytes(Fraction(3 * 2**29)) == "1.5Gi"
    assert gibibytes(Fraction(1024**3, 3)) == "0.33Gi"
