"""The commands the manifests run are commands `ds01` accepts."""

from __future__ import annotations

import yaml

from controller.cli.main import build_parser
from controller.devcluster.binaries import source_root

BASE = source_root() / "manifests" / "base"


def command(path: str, kind: str) -> list[str]:
    doc = next(d for d in yaml.safe_load_all((BASE / path).read_text()) if d["kind"] == kind)
    return list(doc["spec"]["template"]["spec"]["containers"][0]["command"])


def test_operator_statefulset_command_parses() -> None:
    argv = command("operator.yaml", "StatefulSet")
    assert argv[0] == "ds01"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "operator" and args.metrics_port == 8080
    assert args.liveness == "http://0.0.0.0:8081/healthz"
    # The trail: a copy to stdout, checkpoints signed with the Secret's key.
    assert args.audit_stdout is True
    assert str(args.audit_key) == "/etc/ds01/audit-key/key"


def test_agent_daemonset_command_parses_and_uses_the_host_mounts() -> None:
    argv = [a.replace("$(NODE_NAME)", "gpu-node-1") for a in command("agent.yaml", "DaemonSet")]
    args = build_parser().parse_args(argv[1:])
    assert args.command == "agent" and args.node == "gpu-node-1"
    assert str(args.proc_root) == "/host/proc" and str(args.passwd) == "/host/etc/passwd"
    assert str(args.pod_resources_socket) == "/var/lib/kubelet/pod-resources/kubelet.sock"


def test_the_docker_host_unit_runs_a_command_ds01_accepts() -> None:
    """deploy/docker-host/ds01-agent.service: its ExecStart, variables filled in, parses."""
    unit = (source_root() / "deploy" / "docker-host" / "ds01-agent.service").read_text()
    lines = unit.split("ExecStart=", 1)[1].split("\n")
    joined = ""
    for line in lines:
        joined += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            break
    argv = joined.replace("${", "").replace("}", "").split()
    assert argv[0].endswith("/ds01")
    args = build_parser().parse_args(argv[1:])
    assert args.command == "agent"
    assert str(args.gateway_socket) == "/run/docker.sock"
    assert args.gateway_runtime == "ds01-runc"
    assert str(args.audit_key) == "/etc/ds01/audit.key"
