"""Hypothesis strategies for objects the apiserver would accept, built from the CRDs themselves.

The committed `crds/*.yaml` are what the apiserver judges with, so the
strategies read them rather than the pydantic models: types, enums, formats,
patterns, lengths, item and property counts, required fields and list
uniqueness shape each value, and every `x-kubernetes-validations` rule is
evaluated with a CEL interpreter (`celpy`) on the value drawn, so only
values the apiserver would admit come out. The only rules left out are
transition rules (those naming `oldSelf`), which do not apply when an object
is created.

A string checked by a CEL ``self.matches(r'...')`` rule is drawn from that
regular expression directly (random text would almost never match it).
Lists and strings are drawn shorter than their limits allow, except that a
limit is sometimes hit exactly, so a pass over a few hundred examples stays
fast.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import celpy
import yaml
from celpy import celtypes
from hypothesis import strategies as st

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"
Schema = dict[str, Any]

_MATCHES = re.compile(r"^self\.matches\(r'(?P<pattern>[^']*)'\)$")
_INT_OR_STRING = re.compile(
    r"^type\(self\) == int \? \(self >= (?P<low>-?[0-9]+) && self <= (?P<high>[0-9]+)\) : "
    r"self\.matches\(r'(?P<pattern>[^']*)'\)$"
)
_GUARDED = re.compile(r"^!self\.matches\(r'(?P<pattern>[^']*)'\) \|\| ")
SHORT_LIST = 3
"""Lists are drawn with at most this many items (or their maxItems, if fewer)."""
SHORT_TEXT = 40
LONGEST_EXACT = 1024
"""Strings are sometimes drawn at exactly their maxLength, when it is at most this."""


@functools.cache
def crd_schema(plural: str) -> Schema:
    """The openAPIV3Schema of ``crds/<plural>.gpu.ds01.io.yaml``."""
    crd = yaml.safe_load((CRD_DIR / f"{plural}.gpu.ds01.io.yaml").read_text())
    schema: Schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


# -- CEL ------------------------------------------------------------------------


_ENVIRONMENT = celpy.Environment()  # it raises the recursion limit once, here, not in a test


@functools.cache
def _program(rule: str) -> Any:
    return _ENVIRONMENT.program(_ENVIRONMENT.compile(rule))


def _cel(value: Any, schema: Schema) -> Any:
    """``value`` as the apiserver hands it to CEL: date-time strings become timestamps."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return celtypes.MapType(
            {
                celtypes.StringType(k): _cel(
                    v, props.get(k, extra if isinstance(extra, dict) else {})
                )
                for k, v in value.items()
            }
        )
    if isinstance(value, list):
        return celtypes.ListType([_cel(v, schema.get("items", {})) for v in value])
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        return (
            celtypes.DoubleType(value)
            if schema.get("type") == "number"
            else celtypes.IntType(value)
        )
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, str) and schema.get("format") == "date-time":
        return celtypes.TimestampType(value)
    return celtypes.StringType(value)


def admitted(value: Any, schema: Schema) -> bool:
    """Whether every creation-time CEL rule of ``schema`` (this level only) holds for ``value``."""
    for entry in schema.get("x-kubernetes-validations", []):
        rule = entry["rule"]
        if "oldSelf" in rule:
            continue  # a transition rule: not evaluated when an object is created
        try:
            result = _program(rule).evaluate({"self": _cel(value, schema)})
        except celpy.CELEvalError:
            return False  # the apiserver refuses an object whose rule fails to evaluate
        if isinstance(result, Exception) or not bool(result):
            return False
    return True


# -- values -----------------------------------------------------------------------

_ZONES = st.sampled_from(
    [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
)


def date_times(
    around: datetime = datetime(2026, 11, 25, 12, tzinfo=UTC),
    spread: timedelta = timedelta(days=800),
    edges: bool = True,
) -> st.SearchStrategy[str]:
    """RFC 3339 timestamps near ``around``, in several zones, sometimes with fractions,
    and (with ``edges``) now and then at the ends of what RFC 3339 can write (years
    0001 and 9999), which the apiserver accepts unless a rule says otherwise."""
    near = st.builds(
        lambda offset, zone, micro: (
            (around + timedelta(seconds=offset)).astimezone(zone).replace(microsecond=micro)
        ),
        st.integers(int(-spread.total_seconds()), int(spread.total_seconds())),
        _ZONES,
        st.sampled_from([0, 0, 0, 500_000, 123_456]),
    )
    far = st.sampled_from(
        [datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 12, 30, 23, 59, 59, tzinfo=UTC)]
    )
    moments = st.one_of(near, near, near, far) if edges else near
    return moments.map(lambda moment: moment.isoformat().replace("+00:00", "Z"))


def _strings(schema: Schema) -> st.SearchStrategy[str]:
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if schema.get("format") == "date-time":
        return date_times()
    low = schema.get("minLength", 0)
    high = schema.get("maxLength", SHORT_TEXT)
    pattern = schema.get("pattern")
    for entry in schema.get("x-kubernetes-validations", []):
        found = _MATCHES.match(entry["rule"]) or _GUARDED.match(entry["rule"])
        if found:
            pattern = found["pattern"]
    if pattern is not None:
        return st.from_regex(pattern, fullmatch=True).filter(lambda s: low <= len(s) <= high)
    short = st.text(min_size=low, max_size=max(low, min(high, SHORT_TEXT)))
    if high > LONGEST_EXACT:
        return short
    return st.one_of(short, short, short, st.text(min_size=high, max_size=high))


