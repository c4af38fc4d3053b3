"""The Docker gateway refuses, at create, every option that would escape control.

Each refusal comes back in Docker's error format (a 4xx status and JSON
`{"message": ...}`), so the docker CLI prints it as the daemon's error, and
the message names the option at fault. Nothing is created, and each refusal
is an audit record. Real dockerd behind the gateway, real Linux users.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.agent.gatewayhost import AMY, IMAGE, GatewayHost

Args = Callable[[GatewayHost], list[str]]


def _gpu(host: GatewayHost) -> str:
    inventory = host.agent.inventory
    assert inventory is not None
    whole = next(s for s in inventory.slots() if s.mig is None)
    return whole.devices[0].path


def _control(name: str) -> Args:
    def args(host: GatewayHost) -> list[str]:
        inventory = host.agent.inventory
        assert inventory is not None
        path = next(n.path for n in inventory.control if Path(n.path).name == name)
        return ["--device", f"{path}:/dev/{name}"]

    return args


def _mig_cap(host: GatewayHost) -> list[str]:
    inventory = host.agent.inventory
    assert inventory is not None
    mig = next(s for s in inventory.slots() if s.mig is not None)
    cap = mig.devices[-1].path
    assert "nvidia-caps" in cap
    return ["--device", f"{cap}:/dev/cap"]


def _gpu_renamed(host: GatewayHost) -> list[str]:
    """A copy of a GPU's device node under an innocent name: caught by its numbers."""
    directory = Path(tempfile.mkdtemp(prefix="ds01-gwdev-", dir=host.run_dir))
    directory.chmod(0o755)
    copy = directory / "fuse-copy"
    os.mknod(copy, stat.S_IFCHR | 0o666, os.stat(_gpu(host)).st_rdev)
    return ["--device", f"{copy}:/dev/mine"]


CASES: list[tuple[str, Args, str]] = [
    ("privileged", lambda h: ["--privileged"], "--privileged"),
    ("cap-sys-admin", lambda h: ["--cap-add", "SYS_ADMIN"], "--cap-add"),
    ("cap-sys-admin-prefixed", lambda h: ["--cap-add", "CAP_SYS_ADMIN"], "--cap-add"),
    ("cap-all", lambda h: ["--cap-add", "ALL"], "--cap-add"),
    ("cap-net-admin", lambda h: ["--cap-add", "NET_ADMIN"], "--cap-add"),
    ("cap-sys-ptrace", lambda h: ["--cap-add", "SYS_PTRACE"], "--cap-add"),
    ("cgroup-parent", lambda h: ["--cgroup-parent", "/escape.slice"], "--cgroup-parent"),
    ("gpu-device", lambda h: ["--device", f"{_gpu(h)}:/dev/nvidia0"], "--device"),
    ("gpu-device-renamed", _gpu_renamed, "--device"),
    ("control-device", _control("nvidiactl"), "--device"),
    ("uvm-device", _control("nvidia-uvm"), "--device"),
    ("mig-caps-device", _mig_cap, "--device"),
    ("nvidia-visible-devices", lambda h: ["-e", "NVIDIA_VISIBLE_DEVICES=all"], "--env"),
    ("nvidia-driver-capabilities", lambda h: ["-e", "NVIDIA_DRIVER_CAPABILITIES=all"], "--env"),
    ("runtime-nvidia", lambda h: ["--runtime", "nvidia"], "--runtime"),
    ("mount-dev", lambda h: ["-v", "/dev:/hostdev"], "--volume"),
    ("mount-dev-subpath", lambda h: ["-v", "/dev/shm:/x"], "--volume"),
    ("mount-cgroupfs", lambda h: ["-v", "/sys/fs/cgroup:/cg"], "--volume"),
    (
        "mount-engine-socket",
        lambda h: ["-v", f"{h.engine.socket}:/var/run/docker.sock"],
        "--volume",
    ),
    ("mount-root", lambda h: ["-v", "/:/host"], "--volume"),
    (
        "mount-flag-dev",
        lambda h: ["--mount", "type=bind,source=/dev,target=/d"],
        "--mount",
    ),
]


@pytest.mark.parametrize(
    ("args", "option"), [(a, o) for _, a, o in CASES], ids=[c[0] for c in CASES]
)
def test_escaping_options_are_refused_naming_the_option(
    gateway: GatewayHost, args: Args, option: str
) -> None:
    before = gateway.containers()
    extra = args(gateway)
    result = gateway.docker(AMY, "create", "--network", "none", *extra, IMAGE, "true")
    error = result.stderr.decode()
    assert result.returncode != 0, extra
    # The CLI printing "Error response from daemon: <message>" means the gateway
    # answered with a 4xx and Docker's JSON error body.
    assert "Error response from daemon" in error, error
    assert option in error, (option, error)
    assert gateway.containers() == before
    records = [
        r for r in gateway.audit_records() if r["event_type"] in ("container.refused", "gpu.reject")
    ]
    assert [r["details"]["option"] for r in records] == [option]
    assert records[0]["user"] == "amy@lab.example"


def test_a_refusal_is_a_docker_error_on_the_raw_api(gateway: GatewayHost) -> None:
    reply = gateway.api(
        AMY,
        "POST",
        "/v1.41/containers/create?name=raw-priv",
        {"Image": IMAGE, "Cmd": ["true"], "HostConfig": {"Privileged": True}},
    )
    assert reply.status == 403
    assert reply.headers["content-type"] == "application/json"
    assert set(reply.json()) == {"message"}
    assert "--privileged" in reply.message
    assert not gateway.exists("raw-priv")


def test_a_capability_on_the_allow_list_is_allowed(gateway: GatewayHost) -> None:
    """The refusals are aimed: a create with an allowed capability (SYS_NICE) goes through."""
    name = gateway.ok(AMY, "create", "--network", "none", "--cap-add", "SYS_NICE", IMAGE, "true")
    assert gateway.inspect(name)["HostConfig"]["CapAdd"] in (["SYS_NICE"], ["CAP_SYS_NICE"])
