"""The Docker host's engine settings (`deploy/docker-host/daemon.json`) as Debian's dockerd reads them.

A key dockerd does not know stops it from starting, so the file a lab installs
is started here for real: it must be accepted, make `ds01-runc` the default
runtime, and keep BuildKit's host-network and insecure entitlements off.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from controller.devcluster.dockerd import ping
from controller.devcluster.process import spawn, wait_until

DAEMON_JSON = Path(__file__).resolve().parents[2] / "deploy" / "docker-host" / "daemon.json"


def test_the_shipped_daemon_json_is_accepted_and_sets_the_runtime_and_entitlements() -> None:
    settings = json.loads(DAEMON_JSON.read_text())
    assert settings["builder"]["Entitlements"] == {
        "network-host": False,
        "security-insecure": False,
    }
    root = Path(tempfile.mkdtemp(prefix="ds01-dj-", dir="/tmp"))
    try:
        socket = root / "d.sock"
        dockerd = shutil.which("dockerd")
        assert dockerd is not None, "dockerd (docker.io) is needed"
        process = spawn(
            "dockerd",
            [
                dockerd,
                f"--config-file={DAEMON_JSON}",
                f"--data-root={root / 'data'}",
                f"--exec-root={root / 'exec'}",
                f"--host=unix://{socket}",
                f"--pidfile={root / 'd.pid'}",
                "--iptables=false",
                "--bridge=none",
            ],
            root / "dockerd.log",
            stop_grace_s=30,
        )
        try:

            def answers() -> bool:
                assert process.alive(), process.log_tail()
                return ping(socket)

            wait_until(answers, 60, "dockerd with the shipped daemon.json to answer")
            info = subprocess.run(
                ["docker", f"--host=unix://{socket}", "info", "--format", "{{json .}}"],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            )
            details = json.loads(info.stdout)
            assert details["DefaultRuntime"] == "ds01-runc"
            assert "ds01-runc" in details["Runtimes"]
        finally:
            process.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
