"""The audit trail is durable and tamper-evident: chained, signed, anchored outside the node.

The operator (real, as its ServiceAccount) signs checkpoints with its key and
keeps the latest in the ConfigMap `ds01-system/ds01-audit-anchor`; an agent
keeps its own in its GPUNode status. `ds01 audit verify` checks a trail against
both, and finds a deleted, edited, reordered or cut-off record.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from controller.agent.publisher import Publisher
from controller.api.node import AgentInfo, GPUNodeStatus
from controller.devcluster.process import wait_until
from controller.runtime.auditchain import raw_lines
from controller.runtime.audittrail import AuditSettings, Trail
from tests.controlplane.conftest import OperatorEnv
from tests.controlplane.kube import Kube, agent_kubeconfig

ANCHOR = "configmap/ds01-system/ds01-audit-anchor"


def verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli.main", "audit", "verify", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _anchor(admin: Kube) -> str | None:
    """The operator's anchor as SEQ:CHAIN, once it has one (one key per replica; one here)."""
    found = admin.kubectl(
        "get", "configmap", "ds01-audit-anchor", "-n", "ds01-system", "-o", "json", check=False
    )  # fmt: skip
    if found.returncode != 0:
        return None
    values = list((json.loads(found.stdout).get("data") or {}).values())
    assert len(values) <= 1, values
    return values[0] if values else None


def _grant(admin: Kube, name: str) -> None:
    admin.apply(
        {
            "apiVersion": "gpu.ds01.io/v1alpha1",
            "kind": "GPUGrant",
            "metadata": {"name": name, "namespace": "u-248835"},
            "spec": {
                "subject": {"kind": "User", "name": "248835@lab.example"},
                "gpus": {"count": 1},
                "duration": "1h",
                "reason": "audit trail test",
            },
        }
    )


def test_the_operators_trail_verifies_against_its_anchor_and_tampering_is_found(
    operator_env: OperatorEnv, tmp_path: Path
) -> None:
    admin = operator_env.admin
    for index in range(3):
        _grant(admin, f"audit-{index}")
    wait_until(lambda: _anchor(admin) is not None, 60, "the operator to anchor a checkpoint")
    kubeconfig = str(operator_env.cluster.kubeconfig)
    key = str(operator_env.audit_key)
    anchor = _anchor(admin)
    assert anchor is not None
    # A copy taken after the anchor was read: it reaches the anchor, and stays still.
    lines = list(raw_lines(operator_env.audit))
    copy = tmp_path / "audit.jsonl"

    def check(content: list[bytes], *extra: str) -> subprocess.CompletedProcess[str]:
        copy.write_bytes(b"".join(line + b"\n" for line in content))
        return verify("--file", str(copy), "--key-file", key, *extra)

    whole = check(lines, "--anchor", anchor)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    assert "signed through seq" in whole.stdout
    from_cluster = verify("--file", str(operator_env.audit), "--key-file", key,
                          "--anchor-from", ANCHOR, "--kubeconfig", kubeconfig)  # fmt: skip
    assert from_cluster.returncode == 0, from_cluster.stdout + from_cluster.stderr

    edited = [*lines]
    edited[1] = edited[1].replace(b'"ds01-operator"', b'"someone-else"')
    broken = check(edited)
    assert broken.returncode == 1 and "BROKEN" in broken.stdout, broken.stdout
    deleted = check(lines[:2] + lines[3:])
    assert deleted.returncode == 1 and "missing" in deleted.stdout, deleted.stdout
    cut = check(lines[: int(anchor.split(":")[0]) // 2], "--anchor", anchor)
    assert cut.returncode == 1 and "were deleted" in cut.stdout, cut.stdout
    forged = verify("--file", str(copy), "--key-file", str(tmp_path / "nope"))
    assert forged.returncode == 2 and "--key-file" in forged.stderr


def test_an_agents_checkpoint_is_kept_in_its_gpunode_status(
    operator_env: OperatorEnv, tmp_path: Path
) -> None:
    admin, cluster = operator_env.admin, operator_env.cluster
    node = "audit-node"
    api_config = agent_kubeconfig(cluster, admin, node)
    from kubernetes import config

    api = config.new_client_from_config(config_file=str(api_config))
    key = tmp_path / "agent.key"
    key.touch(mode=0o600)
    key.write_text("agent-key")
    published: list[Publisher] = []
    trail = Trail(
        tmp_path / "audit.jsonl",
        "ds01-agent",
        AuditSettings(key_file=key, checkpoint_every=2, checkpoint_interval=timedelta(0)),
        post=lambda anchor: [p.keep_anchor(anchor) for p in published],
    )
    publisher = Publisher(api, node, trail.log)
    published.append(publisher)
    publisher.ensure_node()
    for index in range(4):
        trail.log.write("access.revoke", "dave@lab.example", {"index": index})
    # seq 1, 2, checkpoint 3 (covers 2), seq 4, 5, checkpoint 6 (covers 5)
    wait_until(
        lambda: publisher.anchor is not None and publisher.anchor.seq == 5,
        10,
        "the checkpoint to reach the publisher",
    )
    now = datetime.now(UTC)
    assert publisher.publish(
        GPUNodeStatus(agent=AgentInfo(version="test", heartbeat_time=now)), now
    )
    stored = admin.get("gpunode", node)["status"]["agent"]["auditAnchor"]
    assert stored["seq"] == 5
    ok = verify("--file", str(tmp_path / "audit.jsonl"), "--key-file", str(key),
                "--anchor-from", f"node/{node}", "--kubeconfig", str(cluster.kubeconfig))  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    trail.close()
