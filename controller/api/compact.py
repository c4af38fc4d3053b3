"""Parsed objects the operator keeps for long: let equal parts be one object.

The operator holds every GPUGrant and GPUNode it watches as parsed models, for as
long as the object lives: at 10,000 grants, bytes per object are what decides its
memory (docs/performance.md). Two things repeat across them and cost the most:

- every pydantic model instance carries its own `__pydantic_fields_set__`, a set
  of the field names the input gave (200 to 700 bytes), though a kind's instances
  have only a handful of distinct ones;
- every string is its own copy: the same namespace, subject, condition reason and
  message, finalizer, device model name, thousands of times.

`compact` shares both, in place, without changing any value: the models are
frozen, so nothing mutates a fields set in place (`model_copy` copies it first),
and a string is replaced only by an equal, interned one.
"""

from __future__ import annotations

import sys
from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)

_FIELD_SETS: dict[frozenset[str], set[str]] = {}
"""One set object per distinct fields set seen (a few hundred at most: per model
class, the combinations of optional fields the inputs gave)."""
MAX_INTERNED = 256
"""Longer strings are not interned: they are rarely repeated (a reason text, JSON)."""


def compact(model: M) -> M:
    """``model``, its fields sets and strings shared with equal ones already seen."""
    _model(model)
    return model


def _model(model: BaseModel) -> None:
    fields = model.__pydantic_fields_set__
    shared = _FIELD_SETS.setdefault(frozenset(fields), fields)
    if shared is not fields:
        object.__setattr__(model, "__pydantic_fields_set__", shared)
    values = model.__dict__
    for name, value in values.items():
        values[name] = _value(value)


def _value(value: Any) -> Any:
    kind = type(value)
    if kind is str:
        return sys.intern(value) if len(value) <= MAX_INTERNED else value
    if isinstance(value, BaseModel):
        _model(value)
    elif kind is list:
        value[:] = [_value(item) for item in value]
    elif kind is dict:
        shared = {_value(k): _value(v) for k, v in value.items()}
        value.clear()
        value.update(shared)
    return value
