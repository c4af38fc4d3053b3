"""The agent tier's Docker engine: a private dockerd (controller/devcluster/dockerd.py) per session."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.agent.docker import DockerClient
from controller.devcluster.dockerd import IMAGE, Dockerd

__all__ = ["IMAGE", "DockerEngine", "docker_engine"]


class DockerEngine(Dockerd):
    """The engine, plus the agent's own Docker client on its socket (what tests inspect with)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.client = DockerClient(str(self.socket))


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
