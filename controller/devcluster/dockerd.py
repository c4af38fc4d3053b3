"""A private Docker engine: Debian's dockerd with its own state, socket and image.

The agent tests and `ds01 dev up`'s simulated GPU node each start one. It
never touches the host's engine: its own data root, exec root, socket and pid
file, no iptables and no bridge (containers use `--network none`). There is
no image registry on the development machines, so the one image is built
locally: a root filesystem holding Debian's static busybox, imported with
`docker import`. Its default runtime is `ds01-runc` (as on a DS01 host, see
`controller.runtime.runcfront`), asking the agent that serves `runtime_dir`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import controller
from controller.devcluster.process import ManagedProcess, spawn, wait_until
from controller.runtime import runcfront

IMAGE = "ds01-busybox:local"
BUSYBOX_APPLETS = ("sh", "sleep", "cat", "ls", "echo", "head", "dd", "true", "id")
TOOLS = {"dockerd": "docker.io", "docker": "docker.io", "busybox": "busybox-static"}
"""The commands an engine needs, and the Debian package that brings each."""

SHUTDOWN_TIMEOUT_S = 5
"""What dockerd gives running containers after SIGTERM when it stops itself."""
STOP_GRACE_S = 60.0
"""How long a stop waits for dockerd before SIGKILL. Generous on purpose: dockerd
first stops its containers, then its containerd, which runs in a session of its
own and would outlive a killed dockerd (with every container shim under it)."""

Launcher = Callable[[list[str]], ManagedProcess]
"""Starts dockerd's argv; ``ds01 dev up`` passes one that records it with the cluster."""


def missing_tools() -> list[str]:
    """The commands of `TOOLS` that are not on PATH, each with its package."""
    return [f"{tool} ({package})" for tool, package in TOOLS.items() if not shutil.which(tool)]


def ping(path: Path) -> bool:
    """Whether an engine answers `GET /_ping` on the unix socket ``path``.

    Plain socket code rather than the agent's Docker client: the devcluster
    layer must not import the agent.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status_line = sock.recv(64).split(b"\r\n", 1)[0]
    except OSError:
        return False
    return status_line.split(b" ")[1:2] == [b"200"]


class Dockerd:
    """One private dockerd.

    ``root`` holds its data (images, containers) and log; ``run_dir`` its exec
    root, pid file and socket. They differ for `ds01 dev up`: unix socket paths
    are limited to 108 bytes and containerd's socket lives under the exec root,
    so that must be short wherever the state directory is.
    """

    def __init__(self, root: Path, run_dir: Path | None = None, *, wrapper: bool = True) -> None:
        self.root = root
        self.run_dir = run_dir or root
        self.socket = self.run_dir / "docker.sock"
        self.wrapper = wrapper
        """Run containers under `ds01-runc` by default (False: plain runc)."""
        self.process: ManagedProcess | None = None

    @property
    def runtime_dir(self) -> Path:
        """Where the wrapper asks the agent (`ds01 agent --runtime-dir`); short, for the socket."""
        return self.run_dir / "ds01-runtime"

    def _runtime_args(self) -> list[str]:
        """Register `ds01-runc` (its front written next to the socket) as the default runtime."""
        if not self.wrapper:
            return []
        runc = shutil.which("runc")
        if runc is None:
            raise RuntimeError("runc not found: install Debian's docker.io (.ci/run does)")
        front = self.run_dir / runcfront.NAME
        front.write_text(
            runcfront.front_script(
                python=sys.executable,
                package_root=str(Path(controller.__file__).resolve().parent.parent),
                runtime_dir=str(self.runtime_dir),
                runc=runc,
            )
        )
        front.chmod(0o755)
        return [f"--add-runtime={runcfront.NAME}={front}", f"--default-runtime={runcfront.NAME}"]

    @property
    def host(self) -> str:
        """The engine's address for `docker -H` and DOCKER_HOST."""
        return f"unix://{self.socket}"

    def argv(self) -> list[str]:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise RuntimeError("dockerd not found: install Debian's docker.io (.ci/run does)")
        return [
            dockerd,
            f"--data-root={self.root / 'data'}",
            f"--exec-root={self.run_dir / 'exec'}",
            f"--host={self.host}",
            f"--pidfile={self.run_dir / 'docker.pid'}",
            f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}",
            "--iptables=false",
            "--bridge=none",
            "--log-level=warn",
            *self._runtime_args(),
        ]

    def start(self, launch: Launcher | None = None, deadline_s: float = 60) -> ManagedProcess:
        """Start dockerd, wait until it answers, and make sure `IMAGE` is there."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        argv = self.argv()
        process = (
            launch(argv)
            if launch is not None
            else spawn("dockerd", argv, self.root / "dockerd.log", stop_grace_s=STOP_GRACE_S)
        )
        self.process = process

        def answers() -> bool:
            if not process.alive():
                raise RuntimeError(f"dockerd exited during start-up:\n{process.log_tail()}")
            return ping(self.socket)

        wait_until(answers, deadline_s, "dockerd to answer on its socket")
        self._ensure_image()
        return process

    def stop(self) -> None:
        """Remove every container, then stop dockerd (tests: nothing survives a session)."""
        if self.process is None:
            return
        ids = subprocess.run(
            self.docker_command("ps", "-aq"), capture_output=True, text=True, check=False
        ).stdout.split()
        if ids:
            subprocess.run(self.docker_command("rm", "-f", *ids), capture_output=True, check=False)
        self.process.stop()

    def docker_command(self, *args: str) -> list[str]:
        return ["docker", f"--host={self.host}", *args]

    def docker(self, *args: str) -> str:
        """Run the docker CLI against this engine; its stdout."""
        result = subprocess.run(
            self.docker_command(*args), capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout.strip()

    def load(self, archive: Path, name: str) -> None:
        """`docker load` a docker-archive unless ``name`` is there with the same contents.

        The archive's file name carries its content key (`devcluster.image`), recorded
        beside the data root, so a changed image replaces the old one under its tag.
        """
        stamp = self.root / f".loaded-{name.replace('/', '_').replace(':', '_')}"
        inspect = subprocess.run(
            self.docker_command("image", "inspect", name), capture_output=True, check=False
        )
        if inspect.returncode == 0 and stamp.exists() and stamp.read_text() == archive.name:
            return
        self.docker("load", "--quiet", "--input", str(archive))
        stamp.write_text(archive.name)

    def _ensure_image(self) -> None:
        """Import `IMAGE` unless a kept data root (`ds01 dev up` again) already has it."""
        inspect = subprocess.run(
            self.docker_command("image", "inspect", IMAGE), capture_output=True, check=False
        )
        if inspect.returncode == 0:
            return
        busybox = shutil.which("busybox")
        if busybox is None:
            raise RuntimeError("busybox not found: install Debian's busybox-static (.ci/run does)")
        rootfs = self.root / "rootfs"
        (rootfs / "bin").mkdir(parents=True, exist_ok=True)
        shutil.copy(busybox, rootfs / "bin" / "busybox")
        for applet in BUSYBOX_APPLETS:
            link = rootfs / "bin" / applet
            if not link.is_symlink():
                link.symlink_to("busybox")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            self.docker_command("import", "-", IMAGE),
            stdin=tar.stdout,
            check=True,
            capture_output=True,
        )
        tar.wait()