def _int_or_string(schema: Schema) -> st.SearchStrategy[int | str]:
    for entry in schema.get("x-kubernetes-validations", []):
        found = _INT_OR_STRING.match(entry["rule"])
        if found:
            whole = st.integers(int(found["low"]), int(found["high"]))
            text = st.from_regex(found["pattern"], fullmatch=True)
            limit = schema.get("maxLength", SHORT_TEXT)
            return st.one_of(whole, text.filter(lambda s, limit=limit: len(s) <= limit))
    return st.one_of(st.integers(), st.text(max_size=schema.get("maxLength", SHORT_TEXT)))


def _integers(schema: Schema) -> st.SearchStrategy[int]:
    low = schema.get("minimum", -(2**63))
    high = schema.get("maximum", 2**63 - 1)
    if schema.get("exclusiveMinimum") is True:
        low += 1
    if schema.get("exclusiveMaximum") is True:
        high -= 1
    edges = [v for v in (low, high, 0, 1) if low <= v <= high]
    return st.one_of(st.integers(low, high), st.sampled_from(edges))


def _numbers(schema: Schema) -> st.SearchStrategy[float]:
    return st.floats(
        min_value=schema.get("minimum"),
        max_value=schema.get("maximum"),
        exclude_min=schema.get("exclusiveMinimum") is True,
        exclude_max=schema.get("exclusiveMaximum") is True,
        allow_nan=False,
        allow_infinity=False,
    )


def _lists(schema: Schema, overrides: Overrides, path: str) -> st.SearchStrategy[list[Any]]:
    items = values(schema.get("items", {}), overrides, f"{path}[]")
    low = schema.get("minItems", 0)
    high = max(low, min(schema.get("maxItems", SHORT_LIST), SHORT_LIST))
    kind = schema.get("x-kubernetes-list-type")
    unique_by: Callable[[Any], Any] | None = None
    if kind == "set":
        unique_by = repr
    elif kind == "map":
        keys = schema["x-kubernetes-list-map-keys"]
        unique_by = lambda item: tuple(repr(item.get(k)) for k in keys)  # noqa: E731
    return st.lists(items, min_size=low, max_size=high, unique_by=unique_by)


def _objects(schema: Schema, overrides: Overrides, path: str) -> st.SearchStrategy[dict[str, Any]]:
    props = schema.get("properties", {})
    if not props and isinstance(schema.get("additionalProperties"), dict):
        key_limit = min(_key_limit(schema), SHORT_TEXT)
        keys = st.text(min_size=0, max_size=key_limit)
        return st.dictionaries(
            keys,
            values(schema["additionalProperties"], overrides, f"{path}{{}}"),
            max_size=min(schema.get("maxProperties", SHORT_LIST), SHORT_LIST),
        )
    required = set(schema.get("required", ()))
    fixed = {
        name: values(props[name], overrides, f"{path}.{name}") for name in props if name in required
    }
    optional = {
        name: values(props[name], overrides, f"{path}.{name}")
        for name in props
        if name not in required
    }
    # The apiserver fills in defaults before it validates and stores an object.
    defaults = {name: props[name]["default"] for name in props if "default" in props[name]}
    return st.builds(
        lambda a, b: {**defaults, **a, **b},
        st.fixed_dictionaries(fixed),
        st.fixed_dictionaries({}, optional=optional),
    )


def _key_limit(schema: Schema) -> int:
    for entry in schema.get("x-kubernetes-validations", []):
        found = re.match(r"^self\.all\(k, size\(k\) <= ([0-9]+)\)$", entry["rule"])
        if found:
            return int(found[1])
    return SHORT_TEXT


Overrides = dict[str, st.SearchStrategy[Any]]
"""Strategies to use at given paths instead of the schema's (e.g. names that must match
other objects); they must still draw values the schema admits: the rules are checked."""


def values(
    schema: Schema, overrides: Overrides | None = None, path: str = ""
) -> st.SearchStrategy[Any]:
    """Values of ``schema`` that pass its CEL rules. ``path`` is ``.spec.gpus`` style."""
    overrides = overrides or {}
    if path in overrides:
        drawn = overrides[path]
    elif schema.get("x-kubernetes-int-or-string"):
        drawn = _int_or_string(schema)
    else:
        kind = schema.get("type")
        if kind == "object":
            drawn = _objects(schema, overrides, path)
        elif kind == "array":
            drawn = _lists(schema, overrides, path)
        elif kind == "string":
            drawn = _strings(schema)
        elif kind == "integer":
            drawn = _integers(schema)
        elif kind == "number":
            drawn = _numbers(schema)
        elif kind == "boolean":
            drawn = st.booleans()
        else:
            raise ValueError(f"{path or 'root'}: schema type {kind!r} has no strategy")
    if schema.get("x-kubernetes-validations"):
        return drawn.filter(lambda value: admitted(value, schema))
    return drawn
