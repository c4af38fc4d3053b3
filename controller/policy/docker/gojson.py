"""JSON bodies read as Go's encoding/json reads them into dockerd's structs, canonically.

dockerd decodes request bodies with `encoding/json` into Go structs, which
differs from a plain JSON reading in ways an attacker can use: object keys
match struct fields case-insensitively (`privileged` is `Privileged`, and
U+017F and U+212A fold to `s` and `k`), a repeated key is decoded again into
the same field (a second `hostConfig` merges into the first), keys that match
no field are silently ignored, and `null` leaves a field unset.

`decode` reads a body against a `Shape` and returns the canonical value the
gateway vets and forwards: exact Go field names, each key once. Whatever
could be read two ways is refused instead: a key given twice (in any
spelling), an unknown key in a struct marked `strict`, a value of the wrong
JSON type, a number that is not an integer where Go wants one, or one out of
the Go type's range. Unknown keys of non-strict structs are dropped: the
engine never sees what the gateway did not judge.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

ScalarKind = Literal["str", "bool", "int", "uint", "float", "empty"]

_RANGES = {
    "int": (-(1 << 63), (1 << 63) - 1),
    "uint": (0, (1 << 64) - 1),
}


class BodyError(ValueError):
    """A body the gateway refuses to read: the message names the field and the reason."""


@dataclass(frozen=True)
class Scalar:
    kind: ScalarKind
    bits: int = 64
    """For int/uint: the Go type's width (uint16 for BlkioWeight, ...)."""


@dataclass(frozen=True)
class ListOf:
    item: Shape
    length: int | None = None
    """A Go array `[N]T`: at most N items are read (Go drops the rest)."""


@dataclass(frozen=True)
class MapOf:
    value: Shape


@dataclass(frozen=True)
class StrSlice:
    """Docker's `strslice.StrSlice`: a string or a list of strings."""


@dataclass(frozen=True)
class Struct:
    name: str
    fields: Mapping[str, Shape] = field(default_factory=dict)
    strict: bool = True
    """Refuse keys that match no field (security-relevant structs); else drop them."""

    def lookup(self, key: str) -> str | None:
        """The Go field a JSON key decodes into: exact match first, then Go's case folding."""
        if key in self.fields:
            return key
        folded = fold(key)
        if folded is None:
            return None
        for name in self.fields:
            if fold(name) == folded:
                return name
        return None


Shape = Scalar | ListOf | MapOf | StrSlice | Struct

_SPECIAL_FOLDS = {"\u017f": "S", "\u212a": "K"}
"""The two non-ASCII letters Go's field matching folds onto ASCII (long s, Kelvin sign)."""


def fold(key: str) -> str | None:
    """``key`` as Go's field matching compares it; None when it can match no ASCII name."""
    out = []
    for char in key:
        if char in _SPECIAL_FOLDS:
            out.append(_SPECIAL_FOLDS[char])
        elif char.isascii():
            out.append(char.upper())
        else:
            return None
    return "".join(out)


class _Float(Decimal):
    """A JSON number with a fraction or exponent (Go refuses it for integer fields)."""


def _constant(name: str) -> Any:
    raise BodyError(f"{name} is not JSON")


class Pairs(list[tuple[str, Any]]):
    """A parsed JSON object: its (key, value) pairs in order, repeated keys kept."""


def parse(raw: bytes) -> Any:
    """Raw JSON with every object kept as its list of (key, value) pairs, in order.

    UTF-8 only (Go reads nothing else), one value (trailing data is refused:
    Go's decoder would stop at the first value and ignore the rest).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BodyError(f"the body is not UTF-8 ({error.reason} at byte {error.start})") from None
    if not text.strip():
        return None
    try:
        return json.loads(
            text,
            object_pairs_hook=Pairs,
            parse_float=_Float,
            parse_constant=_constant,
        )
    except json.JSONDecodeError as error:
        raise BodyError(f"the body is not JSON: {error.msg} at character {error.pos}") from None


def decode(raw: bytes, shape: Struct) -> dict[str, Any]:
    """``raw`` read as dockerd reads it into ``shape``: the canonical object, or BodyError."""
    parsed = parse(raw)
    if parsed is None:
        return {}
    value = convert(parsed, shape, shape.name)
    assert isinstance(value, dict)
    return value


def convert(value: Any, shape: Shape, where: str) -> Any:
    """One parsed value read into ``shape`` (``where`` names it in errors)."""
    if value is None:
        return None  # Go: a pointer, slice or map becomes nil; anything else stays zero
    if isinstance(shape, Struct):
        return _struct(value, shape, where)
    if isinstance(shape, Scalar):
        return _scalar(value, shape, where)
    if isinstance(shape, StrSlice):
        if isinstance(value, str):
            return [value]
        return [
            _scalar(v, Scalar("str"), f"{where}[{i}]") for i, v in enumerate(_array(value, where))
        ]
    if isinstance(shape, ListOf):
        items = _array(value, where)
        if shape.length is not None:
            items = items[: shape.length]
        return [convert(v, shape.item, f"{where}[{i}]") for i, v in enumerate(items)]
    pairs = _object(value, where)
    out: dict[str, Any] = {}
    for key, item in pairs:
        if key in out:
            raise BodyError(f"{where}: key {key!r} is given twice; give each key once")
        _text(key, f"{where} key")
        out[key] = convert(item, shape.value, f"{where}[{key!r}]")
    return out


def _struct(value: Any, shape: Struct, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, item in _object(value, where):
        name = shape.lookup(key)
        if name is None:
            if shape.strict:
                raise BodyError(
                    f"{where}: unknown field {key!r}; the gateway passes on only the fields it "
                    "knows (see `docker run --help` for what is available)"
                )
            continue
        if name in out:
            raise BodyError(
                f"{where}.{name}: given twice (as {spelled[name]!r} and {key!r}; dockerd matches "
                "field names case-insensitively); give each field once"
            )
        spelled[name] = key
        out[name] = convert(item, shape.fields[name], f"{where}.{name}")
    return out


def _object(value: Any, where: str) -> Pairs:
    if not isinstance(value, Pairs):
        raise BodyError(f"{where}: expected a JSON object")
    return value


def _array(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list) or isinstance(value, Pairs):
        raise BodyError(f"{where}: expected a JSON array")
    return value


def _text(value: str, where: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BodyError(f"{where}: holds an unpaired surrogate escape") from None
    return value


def _scalar(value: Any, shape: Scalar, where: str) -> Any:
    kind = shape.kind
    if kind == "empty":
        _object(value, where)  # Go's struct{}: any object, its keys ignored
        return {}
    if kind == "str":
        if not isinstance(value, str):
            raise BodyError(f"{where}: expected a string")
        return _text(value, where)
    if kind == "bool":
        if not isinstance(value, bool):
            raise BodyError(f"{where}: expected true or false")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise BodyError(f"{where}: expected a number")
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BodyError(f"{where}: expected an integer")
    low, high = _RANGES[kind]
    if kind == "int":
        low, high = -(1 << (shape.bits - 1)), (1 << (shape.bits - 1)) - 1
    else:
        high = (1 << shape.bits) - 1
    if not low <= value <= high:
        raise BodyError(f"{where}: {value} is out of range")
    return value


def encode(value: Any) -> bytes:
    """The canonical body: compact JSON of a converted value."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
