"""PromQL as Prometheus reads it: expressions of the dashboard and rules, and the metrics they name.

`promql_parser` binds the Rust promql-parser crate, which follows Prometheus'
grammar and function list; an unknown function or a misplaced modifier fails.
Grafana's variables are replaced by values of the same syntactic kind first
(a range for `$__rate_interval`, a regex for a multi-value `$node`), and
`label_values(METRIC, label)` is read as the selector ``METRIC``.
"""

from __future__ import annotations

import re

import promql_parser

GRAFANA = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m", "$node": ".*"}
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>[^,]+),\s*\w+\)$")


def prometheus_text(expression: str) -> str:
    """The expression as Prometheus receives it from Grafana."""
    found = LABEL_VALUES.match(expression.strip())
    if found:
        expression = found["selector"]
    for variable, value in GRAFANA.items():
        expression = expression.replace(variable, value)
    return expression


def parse(expression: str) -> promql_parser.Expr:
    """The parsed expression; ValueError naming the problem when it is not PromQL."""
    return promql_parser.parse(prometheus_text(expression))


def metric_names(expression: str) -> set[str]:
    """Every metric name the expression selects."""
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(parse(expression), visit)
    return names


def selectors(expression: str) -> list[tuple[str, set[str]]]:
    """(metric, label names it matches on) for every selector of the expression."""
    found: list[tuple[str, set[str]]] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            labels = {m.name for m in node.matchers.matchers if m.name != "__name__"}
            found.append((node.name, labels))

    promql_parser.walk(parse(expression), visit)
    return found
