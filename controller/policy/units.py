"""The units policy is counted in: GPU-equivalents, durations, explicit Unlimited.

GPU-equivalents are exact fractions: a 2g.20gb slice of an A100 is 2/7 of a
GPU, and seven of them must add up to exactly 2 whole GPUs, which floats
would not guarantee. "Unlimited" becomes ``None`` inside policy code only; on
the wire it is always the explicit string.
"""

from __future__ import annotations

import re
from datetime import timedelta
from fractions import Fraction

UNLIMITED = "Unlimited"
A100_SLICES = 7
"""Compute slices of a whole A100 or H100 (an A30 has 4)."""

_MIG_PROFILE = re.compile(r"^(?P<slices>[1-7])g\.(?P<memory>[1-9][0-9]{0,2})gb(\+[a-z.-]+)?$")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def mig_slices(profile: str) -> int:
    """Compute slices a MIG profile spans: ``2g.20gb`` -> 2."""
    match = _MIG_PROFILE.match(profile)
    if not match:
        raise ValueError(f"migProfile: {profile!r} is not a MIG profile such as 2g.20gb")
    return int(match["slices"])


def gpu_equivalents(mig_profile: str | None, total_slices: int = A100_SLICES) -> Fraction:
    """GPU-equivalents of one device: 1 for a whole GPU, slices/total for a MIG slice."""
    if mig_profile is None:
        return Fraction(1)
    if total_slices < 1:
        raise ValueError(f"total slices must be positive, got {total_slices}")
    slices = mig_slices(mig_profile)
    if slices > total_slices:
        raise ValueError(
            f"migProfile: {mig_profile!r} spans more than the GPU's {total_slices} slices"
        )
    return Fraction(slices, total_slices)


def reported_equivalents(mig_profile: str, total_slices: int | None) -> Fraction:
    """GPU-equivalents of a MIG instance as an agent reports it: its slices over its GPU's.

    At most the whole GPU: a report of a slice spanning more than its GPU has (an
    agent or driver fault) counts as the whole GPU instead of failing the node, since
    the device exists either way. No total reported means an A100's seven.
    """
    total = total_slices or A100_SLICES
    return min(Fraction(1), Fraction(mig_slices(mig_profile), total))


def parse_gpu_equivalents(value: int | str) -> Fraction | None:
    """A GPU-equivalent limit as written (``2``, ``"0.5"``, ``"Unlimited"``); None is unlimited."""
    if value == UNLIMITED:
        return None
    amount = Fraction(str(value))
    if amount < 0:
        raise ValueError(f"GPU-equivalents must not be negative, got {value!r}")
    return amount


def format_gpu_equivalents(amount: Fraction | None) -> str:
    """The wire form: a decimal with at most three places, or ``Unlimited``."""
    if amount is None:
        return UNLIMITED
    text = f"{float(amount):.3f}".rstrip("0").rstrip(".")
    return text or "0"


def parse_count(value: int | str) -> int | None:
    """A count limit as written (``3``, ``"3"``, ``"Unlimited"``); None is unlimited."""
    if value == UNLIMITED:
        return None
    count = int(value)
    if count < 0:
        raise ValueError(f"count must not be negative, got {value!r}")
    return count


def parse_duration(value: str) -> timedelta:
    """A Go-notation duration (``30m``, ``1h30m``, ``1.5h``, ``250ms``) as a timedelta."""
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(number + unit for number, unit in parts) != value:
        raise ValueError(f"{value!r} is not a duration such as 30m, 24h or 1h30m")
    return timedelta(seconds=sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts))


def parse_duration_limit(value: str) -> timedelta | None:
    """A duration limit as written; None for ``Unlimited``."""
    return None if value == UNLIMITED else parse_duration(value)


def format_duration(delta: timedelta) -> str:
    """The shortest Go-notation form of a whole number of seconds: ``1h30m``, ``45s``, ``0s``."""
    total = int(delta.total_seconds())
    if total != delta.total_seconds() or total < 0:
        raise ValueError(f"only whole, non-negative seconds can be formatted, got {delta}")
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    text += f"{seconds}s" if seconds or not text else ""
    return text
