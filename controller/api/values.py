"""Value types: one definition for pydantic and for the apiserver.

Each type is ``Annotated[python_type, Rule]`` where the rule object tells
pydantic how to validate (core schema) and the CRD generator what the
apiserver enforces (JSON schema), so the model stays the single source of both.

Strings are checked by CEL rules rather than OpenAPI ``pattern``: a failed
pattern answers with the regular expression, a failed rule with a sentence
that tells a person what to write. Fields only programs write inside long
lists (GPUNode) use ``machine()`` variants with a plain pattern, because a CEL
rule per list item would exceed the apiserver's cost budget for the CRD.

"Unlimited" is always an explicit string: client-side ``kubectl apply``
deletes nulls, so a null could never mean "no limit".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import Field, GetCoreSchemaHandler, GetJsonSchemaHandler, WithJsonSchema
from pydantic_core import CoreSchema, core_schema

UNLIMITED = "Unlimited"


def _matches(pattern: str) -> str:
    """A CEL test of ``self`` against ``pattern``, as a raw CEL string (no escaping)."""
    if "'" in pattern:
        raise ValueError(f"pattern {pattern!r} cannot hold a single quote")
    return "self.matches(r'" + pattern + "')"


@dataclass(frozen=True)
class TextRule:
    """A bounded string that must match ``pattern``; ``message`` says what to write."""

    pattern: str
    message: str
    max_length: int
    min_length: int = 0
    cel: bool = True

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.str_schema(
            pattern=self.pattern, max_length=self.max_length, min_length=self.min_length
        )

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "string", "maxLength": self.max_length}
        if self.min_length:
            out["minLength"] = self.min_length
        if self.cel:
            out["x-kubernetes-validations"] = [
                {"rule": _matches(self.pattern), "message": self.message}
            ]
        else:
            out["pattern"] = self.pattern
        return out


def machine(rule: TextRule) -> TextRule:
    """The same rule checked by OpenAPI ``pattern``, for program-written list items."""
    return dataclasses.replace(rule, cel=False)


@dataclass(frozen=True)
class IntOrStringRule:
    """A whole number in ``[0, max_int]``, or a string matching ``pattern``."""

    pattern: str
    max_int: int
    message: str

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.union_schema(
            [
                core_schema.int_schema(ge=0, le=self.max_int, strict=True),
                core_schema.str_schema(pattern=self.pattern),
            ]
        )

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        rule = (
            f"type(self) == int ? (self >= 0 && self <= {self.max_int}) : {_matches(self.pattern)}"
        )
        return {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "maxLength": 32,
            "x-kubernetes-validations": [{"rule": rule, "message": self.message}],
        }


_DURATION = r"([0-9]{1,6}([.][0-9]{1,3})?(h|m|s|ms))+"


@dataclass(frozen=True)
class DurationRule:
    """A Go-notation duration (what CEL's ``duration()`` parses), plus CEL bounds.

    The bounds are guarded by the syntax check, so a malformed value gets one
    clear message instead of an extra CEL conversion error.
    """

    bounds: tuple[tuple[str, str], ...] = ()

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.str_schema(pattern=f"^{_DURATION}$", max_length=32)

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        syntax = _matches(f"^{_DURATION}$")
        return {
            "type": "string",
            "maxLength": 32,
            "x-kubernetes-validations": [
                {
                    "rule": syntax,
                    "message": "must be a duration such as 30m, 24h or 1h30m (no days: write 72h)",
                },
                *({"rule": f"!{syntax} || ({rule})", "message": msg} for rule, msg in self.bounds),
            ],
        }


# -- limits ----------------------------------------------------------------

CountLimit = Annotated[
    int | str,
    IntOrStringRule(
        r"^(Unlimited|[0-9]{1,9})$", 1_000_000_000, "must be a whole number such as 3, or Unlimited"
    ),
]
"""A count with an explicit `Unlimited`: `3`, `"3"` or `"Unlimited"`."""

GPUEquivalentLimit = Annotated[
    int | str,
    IntOrStringRule(
        r"^(Unlimited|[0-9]{1,4}([.][0-9]{1,3})?)$",
        10_000,
        "must be GPU-equivalents such as 2 or '0.5' (quote fractions), or Unlimited",
    ),
]
"""GPU-equivalents: a whole GPU is 1, a MIG slice its compute slices / the parent's."""

HoursLimit = Annotated[
    int | str,
    IntOrStringRule(
        r"^(Unlimited|[0-9]{1,6}([.][0-9]{1,3})?)$",
        1_000_000,
        "must be hours such as 200 or '12.5' (quote fractions), or Unlimited",
    ),
]
"""GPU-equivalent-hours, or `Unlimited`."""

# Kubernetes resource.Quantity, as the apiserver's own types spell it, except that
# the exponent is a whole number of at most two digits: policy computes with exact
# numbers, and 1e999999999 would take it forever (the apiserver never sees these
# strings as quantities, so nothing else would stop one).
_QUANTITY = (
    r"([+-]?(([0-9]+([.][0-9]*)?)|([.][0-9]+))(([KMGTPE]i)|[numkMGTPE]"
    r"|([eE][+-]?[0-9]{1,2}))?)"
)
Quantity = Annotated[
    int | str,
    IntOrStringRule(f"^{_QUANTITY}$", 1 << 62, "must be a quantity such as 8, '500m' or '32Gi'"),
]
"""A Kubernetes quantity: `32`, `"500m"`, `"32Gi"`."""

QuantityLimit = Annotated[
    int | str,
    IntOrStringRule(
        f"^(Unlimited|{_QUANTITY})$",
        1 << 62,
        "must be a quantity such as 8 or '32Gi', or Unlimited",
    ),
]
"""A Kubernetes quantity or `Unlimited`."""

DurationLimit = Annotated[
    str,
    TextRule(
        f"^(Unlimited|{_DURATION})$",
        "must be a duration such as 30m or 24h (no days: write 72h), or Unlimited",
        32,
    ),
]
"""A duration (`30m`, `24h`) or `Unlimited` for no limit."""

# -- times and text ----------------------------------------------------------

# The apiserver accepts any RFC 3339 time from year 0001 to 9999, but policy adds
# durations and grace periods to times, which leaves Python's datetime range near
# either end (9999-12-31 plus an hour). Times are held to the years 1970-2199:
# by a plain pattern where programs write them (no CEL cost in long lists), by a
# rule with a sentence where people do.
_YEARS = r"^(19[7-9][0-9]|2[01][0-9][0-9])-"
_EARLIEST, _LATEST = "1970-01-01T00:00:00Z", "2200-01-01T00:00:00Z"

Time = Annotated[
    datetime,
    WithJsonSchema({"type": "string", "format": "date-time", "maxLength": 64, "pattern": _YEARS}),
]
"""An RFC 3339 timestamp such as `2026-11-25T18:00:00Z`, written by a program."""

UserTime = Annotated[
    datetime,
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "maxLength": 64,
            "x-kubernetes-validations": [
                {
                    "rule": f"self >= timestamp('{_EARLIEST}') && self < timestamp('{_LATEST}')",
                    "message": "must be a time in the years 1970 to 2199, such as "
                    "2026-11-25T18:00:00Z",
                }
            ],
        }
    ),
]
"""An RFC 3339 timestamp such as `2026-11-25T18:00:00Z`, written by a person."""

