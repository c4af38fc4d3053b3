"""A real Docker engine for the agent tests: Debian's dockerd with its own state.

It runs with its own data root, exec root and socket (never the host's), no
iptables and no bridge; containers use `--network none`. There is no image
registry here, so the image is built locally: a root filesystem holding
Debian's static busybox, imported with `docker import`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.agent.docker import DockerClient
from controller.devcluster.process import ManagedProcess, spawn, wait_until

IMAGE = "ds01-busybox:local"
BUSYBOX_APPLETS = ("sh", "sleep", "cat", "ls", "echo", "head", "dd", "true", "id")


class DockerEngine:
    """One dockerd, started and stopped by the tests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.process: ManagedProcess | None = None
        self.client = DockerClient(str(self.socket))

    def start(self) -> None:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise RuntimeError("dockerd not found: install Debian's docker.io (.ci/run does)")
        self.process = spawn(
            "dockerd",
            [
                dockerd,
                f"--data-root={self.root / 'data'}",
                f"--exec-root={self.root / 'exec'}",
                f"--host=unix://{self.socket}",
                f"--pidfile={self.root / 'docker.pid'}",
                "--iptables=false",
                "--bridge=none",
                "--log-level=warn",
            ],
            self.root / "dockerd.log",
        )
        wait_until(self.client.ping, 60, "dockerd to answer on its socket")
        self._import_busybox()

    def stop(self) -> None:
        if self.process is None:
            return
        ids = subprocess.run(
            self.docker_command("ps", "-aq"), capture_output=True, text=True, check=False
        ).stdout.split()
        if ids:
            subprocess.run(self.docker_command("rm", "-f", *ids), capture_output=True, check=False)
        self.process.stop(grace_s=30)

    def docker_command(self, *args: str) -> list[str]:
        return ["docker", f"--host=unix://{self.socket}", *args]

    def docker(self, *args: str) -> str:
        """Run the docker CLI against this engine; its stdout."""
        result = subprocess.run(
            self.docker_command(*args), capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout.strip()

    def _import_busybox(self) -> None:
        busybox = shutil.which("busybox")
        if busybox is None:
            raise RuntimeError("busybox not found: install Debian's busybox-static (.ci/run does)")
        rootfs = self.root / "rootfs"
        (rootfs / "bin").mkdir(parents=True, exist_ok=True)
        shutil.copy(busybox, rootfs / "bin" / "busybox")
        for applet in BUSYBOX_APPLETS:
            link = rootfs / "bin" / applet
            if not link.exists():
                link.symlink_to("busybox")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            self.docker_command("import", "-", IMAGE),
            stdin=tar.stdout,
            check=True,
            capture_output=True,
        )
        tar.wait()


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    # A short path: unix socket paths are limited to 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="ds01-dk-", dir="/tmp"))
    engine = DockerEngine(root)
    try:
        engine.start()
        yield engine
    finally:
        engine.stop()
        if os.environ.get("DS01_KEEP_TEST_STATE") != "1":
            subprocess.run(["rm", "-rf", str(root)], check=False)
