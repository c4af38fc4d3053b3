"""The dashboard and alert rules are current, parse as PromQL and point at guides that exist.

That every metric they name is really exposed is proved against the running
operator and agent: tests/agent/test_monitoring.py.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from controller.cli.main import main
from controller.devcluster.binaries import source_root
from controller.monitoring import dashboard, render, rules
from tests.unit.doccheck import anchors
from tests.unit.promql import metric_names, parse

MONITORING = source_root() / "deploy" / "monitoring"


def test_committed_monitoring_files_match_a_fresh_render() -> None:
    assert render.drift(MONITORING) == []
    assert main(["monitoring", "check"]) == 0


def test_drift_is_caught_and_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    render.write(tmp_path)
    (tmp_path / render.RULES).write_text(
        (tmp_path / render.RULES).read_text().replace("for: 5m", "for: 1h", 1)
    )
    diffs = render.drift(tmp_path)
    assert len(diffs) == 1 and "prometheus-rules.yaml" in diffs[0] and "+    for: 5m" in diffs[0]
    assert main(["monitoring", "check", "--dir", str(tmp_path)]) == 1


@pytest.mark.parametrize("where,expression", render.expressions())
def test_every_expression_parses_as_promql(where: str, expression: str) -> None:
    parse(expression)
    assert metric_names(expression), f"{where} selects no metric"


def test_a_broken_expression_is_refused_by_the_parser() -> None:
    with pytest.raises(ValueError, match="unclosed left parenthesis"):
        parse("sum(rate(ds01_operator_reconciles_total[5m])")
    with pytest.raises(ValueError, match="unknown function"):
        parse("rates(ds01_operator_reconciles_total[5m])")


def test_rules_file_and_prometheus_rule_carry_the_same_alerts() -> None:
    plain = yaml.safe_load((MONITORING / render.RULES).read_text())
    crd = yaml.safe_load((MONITORING / render.PROMETHEUS_RULE).read_text())
    assert crd["kind"] == "PrometheusRule" and crd["spec"] == plain
    names = {r["alert"] for r in plain["groups"][0]["rules"]}
    assert {
        "DS01OperatorDown",
        "DS01AgentHeartbeatStale",
        "DS01NodeNotEnforcing",
        "DS01QuotaOverUse",
        "DS01BudgetExhausted",
        "DS01GPUHeldByNobody",
        "DS01RevocationNotEnforced",
    } <= names
    for rule in plain["groups"][0]["rules"]:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info")


def test_every_alert_names_a_troubleshooting_section_that_exists() -> None:
    guide = anchors((source_root() / rules.RUNBOOKS).read_text())  # GitHub's heading slugs
    missing = [a.name for a in rules.ALERTS if a.runbook not in guide]
    assert not missing, f"no heading in {rules.RUNBOOKS} for {missing}"


def test_dashboard_panels_fit_the_grid_without_overlapping() -> None:
    model = json.loads((MONITORING / render.DASHBOARD).read_text())
    cells: set[tuple[int, int]] = set()
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids))
    for panel in model["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
    titles = {p["title"] for p in model["panels"]}
    for wanted in ("Reconcile latency", "Waiting requests and their age", "Agent heartbeat age"):
        assert wanted in titles
    assert model["uid"] == dashboard.UID