ShortText = Annotated[str, Field(max_length=256)]
Text = Annotated[str, Field(max_length=1024)]

# -- names and identifiers ----------------------------------------------------

DNS_SUBDOMAIN = TextRule(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    "must be a name of lower-case letters, digits, '-' and '.'",
    253,
    1,
)
DNS_LABEL = TextRule(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
    "must be a name of lower-case letters, digits and '-'",
    63,
    1,
)
# User names come from client certificates or OIDC (`248835@lab.example`, `alice`);
# group names from account annotations (`student`). No spaces, no control chars.
PRINCIPAL = TextRule(
    r"^[A-Za-z0-9][A-Za-z0-9._@:+-]*$",
    "must be a user or group name: letters, digits and . _ @ : + - (no spaces)",
    253,
    1,
)
LINUX_USER = TextRule(
    r"^[a-z_][a-z0-9_-]*[$]?$", "must be a Linux login name such as u248835", 32, 1
)
# Compute slices, 'g.', memory, 'gb', optional media extensions.
# At most 7 compute slices: no GPU has more (A100/H100: 7, A30: 4), and policy
# counts a slice as slices/7 of a GPU.
MIG_PROFILE = TextRule(
    r"^[1-7]g[.][1-9][0-9]{0,2}gb([+](me|gfx|me[.]all|-me))?$",
    "must be a MIG profile such as 1g.10gb, 2g.20gb or 3g.40gb",
    32,
)
DEVICE_UUID = TextRule(
    r"^(GPU|MIG)-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
    "must be a device UUID as nvidia-smi -L prints it: GPU-<uuid> or MIG-<uuid>",
    64,
)

NodeName = Annotated[str, DNS_SUBDOMAIN]
"""The name of a Kubernetes node (a DNS subdomain)."""
ObjectName = Annotated[str, DNS_SUBDOMAIN]
NamespaceName = Annotated[str, DNS_LABEL]
PrincipalName = Annotated[str, PRINCIPAL]
"""A user or group name."""
LinuxUser = Annotated[str, LINUX_USER]
"""A Linux login name as `useradd` accepts it."""
MIGProfile = Annotated[str, MIG_PROFILE]
"""A MIG profile name such as `1g.10gb`, `2g.20gb`, `3g.40gb` or `1g.10gb+me`."""
DeviceUUID = Annotated[str, DEVICE_UUID]
"""A device UUID as NVML reports it: `GPU-<uuid>` or `MIG-<uuid>`."""
