"""Other users' volumes, networks and containers; devices judged again at start; small holes.

Volumes and networks carry their creator as owner (containers carry signed
labels): a user sees, uses, connects, prunes and removes only their own.
Devices come from the admins' list only, are passed on resolved, and are
judged again at every start, since dockerd resolves the path again then.
Real dockerd behind the gateway, real Linux users.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.agent.gateway.core import Recorder
from controller.agent.gateway.service import in_container
from controller.runtime.audit import AuditLog, read_records
from tests.agent.engine import DockerEngine
from tests.agent.fakehost import FakeHost
from tests.agent.gatewayhost import AMY, BEN, IMAGE, GatewayHost, serve

RUN = ("run", "-d", "--network", "none")


def _names(text: str) -> set[str]:
    return set(text.split())


def test_another_user_s_volume_is_not_yours_to_use_see_or_remove(gateway: GatewayHost) -> None:
    gateway.ok(BEN, "volume", "create", "benvol")
    assert "benvol" in _names(gateway.ok(BEN, "volume", "ls", "-q"))
    assert "benvol" not in _names(gateway.ok(AMY, "volume", "ls", "-q"))
    for args in (
        ("volume", "rm", "benvol"),
        ("volume", "inspect", "benvol"),
        ("volume", "create", "benvol"),
        (*RUN, "-v", "benvol:/data", IMAGE, "true"),
        (*RUN, "--mount", "type=volume,source=benvol,target=/d", IMAGE, "true"),
    ):
        error = gateway.refused(AMY, *args)
        assert "not yours" in error, (args, error)
    gateway.ok(AMY, "volume", "prune", "-f")
    assert "benvol" in _names(gateway.engine.docker("volume", "ls", "-q"))
    # Her own named volume, created on first use, is hers to remove.
    box = gateway.ok(AMY, *RUN, "-v", "amyvol:/data", IMAGE, "true")
    assert "amyvol" in _names(gateway.ok(AMY, "volume", "ls", "-q"))
    gateway.ok(AMY, "rm", "-f", box)
    gateway.ok(AMY, "volume", "rm", "amyvol")


def test_another_user_s_network_is_not_yours_to_join_see_or_remove(gateway: GatewayHost) -> None:
    gateway.ok(BEN, "network", "create", "bennet")
    ben_box = gateway.ok(BEN, *RUN, IMAGE, "sleep", "600")
    gateway.ok(AMY, "network", "create", "amynet")
    amy_box = gateway.ok(AMY, *RUN, IMAGE, "sleep", "600")
    listed = _names(gateway.ok(AMY, "network", "ls", "--format", "{{.Name}}"))
    assert "amynet" in listed and "bennet" not in listed
    for args in (
        ("network", "rm", "bennet"),
        ("network", "inspect", "bennet"),
        ("network", "connect", "bennet", amy_box),
        ("network", "connect", "amynet", ben_box),
        ("network", "disconnect", "amynet", ben_box),
        ("run", "-d", "--network", "bennet", IMAGE, "true"),
    ):
        error = gateway.refused(AMY, *args)
        assert "not yours" in error, (args, error)
    joined = gateway.ok(AMY, "run", "-d", "--network", "amynet", IMAGE, "sleep", "600")
    assert "amynet" in gateway.inspect(joined)["NetworkSettings"]["Networks"]
    gateway.ok(AMY, "rm", "-f", joined)
    gateway.ok(AMY, "network", "prune", "-f")
    assert "bennet" in _names(gateway.engine.docker("network", "ls", "--format", "{{.Name}}"))
    # The engine's own `none` network is shared, and shows none of Ben's containers.
    shared = json.loads(gateway.ok(AMY, "network", "inspect", "none"))[0]
    assert shared["Containers"] == {}


def test_listings_and_events_show_only_the_caller_s_objects(gateway: GatewayHost) -> None:
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    gateway.ok(BEN, "volume", "create", "benvol2")
    ben_box = gateway.ok(BEN, *RUN, IMAGE, "true")
    gateway.ok(AMY, "volume", "create", "amyvol2")
    df = json.loads(gateway.ok(AMY, "system", "df", "-v", "--format", "{{json .}}"))
    containers = {c.get("ID", c.get("Id", ""))[:12] for c in df.get("Containers") or ()}
    volumes = {v.get("Name") for v in df.get("Volumes") or ()}
    assert ben_box[:12] not in containers
    assert "benvol2" not in volumes and "amyvol2" in volumes
    until = (datetime.now(UTC) + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S")
    events = gateway.ok(
        AMY,
        "events",
        "--since",
        since,
        "--until",
        until,
        "--format",
        "{{.Type}} {{.Actor.ID}}",
    )
    assert "volume amyvol2" in events
    assert "benvol2" not in events and ben_box not in events


@pytest.fixture
def allowed_device() -> Iterator[Path]:
    """A device node like /dev/full in a root-owned directory nobody else can write."""
    directory = Path(tempfile.mkdtemp(prefix="ds01gw-dev-", dir="/run"))
    directory.chmod(0o755)
    node = directory / "full"
    os.mknod(node, stat.S_IFCHR | 0o666, os.stat("/dev/full").st_rdev)
    yield node
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def device_gateway(
    fake_host: FakeHost, docker_engine: DockerEngine, tmp_path: Path, allowed_device: Path
) -> Iterator[GatewayHost]:
    writable = Path(tempfile.mkdtemp(prefix="ds01gw-wdev-", dir="/tmp"))
    os.mknod(writable / "full", stat.S_IFCHR | 0o666, os.stat("/dev/full").st_rdev)
    with serve(
        fake_host,
        docker_engine,
        tmp_path,
        gateway_devices=(str(allowed_device), str(writable / "full")),
    ) as host:
        host.refresh()
        host.policy()
        host.writable_device = writable / "full"  # type: ignore[attr-defined]
        yield host
    shutil.rmtree(writable, ignore_errors=True)


def test_devices_come_only_from_the_admins_list_resolved_and_safe(
    device_gateway: GatewayHost, allowed_device: Path
) -> None:
    host = device_gateway
    error = host.refused(AMY, "create", "--network", "none", "--device", "/dev/full", IMAGE, "true")
    assert "only devices the admins allow" in error
    error = host.refused(
        AMY,
        "create",
        "--network",
        "none",
        "--device",
        f"{host.writable_device}:/dev/x",
        IMAGE,
        "true",  # type: ignore[attr-defined]
    )
    assert "users can change" in error
    link = host.home(AMY) / "mydev"
    link.symlink_to(allowed_device)
    name = host.ok(AMY, "create", "--network", "none", "--device", f"{link}:/dev/x", IMAGE, "true")
    mapped = host.inspect(name)["HostConfig"]["Devices"]
    assert [d["PathOnHost"] for d in mapped] == [str(allowed_device)]
    directory = host.home(AMY) / "devdir"
    directory.mkdir()
    error = host.refused(
        AMY, "create", "--network", "none", "--device", str(directory), IMAGE, "true"
    )
    assert "only devices the admins allow" in error


def test_a_device_swapped_after_create_is_refused_at_start(
    device_gateway: GatewayHost, allowed_device: Path
) -> None:
    """dockerd resolves device paths again at every start; the gateway judges them again."""
    host = device_gateway
    name = host.ok(
        AMY,
        "create",
        "--network",
        "none",
        "--device",
        f"{allowed_device}:/dev/x",
        IMAGE,
        "sleep",
        "60",
    )
    allowed_device.unlink()
    allowed_device.symlink_to("/dev")  # what an attacker with a writable path would do
    error = host.refused(AMY, "start", name)
    assert "cannot start" in error
    assert host.inspect(name)["State"]["Running"] is False
    refusals = [r for r in host.audit_records() if r["details"].get("option") == "start"]
    assert [r["details"]["container"] for r in refusals] == [host.inspect(name)["Name"][1:]]


def test_exec_as_root_group_over_host_paths_is_refused(gateway: GatewayHost) -> None:
    uid = pwd.getpwnam(AMY).pw_uid
    box = gateway.ok(AMY, *RUN, "-v", f"{gateway.home(AMY)}:/h", IMAGE, "sleep", "600")
    error = gateway.refused(AMY, "exec", "--user", f"{uid}:0", box, "id")
    assert "--user" in error
    assert gateway.ok(AMY, "exec", "--user", str(uid), box, "id", "-g") == str(
        pwd.getpwnam(AMY).pw_gid
    )


def test_low_host_ports_are_reserved_for_the_system(gateway: GatewayHost) -> None:
    error = gateway.refused(AMY, "create", "-p", "80:80", IMAGE, "true")
    assert "below 1024" in error


def test_a_caller_whose_process_is_gone_is_not_taken_for_a_host_process() -> None:
    done = subprocess.Popen(["true"])
    done.wait()
    assert in_container(done.pid, None) is True
    assert in_container(os.getpid(), None) is False


def test_a_refusal_is_on_record_before_its_answer(gateway: GatewayHost) -> None:
    reply = gateway.api(
        AMY,
        "POST",
        "/v1.41/containers/create?name=noted",
        {"Image": IMAGE, "Cmd": ["true"], "HostConfig": {"Privileged": True}},
    )
    assert reply.status == 403
    # Read straight from the file, without waiting for anything queued.
    records = [r for r in read_records(gateway.audit) if r["details"].get("container") == "noted"]
    assert [r["event_type"] for r in records] == ["container.refused"]


def test_records_are_never_dropped_when_events_back_up(tmp_path: Path) -> None:
    """Events wait on the apiserver; a full queue drops Events (counted), never audit records."""
    audit = AuditLog(tmp_path / "audit.jsonl", source="test")
    stuck = threading.Event()

    def post(*_: object) -> None:
        stuck.wait(30)

    def write(event_type: str, user: str | None, message: str, details: dict[str, object]) -> None:
        audit.write(event_type, user or "unknown", {"message": message, **details})

    recorder = Recorder(write, post, size=2)

    async def refuse_many() -> None:
        for index in range(50):
            await recorder.record("container.refused", "amy", f"no {index}", {"index": index})

    asyncio.run(refuse_many())
    assert [r["details"]["index"] for r in read_records(tmp_path / "audit.jsonl")] == list(
        range(50)
    )
    assert recorder.dropped >= 47
    stuck.set()
    recorder.close()
