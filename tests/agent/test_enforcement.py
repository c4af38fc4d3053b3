"""Kernel enforcement, proved by the kernel's own answers.

Fake GPUs are mapped onto openable misc devices (major 10), so an allowed open
succeeds, a denied one fails with EPERM from the device cgroup, and a process
can hold a "GPU" open for the revocation tests. Everything else is real: cgroup
v1 device rules, a Docker engine, Linux users and their session slices.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from controller.devcluster.process import wait_until
from tests.agent.enforcehost import Node
from tests.agent.users import ensure_user


def test_containers_open_only_their_allocated_devices(node: Node) -> None:
    (mine, mine_path), (_, other_path) = node.gpu(2), node.gpu(3)
    allocated = node.container("amy@lab.example", [mine], [mine_path, other_path])
    bare = node.container(None, [], [mine_path])  # a GPU mapped in behind the gateway's back
    node.policy()
    outcome = node.agent.enforce()
    assert outcome is not None and outcome.written == 2
    assert node.opens(allocated, 0) == "OPEN"
    assert "Operation not permitted" in node.opens(allocated, 1)
    assert "Operation not permitted" in node.opens(bare, 0)

    # A restart re-creates the container's device cgroup from its bundle: the runtime
    # wrapper closes the other GPU there again, before any pass of the agent.
    node.engine.docker("restart", "-t", "0", allocated)
    assert "Operation not permitted" in node.opens(allocated, 1)
    assert node.opens(allocated, 0) == "OPEN"


def test_audit_mode_changes_nothing_and_reports_what_it_would_deny(node: Node) -> None:
    gpu, path = node.gpu(4)
    bare = node.container(None, [], [path])
    node.policy(enforcement="Audit")
    outcome = node.agent.enforce()
    assert outcome is not None and outcome.written == 0
    assert node.opens(bare, 0) == "OPEN"
    denied = {n for numbers in outcome.decision.would_deny.values() for n in numbers}
    assert node.agent.inventory is not None
    gpu_number = next(
        (g.device.major, g.device.minor) for g in node.agent.inventory.gpus if g.uuid == gpu
    )
    assert gpu_number in denied


def test_revocation_warns_then_ends_the_holder_and_blocks_new_opens(node: Node) -> None:
    gpu, path = node.gpu(5)
    owner = "ben@lab.example"
    holder = node.container(owner, [gpu], [path], command="exec 3<>/dev/gpu0; sleep 600")
    node.policy()
    node.agent.enforce()
    assert node.engine.client.inspect(holder).running  # type: ignore[union-attr]
    now = datetime.now(UTC)
    node.policy(
        generation=2,
        revocations=[
            {
                "user": owner,
                "deviceUUIDs": [gpu],
                "reason": "grant revoked by an approver",
                "effectiveAt": (now + timedelta(seconds=3)).isoformat(),
                "until": (now + timedelta(hours=1)).isoformat(),
                "source": {"kind": "GPUGrant", "name": "ben-grant", "namespace": "u-ben"},
            }
        ],
    )
    first = node.agent.enforce()
    assert first is not None and [w.holder.place.container_id for w in first.warned] == [holder]
    assert node.engine.client.inspect(holder).running  # type: ignore[union-attr]  # warned, not yet ended
    assert "access.revoke_warning" in node.audit_types()

    def stopped() -> bool:
        node.agent.enforce()
        container = node.engine.client.inspect(holder)
        return container is not None and not container.running

    wait_until(stopped, 30, "the holder's container to be stopped after the grace period")
    assert "access.revoke" in node.audit_types()
    again = node.container(owner, [gpu], [path])
    node.agent.enforce()
    assert "Operation not permitted" in node.opens(again, 0)


def test_host_access_follows_host_entries_and_escaped_processes_are_ended(
    node: Node, tmp_path: Path
) -> None:
    uid_hana, uid_ivan, uid_jo = (ensure_user(x) for x in ("ds01-hana", "ds01-ivan", "ds01-jo"))
    node.cluster.logins.update(
        {
            "ds01-hana": "hana@lab.example",
            "ds01-ivan": "ivan@lab.example",
            "ds01-jo": "jo@lab.example",
        }
    )
    gpu, private = node.gpu(6)
    path = node.public(private)
    # `command exec`: a failed redirection must not end the shell before it says so.
    script = f"if command exec 3<>{path}; then echo OPEN; exec sleep 600; else echo DENIED; fi"
    until = datetime.now(UTC) + timedelta(seconds=6)
    node.policy(
        hostAccess=[
            {
                "user": "ivan@lab.example",
                "linuxUser": "ds01-ivan",
                "deviceUUIDs": [gpu],
                "until": until.isoformat(),
                "source": {"kind": "GPUGrant", "name": "ivan-host", "namespace": "u-ds01-ivan"},
            }
        ]
    )
    hana_scope, ivan_scope = node.session(uid_hana), node.session(uid_ivan)
    node.agent.enforce()

    hana = node.run_as("ds01-hana", script, hana_scope, tmp_path / "hana.out")
    ivan = node.run_as("ds01-ivan", script, ivan_scope, tmp_path / "ivan.out")
    wait_until(
        lambda: (
            (tmp_path / "hana.out").read_text() != "" and (tmp_path / "ivan.out").read_text() != ""
        ),
        10,
        "both sessions to try the GPU",
    )
    assert (
        "DENIED" in (tmp_path / "hana.out").read_text()
        and "Operation not permitted" in (tmp_path / "hana.out").read_text()
    )
    assert (tmp_path / "ivan.out").read_text().startswith("OPEN")
    hana.wait(timeout=10)

    # A process of a user without access, outside any slice (cron, nohup): it can open,
    # but it is found and ended at once (never granted: no grace).
    escaped = node.run_as("ds01-jo", script, None, tmp_path / "jo.out")
    wait_until(
        lambda: (tmp_path / "jo.out").read_text().startswith("OPEN"),
        10,
        "the escaped process to open",
    )
    wait_until(
        lambda: node.agent.enforce() is not None and escaped.poll() is not None,
        30,
        "the escaped process to be ended",
    )
    assert "access.end_unentitled" in node.audit_types()

    # Ivan's entry expires: new opens fail, and his holder is ended after the grace period.
    wait_until(lambda: datetime.now(UTC) > until, 10, "the host entry to expire")
    node.agent.enforce()
    late = node.run_as("ds01-ivan", script, ivan_scope, tmp_path / "ivan-late.out")
    late.wait(timeout=10)
    assert "DENIED" in (tmp_path / "ivan-late.out").read_text()
    wait_until(
        lambda: node.agent.enforce() is not None and ivan.poll() is not None,
        30,
        "ivan's holder to be ended after expiry",
    )
    assert uid_jo != uid_ivan
