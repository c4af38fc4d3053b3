"""Settings are never silently ignored: every option has a DS01_* variable, and bad values stop the start.

The class of fault: a manifest sets an environment variable the binary never
reads (the dev overlay's `DS01_DEFAULT_ENFORCEMENT=Audit` ran in Enforce), or
a value is misread without a word. So: every variable any manifest sets is an
option of the binary it is set for and takes effect; flags win over the
environment; a bad value in either ends the start with exit status 2 and a
message naming it; and the start logs the effective configuration.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.agent.main import AgentOptions
from controller.cli import options
from controller.cli.main import build_parser
from controller.devcluster.binaries import source_root
from controller.operator.main import OperatorOptions

MANIFESTS = source_root() / "manifests"
BINARY = {"StatefulSet": "operator", "DaemonSet": "agent"}


def parsed(argv: list[str], environ: dict[str, str]) -> tuple[Any, dict[str, str]]:
    args = build_parser().parse_args(argv)
    return args, options.resolve(args, environ)


def _env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def manifest_environments() -> list[tuple[str, str, dict[str, str]]]:
    """(where, binary, environment) of every workload in base, with each overlay's additions."""
    found = []
    base: dict[str, dict[str, str]] = {}
    for path in sorted((MANIFESTS / "base").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in BINARY:
                container = doc["spec"]["template"]["spec"]["containers"][0]
                base[doc["metadata"]["name"]] = _env_of(container)
                found.append((f"base/{path.name}", BINARY[doc["kind"]], _env_of(container)))
    for overlay in sorted((MANIFESTS / "overlays").iterdir()):
        kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
        for patch in kustomization.get("patches", []):
            target = patch["target"]
            added = {
                op["value"]["name"]: op["value"]["value"]
                for op in yaml.safe_load(patch["patch"])
                if op["path"].endswith("/env/-")
            }
            env = {**base[target["name"]], **added}
            found.append((f"overlays/{overlay.name}", BINARY[target["kind"]], env))
    return found


BASE_ARGV = {"operator": ["operator"], "agent": ["agent", "--node=gpu-node-1"]}


@pytest.mark.parametrize(
    ("where", "binary", "environ"),
    manifest_environments(),
    ids=[f"{w}:{b}" for w, b, _ in manifest_environments()],
)
def test_every_variable_a_manifest_sets_is_read_and_takes_effect(
    where: str, binary: str, environ: dict[str, str]
) -> None:
    args, sources = parsed(BASE_ARGV[binary], environ)
    for name, value in environ.items():
        if not name.startswith(options.ENV_PREFIX):
            continue
        dest = name.removeprefix(options.ENV_PREFIX).lower()
        assert sources.get(dest) == "env", f"{where} sets {name}, which `ds01 {binary}` ignores"
        got = getattr(args, dest)
        assert str(got).lower() == value.lower() or got == Path(value), (name, got)


def test_the_dev_overlay_runs_the_operator_in_audit_with_debug_logs() -> None:
    (dev,) = [
        env for w, b, env in manifest_environments() if w == "overlays/dev" and b == "operator"
    ]
    args, sources = parsed(["operator"], dev)
    assert (args.default_enforcement, sources["default_enforcement"]) == ("Audit", "env")
    assert (args.log_level, sources["log_level"]) == ("DEBUG", "env")


def test_a_flag_wins_over_the_environment_which_wins_over_the_default() -> None:
    environ = {"DS01_DEFAULT_ENFORCEMENT": "Audit", "DS01_EXPIRY_WARNING": "10m"}
    args, sources = parsed(["operator", "--default-enforcement=Off"], environ)
    assert (args.default_enforcement, sources["default_enforcement"]) == ("Off", "flag")
    assert (args.expiry_warning, sources["expiry_warning"]) == (timedelta(minutes=10), "env")
    assert (args.default_duration, sources["default_duration"]) == (timedelta(hours=24), "default")


@pytest.mark.parametrize(
    ("binary", "name", "value", "says"),
    [
        ("operator", "DS01_DEFAULT_ENFORCEMENT", "Enforcing", "is not one of Enforce, Audit, Off"),
        ("operator", "DS01_DEFAULT_DURATION", "3d", "is not a duration"),
        ("operator", "DS01_BUDGET_BUCKET", "0s", "must be longer than 0s"),
        ("operator", "DS01_LOG_LEVEL", "loud", "is not a log level"),
        ("operator", "DS01_METRICS_PORT", "99999", "is not a port number"),
        ("operator", "DS01_FINISHED_GRANT_RETENTION", "forever", "is not a duration"),
        ("agent", "DS01_INTERVAL", "5", "is not a duration"),
        ("agent", "DS01_GRACE", "five minutes", "is not a duration"),
    ],
)
def test_a_bad_value_stops_the_start_naming_the_variable(
    binary: str, name: str, value: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        parsed(BASE_ARGV[binary], {name: value})
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"${name}={value!r}" in err and says in err


def test_a_required_option_may_come_from_the_environment_but_must_come() -> None:
    args, sources = parsed(["agent"], {"DS01_NODE": "gpu-node-7"})
    assert (args.node, sources["node"]) == ("gpu-node-7", "env")
    with pytest.raises(SystemExit):
        parsed(["agent"], {})


def test_durations_share_one_syntax_and_reach_the_agent_as_seconds() -> None:
    environ = {"DS01_INTERVAL": "500ms", "DS01_GRACE": "1m30s"}
    args, _ = parsed(["agent", "--node=n", "--lifecycle-interval=0"], environ)
    assert (args.interval, args.grace, args.lifecycle_interval) == (0.5, 90.0, 0.0)


def test_unlimited_retention_keeps_grants() -> None:
    args, _ = parsed(["operator"], {"DS01_FINISHED_GRANT_RETENTION": "Unlimited"})
    assert args.finished_grant_retention is None


def _field_defaults(cls: type) -> dict[str, Any]:
    return {
        f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
    }


@pytest.mark.parametrize(
    ("argv", "cls"),
    [(["operator"], OperatorOptions), (["agent", "--node=n"], AgentOptions)],
    ids=["operator", "agent"],
)
def test_flag_defaults_are_the_settings_dataclass_defaults(argv: list[str], cls: type) -> None:
    """The dataclass is what programs (tests, benchmarks) build; the flags must agree with it."""
    args, sources = parsed(argv, {})
    defaults = _field_defaults(cls)
    compared = 0
    for dest, source in sources.items():
        field = dest if dest in defaults else f"{dest}_s"
        if source != "default" or field not in defaults:
            continue
        value = getattr(args, dest)
        if isinstance(value, list):
            value = tuple(value)
        assert value == defaults[field], f"--{dest.replace('_', '-')}: {value!r}"
        compared += 1
    assert compared >= 8


def _start(environ: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(options.ENV_PREFIX)}
    return subprocess.run(
        [sys.executable, "-m", "controller.cli.main", "operator", *argv],
        env={**env, **environ},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_operator_process_refuses_a_bad_setting_with_status_2() -> None:
    done = _start({"DS01_DEFAULT_ENFORCEMENT": "Enforcing"}, "--kubeconfig=/nonexistent")
    assert done.returncode == 2
    assert "$DS01_DEFAULT_ENFORCEMENT='Enforcing'" in done.stderr
    assert "is not one of Enforce, Audit, Off" in done.stderr


def test_the_operator_process_logs_its_effective_configuration(tmp_path: Path) -> None:
    done = _start(
        {"DS01_DEFAULT_ENFORCEMENT": "Audit"},
        f"--kubeconfig={tmp_path / 'missing'}",
        "--expiry-warning=5m",
    )
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    (config,) = [line for line in lines if line.get("event") == "effective configuration"]
    settings = config["settings"]
    assert settings["default-enforcement"] == {"value": "Audit", "from": "env"}
    assert settings["expiry-warning"] == {"value": "300s", "from": "flag"}
    assert settings["default-duration"] == {"value": "86400s", "from": "default"}
    assert (
        len(settings)
        == len(
            [a for a in build_parser()._subparsers._group_actions[0].choices["operator"]._actions]
        )
        - 1
    )  # every option but --help


def test_a_repeatable_flag_collects_its_values_or_falls_back_to_the_environment() -> None:
    """`--gateway-bind-root` and `--gateway-allow-device` may be given several times."""
    args, sources = parsed(
        ["agent", "--node", "n", "--gateway-bind-root", "/a", "--gateway-bind-root", "/b"], {}
    )
    assert args.gateway_bind_root == ["/a", "/b"] and sources["gateway_bind_root"] == "flag"
    args, sources = parsed(["agent", "--node", "n"], {"DS01_GATEWAY_ALLOW_DEVICE": "/dev/x,/dev/y"})
    assert args.gateway_allow_device == ["/dev/x", "/dev/y"]
    assert sources["gateway_allow_device"] == "env"
    args, sources = parsed(["agent", "--node", "n"], {})
    assert args.gateway_allow_device is None and sources["gateway_allow_device"] == "default"
