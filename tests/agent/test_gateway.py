"""The Docker gateway: ownership, forged labels, who sees and touches what.

Real dockerd behind the gateway, real Linux users running the docker CLI (or
raw API requests on sockets they connected), fake GPUs on openable devices.
"""

from __future__ import annotations

import os

from controller.agent.trust import verify
from controller.api import names
from tests.agent.enforcehost import KEY
from tests.agent.gatewayhost import (
    ACCOUNTS,
    AMY,
    BEN,
    CAT,
    IMAGE,
    ROOT,
    GatewayHost,
)

RUN = ("run", "-d", "--network", "none")


def test_forged_owner_labels_are_overwritten_and_signed(gateway: GatewayHost) -> None:
    name = gateway.ok(
        AMY,
        "create",
        "--network",
        "none",
        "--name",
        "amy-forged",
        "--label",
        f"{names.OWNER}={ACCOUNTS[BEN]}",
        "--label",
        f"{names.DEVICES}=GPU-00000000-0000-0000-0000-000000000000",
        "--label",
        f"{names.SIGNATURE}=deadbeef",
        "--label",
        "gpu.ds01.io/workload-type=job",
        "--label",
        "team=vision",
        IMAGE,
        "true",
    )
    labels = gateway.inspect(name)["Config"]["Labels"]
    stamp = verify(KEY, "amy-forged", labels)
    assert stamp is not None and stamp.owner == ACCOUNTS[AMY] and stamp.devices == ()
    assert labels["gpu.ds01.io/workload-type"] == "docker"
    assert labels["team"] == "vision"
    assert labels[names.SIGNATURE] != "deadbeef"


def test_a_container_without_a_name_gets_one_that_its_signature_binds(
    gateway: GatewayHost,
) -> None:
    container = gateway.ok(AMY, *RUN, IMAGE, "sleep", "600")
    data = gateway.inspect(container)
    name = data["Name"].lstrip("/")
    assert name.startswith("amy-lab.example-")
    assert verify(KEY, name, data["Config"]["Labels"]) is not None


def test_users_see_and_touch_only_their_own_containers(gateway: GatewayHost) -> None:
    amy = gateway.ok(AMY, *RUN, "--name", "amy-box", IMAGE, "sleep", "600")
    ben = gateway.ok(BEN, *RUN, "--name", "ben-box", IMAGE, "sleep", "600")

    listed = gateway.ok(AMY, "ps", "-a", "--no-trunc", "--format", "{{.ID}}").split()
    assert amy in listed and ben not in listed
    for args in (
        ("inspect", "ben-box"),
        ("logs", "ben-box"),
        ("exec", "ben-box", "true"),
        ("stop", "-t", "0", "ben-box"),
        ("rm", "-f", "ben-box"),
        ("kill", ben[:12]),
        ("commit", "ben-box", "stolen:latest"),
        ("cp", "ben-box:/bin/sh", "/tmp/stolen"),
    ):
        error = gateway.refused(AMY, *args)
        assert "is not yours" in error, (args, error)
    assert gateway.inspect(ben)["State"]["Running"]
    assert len(gateway.audit_records("auth.denied")) == 8

    # Admins pass through unchanged: they see everything and may remove anything.
    everything = gateway.ok(ROOT, "ps", "-a", "--no-trunc", "--format", "{{.ID}}").split()
    assert {amy, ben} <= set(everything)
    gateway.ok(ROOT, "rm", "-f", "ben-box")
    assert not gateway.exists(ben)
    gateway.ok(AMY, "rm", "-f", "amy-box")
    assert not gateway.exists(amy)


def test_rename_is_refused_because_the_signature_binds_the_name(gateway: GatewayHost) -> None:
    gateway.ok(AMY, "create", "--network", "none", "--name", "keep-me", IMAGE, "true")
    error = gateway.refused(AMY, "rename", "keep-me", "other")
    assert "rename" in error and "signed" in error
    assert gateway.exists("keep-me") and not gateway.exists("other")


def test_unknown_users_get_the_default_policy_as_their_login(gateway: GatewayHost) -> None:
    container = gateway.ok(CAT, *RUN, IMAGE, "sleep", "600")
    data = gateway.inspect(container)
    stamp = verify(KEY, data["Name"].lstrip("/"), data["Config"]["Labels"])
    assert stamp is not None and stamp.owner == CAT
    host = data["HostConfig"]
    assert host["NanoCpus"] == min(4, len(os.sched_getaffinity(0))) * 10**9  # default: 4 CPUs
    assert host["Memory"] == host["MemorySwap"] == 16 * 2**30
    assert host["ShmSize"] == 8 * 2**30 and host["PidsLimit"] == 4096
