"""Kubernetes resource quantities as exact numbers.

Quotas and LimitRanges are compared with what the apiserver stored, and the
apiserver rewrites quantities into its canonical form (``0.5`` comes back as
``500m``). Comparing strings would then rewrite the same object on every pass;
comparing the numbers does not. Fractions keep ``100m`` and ``0.1`` equal.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from fractions import Fraction

_QUANTITY = re.compile(
    r"^(?P<sign>[+-]?)(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE](?P<exponent>[+-]?[0-9]{1,2}))?$"
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_GI = 1024**3


def parse_quantity(value: int | str) -> Fraction:
    """A quantity (``2``, ``"500m"``, ``"32Gi"``, ``"1e3"``) as an exact number.

    Exponents have at most two digits (as the CRDs require): exact arithmetic on
    ``1e999999999`` would not finish.
    """
    if isinstance(value, int):
        return Fraction(value)
    match = _QUANTITY.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a Kubernetes quantity such as 8, '500m' or '32Gi'")
    amount = Fraction(match["number"])
    suffix, exponent = match["suffix"], match["exponent"]
    if suffix in _BINARY:
        amount *= Fraction(1024) ** _BINARY[suffix]
    elif suffix:
        amount *= Fraction(10) ** _DECIMAL[suffix]
    elif exponent:
        amount *= Fraction(10) ** int(exponent)
    return -amount if match["sign"] == "-" else amount


def parse_quantity_bytes(value: int | str) -> int:
    """A quantity of bytes (``1Mi``, ``32Gi``, ``500M``, ``1024``) as a whole number."""
    amount = parse_quantity(value)
    if amount < 0 or amount.denominator != 1:
        raise ValueError(f"{value!r} is not a quantity of bytes such as 1Mi or 32Gi")
    return amount.numerator


def format_quantity(amount: Fraction, memory: bool = False) -> str:
    """A canonical-looking quantity: whole units, milli-units, or (memory) Gi/Mi/bytes."""
    if memory:
        for suffix, power in (("Gi", 3), ("Mi", 2), ("Ki", 1)):
            scaled = amount / Fraction(1024) ** power
            if scaled.denominator == 1 and scaled != 0:
                return f"{scaled.numerator}{suffix}"
        return str(amount.numerator // amount.denominator)
    if amount.denominator == 1:
        return str(amount.numerator)
    milli = amount * 1000
    return f"{milli.numerator // milli.denominator}m"


def same_quantities(stored: Mapping[str, object], desired: Mapping[str, object]) -> bool:
    """Whether two resource maps hold the same keys with numerically equal values."""
    if stored.keys() != desired.keys():
        return False
    try:
        return all(
            parse_quantity(_text(stored[k])) == parse_quantity(_text(desired[k])) for k in desired
        )
    except ValueError:
        return False


def gibibytes(amount: Fraction) -> str:
    """Bytes as GiB with up to two decimals, for messages people read."""
    return f"{float(amount / _GI):.2f}".rstrip("0").rstrip(".") + "Gi"


def _text(value: object) -> int | str:
    return value if isinstance(value, int) else str(value)
