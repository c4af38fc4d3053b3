"""Per-container resources and the container count, from the caller's effective policy.

A GPURateLimit naming Amy sets her defaults and maxima; the gateway fills the
defaults into her creates, refuses asks above the maxima (and updates that
would lift them), and counts her containers, stopped ones too, against
`rates.maxWorkloads`, under a lock so concurrent creates cannot overshoot.
"""

from __future__ import annotations

import threading
from typing import Any

from controller.devcluster.process import wait_until
from tests.agent.gatewayhost import ACCOUNTS, AMY, BEN, IMAGE, GatewayHost, Reply, request

MI = 2**20
RUN = ("run", "-d", "--network", "none")


def _amy(spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "amy", {"subjects": [{"kind": "User", "name": ACCOUNTS[AMY]}], **spec}


SMALL = {
    "resources": {
        "perWorkload": {
            "cpu": {"default": 1, "max": 2},
            "memory": {"default": "256Mi", "max": "512Mi"},
            "shm": {"default": "64Mi", "max": "128Mi"},
            "pids": {"default": 100, "max": 200},
        }
    }
}


def test_defaults_of_the_callers_policy_are_applied(gateway: GatewayHost) -> None:
    gateway.limits(_amy(SMALL))
    amy = gateway.ok(AMY, *RUN, IMAGE, "sleep", "600")
    host = gateway.inspect(amy)["HostConfig"]
    assert host["NanoCpus"] == 10**9
    assert host["Memory"] == host["MemorySwap"] == 256 * MI
    assert host["ShmSize"] == 64 * MI
    assert host["PidsLimit"] == 100
    # The limit is the kernel's, not just a number in the config: /dev/shm's size.
    shm = gateway.ok(AMY, "exec", amy, "busybox", "df", "-k", "/dev/shm").splitlines()[-1].split()
    assert int(shm[1]) == 64 * 1024

    # Ben is not named by that limit: the built-in defaults.
    ben = gateway.inspect(gateway.ok(BEN, *RUN, IMAGE, "sleep", "600"))["HostConfig"]
    assert ben["Memory"] == 16 * 2**30 and ben["PidsLimit"] == 4096


def test_asks_within_the_maxima_are_kept(gateway: GatewayHost) -> None:
    gateway.limits(_amy(SMALL))
    container = gateway.ok(
        AMY,
        *RUN,
        "--cpus",
        "1.5",
        "--memory",
        "512m",
        "--shm-size",
        "128m",
        "--pids-limit",
        "200",
        IMAGE,
        "sleep",
        "600",
    )
    host = gateway.inspect(container)["HostConfig"]
    assert host["NanoCpus"] == 15 * 10**8
    assert host["Memory"] == host["MemorySwap"] == 512 * MI
    assert host["ShmSize"] == 128 * MI and host["PidsLimit"] == 200


def test_asks_above_the_maxima_are_refused_naming_the_flag(gateway: GatewayHost) -> None:
    gateway.limits(_amy(SMALL))
    before = gateway.containers()
    for flag, value in (
        ("--cpus", "3"),
        ("--memory", "1g"),
        ("--shm-size", "1g"),
        ("--pids-limit", "1000"),
    ):
        error = gateway.refused(AMY, *RUN, flag, value, IMAGE, "true")
        assert "Error response from daemon" in error and flag in error, (flag, error)
        assert "above your maximum" in error and "amy" in error  # names the limit that set it
    error = gateway.refused(AMY, *RUN, "--memory", "256m", "--memory-swap", "1g", IMAGE, "true")
    assert "--memory-swap" in error
    assert gateway.containers() == before


def test_updates_may_not_lift_the_limits(gateway: GatewayHost) -> None:
    gateway.limits(_amy(SMALL))
    container = gateway.ok(AMY, *RUN, IMAGE, "sleep", "600")
    for args in (
        ("--cpus", "4"),
        ("--memory", "1g", "--memory-swap", "1g"),
        ("--pids-limit", "-1"),
    ):
        error = gateway.refused(AMY, "update", *args, container)
        assert args[0] in error, (args, error)
    gateway.ok(AMY, "update", "--pids-limit", "150", container)
    host = gateway.inspect(container)["HostConfig"]
    assert host["PidsLimit"] == 150 and host["NanoCpus"] == 10**9


def test_stopped_containers_count_against_the_container_limit(gateway: GatewayHost) -> None:
    gateway.limits(_amy({"rates": {"maxWorkloads": 2}}))
    created = gateway.ok(AMY, "create", "--network", "none", IMAGE, "true")
    exited = gateway.ok(AMY, *RUN, IMAGE, "true")
    wait_until(
        lambda: gateway.inspect(exited)["State"]["Status"] == "exited", 60, "the container to exit"
    )
    before = gateway.containers()
    error = gateway.refused(AMY, *RUN, IMAGE, "true")
    assert "stopped ones count too" in error and "may have 2" in error
    assert gateway.containers() == before
    assert [r["details"]["option"] for r in gateway.audit_records("quota.max_workloads")] == [
        "create"
    ]
    # Someone else's containers are not Amy's; Ben has his own (default) limit.
    gateway.ok(BEN, *RUN, IMAGE, "true")
    # Removing one of hers makes room again.
    gateway.ok(AMY, "rm", created)
    gateway.ok(AMY, *RUN, IMAGE, "true")


def test_concurrent_creates_never_overshoot_the_container_limit(gateway: GatewayHost) -> None:
    gateway.limits(_amy({"rates": {"maxWorkloads": 3}}))
    sockets = gateway.connect(AMY, 8)
    replies: list[Reply] = []
    lock = threading.Lock()

    def create(index: int) -> None:
        with sockets[index] as sock:
            reply = request(
                sock,
                "POST",
                f"/v1.41/containers/create?name=race-{index}",
                {"Image": IMAGE, "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}},
            )
        with lock:
            replies.append(reply)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    statuses = sorted(r.status for r in replies)
    assert statuses == [201] * 3 + [409] * 5, [(r.status, r.body[:200]) for r in replies]
    assert sum(gateway.exists(f"race-{i}") for i in range(8)) == 3
