"""Render CustomResourceDefinitions from the pydantic models.

Pydantic's JSON Schema is close to, but not, a structural OpenAPI v3 schema.
This module rewrites it: `$ref` inlined, `anyOf [X, null]` folded into X
(optional fields are simply not required), `additionalProperties: false` and
titles dropped, `propertyNames` turned into a CEL rule, `const` into
`enum`. It refuses to render a schema that breaks the project's own rules:
every field described, every string and list bounded.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from controller.api.base import GROUP, VERSION

Schema = dict[str, Any]

_DROPPED_KEYS = {"title", "examples", "discriminator"}


@dataclass(frozen=True)
class PrinterColumn:
    """One column of `kubectl get`."""

    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0

    def to_wire(self) -> dict[str, Any]:
        column: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            column["description"] = self.description
        if self.priority:
            column["priority"] = self.priority
        return column


@dataclass(frozen=True)
class KindInfo:
    """Everything the generator needs to know about one kind besides its models."""

    kind: str
    plural: str
    scope: str
    spec: type[BaseModel]
    status: type[BaseModel]
    description: str
    short_names: tuple[str, ...]
    columns: tuple[PrinterColumn, ...] = ()
    categories: tuple[str, ...] = ("ds01",)
    root_rules: tuple[dict[str, str], ...] = field(default=())

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _resolve(node: Any, defs: dict[str, Schema]) -> Any:
    """Inline every `$ref` (pydantic only emits local `#/$defs/X` refs)."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "allOf" in node and len(node["allOf"]) == 1 and "$ref" in node["allOf"][0]:
        node = {**node["allOf"][0], **{k: v for k, v in node.items() if k != "allOf"}}
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        node = {**target, **siblings}
        # A field's own docstring describes its role better than the class's.
    return {key: _resolve(value, defs) for key, value in node.items()}


def _fold_nullable(node: Schema) -> Schema:
    """Turn `anyOf: [X, {type: null}]` into X, keeping the field's own keys."""
    options = node.get("anyOf")
    if not options:
        return node
    rest = [option for option in options if option != {"type": "null"}]
    if len(rest) == len(options):
        return node
    outer = {k: v for k, v in node.items() if k != "anyOf"}
    if outer.get("default", ...) is None:
        del outer["default"]
    if len(rest) == 1:
        inner = rest[0]
        merged = {**inner, **outer}
        rules = inner.get("x-kubernetes-validations", []) + outer.get(
            "x-kubernetes-validations", []
        )
        if rules:
            merged["x-kubernetes-validations"] = rules
        return merged
    return {**outer, "anyOf": rest}


def _convert(node: Any) -> Any:
    """Rewrite one schema node (and its children) into structural OpenAPI v3."""
    if isinstance(node, list):
        return [_convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = _fold_nullable(node)
    out: Schema = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "additionalProperties" and value is False:
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        if key == "propertyNames":
            limit = value.get("maxLength")
            if limit is not None:
                out.setdefault("x-kubernetes-validations", []).append(
                    {
                        "rule": f"self.all(k, size(k) <= {limit})",
                        "message": f"keys must be at most {limit} characters",
                    }
                )
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
            continue
        if key == "properties":
            out[key] = {name: _convert(child) for name, child in value.items()}
            continue
        out[key] = _convert(value)
    if "anyOf" in out and out.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def openapi_schema(model: type[BaseModel]) -> Schema:
    """The structural OpenAPI v3 schema of a model, as a CRD needs it."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _convert(_resolve(raw, defs))  # type: ignore[no-any-return]


def _walk(schema: Schema, path: str) -> Iterator[tuple[str, Schema]]:
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def problems(schema: Schema, root: str) -> list[str]:
    """Breaches of the project's schema rules: why a rendered CRD would be refused."""
    found: list[str] = []
    for path, node in _walk(schema, root):
        is_child = path != root and not path.endswith(("[]", "{}"))
        if is_child and not node.get("description"):
            found.append(f"{path}: no description")
        for key in ("$ref", "$defs", "const", "title"):
            if key in node:
                found.append(f"{path}: contains {key}")
        if node.get("additionalProperties") is False:
            found.append(f"{path}: additionalProperties: false")
        if any(option == {"type": "null"} for option in node.get("anyOf", [])):
            found.append(f"{path}: anyOf with null")
        kind = node.get("type")
        if kind is None and not node.get("x-kubernetes-int-or-string"):
            found.append(f"{path}: no type")
        if (kind == "string" or node.get("x-kubernetes-int-or-string")) and not (
            "maxLength" in node or "enum" in node
        ):
            found.append(f"{path}: string without maxLength or enum")
        if kind == "array" and "maxItems" not in node:
            found.append(f"{path}: list without maxItems")
        if kind == "object" and "additionalProperties" in node and "maxProperties" not in node:
            found.append(f"{path}: map without maxProperties")
    return found


def render(info: KindInfo) -> Schema:
    """The CustomResourceDefinition of one kind, as a plain dict ready for YAML."""
    spec = openapi_schema(info.spec)
    status = openapi_schema(info.status)
    spec.setdefault("description", info.spec.__doc__ or "")
    status.setdefault("description", info.status.__doc__ or "")
    root: Schema = {
        "type": "object",
        "description": info.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "APIVersion of this object: gpu.ds01.io/v1alpha1.",
            },
            "kind": {"type": "string", "description": f"Kind of this object: {info.kind}."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    if info.root_rules:
        root["x-kubernetes-validations"] = list(info.root_rules)
    found = problems(spec, f"{info.kind}.spec") + problems(status, f"{info.kind}.status")
    if found:
        raise ValueError(f"{info.kind} schema breaks the CRD rules:\n  " + "\n  ".join(found))
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": info.crd_name},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": list(info.categories),
            },
            "scope": info.scope,
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [c.to_wire() for c in info.columns],
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }
