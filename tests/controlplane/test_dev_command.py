"""`ds01 dev up|down|kubeconfig`, the README's first command, run as a newcomer would."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from controller.devcluster.binaries import planned
from controller.devcluster.process import wait_until

DS01 = [sys.executable, "-m", "controller.cli.main"]


def run(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DS01_DEV_DIR": str(workdir)}
    return subprocess.run(
        [*DS01, "dev", *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def kubectl(kubeconfig: str, *args: str) -> str:
    return subprocess.run(
        [str(planned().kubectl), "--kubeconfig", kubeconfig, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def recorded_pids(workdir: Path) -> list[int]:
    return [int(r["pid"]) for r in json.loads((workdir / "pids.json").read_text())]


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie whose parent has already exited."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def test_up_detached_then_kubeconfig_then_down(tmp_path: Path) -> None:
    up = run(tmp_path, "up", "--detach")
    pids = recorded_pids(tmp_path) if (tmp_path / "pids.json").exists() else []
    try:
        assert up.returncode == 0, up.stderr
        kubeconfig = re.search(r"export KUBECONFIG=(\S+)", up.stdout)
        assert kubeconfig, up.stdout
        assert f"Kubernetes {planned().kubernetes_version}" in up.stdout
        assert len(pids) == 4  # etcd, kube-apiserver, kube-controller-manager, operator
        grants = kubectl(kubeconfig.group(1), "get", "gpugrants", "-A", "-o", "name")
        assert "gpugrant.gpu.ds01.io/neurips-deadline" in grants

        # A newcomer sees the operator at work on the samples: the researcher's Host grant
        # is auto-approved and active on the simulated node, the student's waits.
        def states() -> dict[str, str]:
            listing = json.loads(
                kubectl(kubeconfig.group(1), "get", "gpugrants", "-A", "-o", "json")
            )
            return {
                g["metadata"]["name"]: g.get("status", {}).get("state", "")
                for g in listing["items"]
            }

        wait_until(
            lambda: states() == {"neurips-deadline": "Pending", "nsight-profiling": "Active"},
            60,
            "the operator to decide the sample grants",
        )
        again = run(tmp_path, "up", "--detach")
        assert again.returncode == 1 and "already running" in again.stderr

        minted = run(tmp_path, "kubeconfig", "--user", "248835@lab.example", "--group", "student")
        assert minted.returncode == 0, minted.stderr
        student = re.search(r"export KUBECONFIG=(\S+)", minted.stdout)
        assert student
        whoami = kubectl(student.group(1), "auth", "whoami", "-o", "json")
        user = json.loads(whoami)["status"]["userInfo"]
        assert user["username"] == "248835@lab.example"
        assert "student" in user["groups"]
    finally:
        down = run(tmp_path, "down")
    assert down.returncode == 0 and "stopped 4" in down.stdout
    assert all(gone(pid) for pid in pids)
    assert not (tmp_path / "pids.json").exists()
    assert "nothing running" in run(tmp_path, "down").stdout


def test_up_in_the_foreground_stops_everything_on_interrupt(tmp_path: Path) -> None:
    env = {**os.environ, "DS01_DEV_DIR": str(tmp_path)}
    process = subprocess.Popen(
        [*DS01, "dev", "up", "--no-samples"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line)
            if line.startswith("running;"):
                break
        assert seen and seen[-1].startswith("running;"), "".join(seen)
        pids = recorded_pids(tmp_path)
        assert all(not gone(pid) for pid in pids)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    # The foreground process was the parent: its children are reaped, not zombies.
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
    wait_until(lambda: not (tmp_path / "pids.json").exists(), 5, "the pid file to be removed")
