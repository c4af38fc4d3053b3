"""Building blocks shared by every kind: the model base, subjects, conditions."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from controller.api.values import PrincipalName, Time

GROUP = "gpu.ds01.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Words that Kubernetes API conventions keep upper-case inside camelCase names
# (podIP, hostIP): `max_gpu_equivalents` becomes `maxGPUEquivalents`.
_ACRONYMS = {
    "gpu": "GPU",
    "gpus": "GPUs",
    "uuid": "UUID",
    "uuids": "UUIDs",
    "mig": "MIG",
    "cpu": "CPU",
    "cpus": "CPUs",
    "id": "ID",
    "xid": "XID",
    "pid": "PID",
    "pids": "PIDs",
    "mib": "MiB",
    "uid": "UID",
    "pci": "PCI",
}


def camel(name: str) -> str:
    """Return the JSON field name for a snake_case attribute name."""
    first, *rest = name.split("_")
    return first + "".join(_ACRONYMS.get(part, part.capitalize()) for part in rest)


class Model(BaseModel):
    """Base of every API model: camelCase on the wire, docstrings as descriptions.

    Unknown fields are ignored rather than refused: the apiserver already prunes
    them, and an older operator must still read objects a newer schema wrote.
    """

    model_config = ConfigDict(
        alias_generator=camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="ignore",
        frozen=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """Dump as the apiserver stores it: camelCase, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Subject(Model):
    """Who a policy, grant or exemption applies to."""

    kind: Literal["User", "Group"]
    """`User` for one person (their exact user name) or `Group` for a group named in accounts."""
    name: PrincipalName
    """The user name (for example `248835@lab.example`) or group name (for example `student`)."""


ConditionStatus = Literal["True", "False", "Unknown"]

_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
_CONDITION_TYPE = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)


class Condition(Model):
    """One aspect of an object's state, in the shape of Kubernetes' metav1.Condition."""

    type: Annotated[str, Field(max_length=316, pattern=_CONDITION_TYPE)]
    """Which aspect this condition describes, in CamelCase (for example `Ready`, `Active`)."""
    status: ConditionStatus
    """`True`, `False` or `Unknown`."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The `metadata.generation` the condition was computed from."""
    last_transition_time: Time
    """When the status last changed."""
    reason: Annotated[str, Field(min_length=1, max_length=1024, pattern=_REASON)]
    """A CamelCase word a program can match on, explaining the status."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """A sentence for a person, saying what happened and what to do about it."""


Conditions = Annotated[
    list[Condition],
    Field(
        max_length=16,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    ),
]
"""Conditions keyed by type; at most one of each."""
