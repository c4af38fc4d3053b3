"""GPU-equivalent maths and duration parsing: plain cases and properties."""

from __future__ import annotations

from datetime import timedelta
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.policy.units import (
    format_duration,
    format_gpu_equivalents,
    gpu_equivalents,
    mig_slices,
    parse_count,
    parse_duration,
    parse_duration_limit,
    parse_gpu_equivalents,
    reported_equivalents,
)


@pytest.mark.parametrize(
    ("profile", "total", "expected"),
    [
        (None, 7, Fraction(1)),
        ("1g.10gb", 7, Fraction(1, 7)),
        ("2g.20gb", 7, Fraction(2, 7)),
        ("3g.40gb", 7, Fraction(3, 7)),
        ("7g.80gb", 7, Fraction(1)),
        ("2g.12gb", 4, Fraction(1, 2)),
        ("1g.10gb+me", 7, Fraction(1, 7)),
    ],
)
def test_gpu_equivalents(profile: str | None, total: int, expected: Fraction) -> None:
    assert gpu_equivalents(profile, total) == expected


def test_seven_one_slice_instances_make_one_gpu_exactly() -> None:
    assert sum((gpu_equivalents("1g.10gb") for _ in range(7)), Fraction(0)) == 1


def test_bad_profile_names_the_field() -> None:
    with pytest.raises(ValueError, match="migProfile"):
        mig_slices("2g20gb")
    with pytest.raises(ValueError, match="more than the GPU's 4 slices"):
        gpu_equivalents("7g.80gb", 4)


@pytest.mark.parametrize(
    ("value", "expected"), [(2, Fraction(2)), ("0.5", Fraction(1, 2)), ("Unlimited", None)]
)
def test_parse_gpu_equivalents(value: int | str, expected: Fraction | None) -> None:
    assert parse_gpu_equivalents(value) == expected


@pytest.mark.parametrize(
    ("amount", "text"),
    [(Fraction(2, 7), "0.286"), (Fraction(2), "2"), (None, "Unlimited"), (Fraction(0), "0")],
)
def test_format_gpu_equivalents(amount: Fraction | None, text: str) -> None:
    assert format_gpu_equivalents(amount) == text


def test_parse_count() -> None:
    assert parse_count("3") == 3
    assert parse_count("Unlimited") is None
    with pytest.raises(ValueError, match="negative"):
        parse_count(-1)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("24h", 86400), ("1h30m", 5400), ("1.5h", 5400), ("250ms", 0.25), ("45s", 45)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "3 days", "2d", "h", "1h 30m", "-5m"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_duration_limit_unlimited() -> None:
    assert parse_duration_limit("Unlimited") is None
    assert parse_duration_limit("15m") == timedelta(minutes=15)


@given(st.integers(min_value=0, max_value=10 * 365 * 86400))
def test_duration_round_trips(seconds: int) -> None:
    delta = timedelta(seconds=seconds)
    text = format_duration(delta)
    assert parse_duration(text) == delta
    assert len(text) <= 32  # fits the CRD's maxLength


@given(st.integers(min_value=0, max_value=7), st.integers(min_value=1, max_value=8))
def test_slices_never_exceed_one_gpu(slices: int, total: int) -> None:
    if 1 <= slices <= total:
        assert 0 < gpu_equivalents(f"{slices}g.10gb", total) <= 1


@given(st.integers(min_value=1, max_value=7), st.one_of(st.none(), st.integers(0, 8)))
def test_a_reported_slice_counts_as_at_most_its_whole_gpu(slices: int, total: int | None) -> None:
    """Agents' reports are taken as they come: a slice wider than its GPU is the whole GPU."""
    share = reported_equivalents(f"{slices}g.10gb", total)
    assert 0 < share <= 1
    assert share == min(1, Fraction(slices, total or 7))


def test_eight_slice_profiles_do_not_exist() -> None:
    with pytest.raises(ValueError, match="not a MIG profile"):
        mig_slices("8g.80gb")
