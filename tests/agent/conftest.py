"""Fixtures of the agent tier: the fake NVML library, its topology, a device tree,
a real Docker engine (`docker_engine`), an enforcing fake GPU node (`node`) and,
per module that asks, a local control plane (`cluster`, `admin`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.cli.dev import install
from controller.devcluster.controlplane import LocalCluster
from tests.agent.enforcehost import node  # noqa: F401  (fixture)
from tests.agent.engine import docker_engine  # noqa: F401  (fixture)
from tests.agent.fakehost import FakeHost, fake_library
from tests.agent.gatewayhost import gateway  # noqa: F401  (fixture)
from tests.controlplane.kube import Kube


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A local control plane with ds01's CRDs and RBAC, one per module that asks for it."""
    with LocalCluster(tmp_path_factory.mktemp("agent-cluster")) as started:
        install(started, samples=False)
        yield started


@pytest.fixture(scope="module")
def admin(cluster: LocalCluster) -> Kube:
    return Kube(cluster, cluster.kubeconfig)


@pytest.fixture(scope="session")
def fake_nvml_library() -> Path:
    """Built once per session (and only when the C source changed since the last build)."""
    return fake_library()


@pytest.fixture
def fake_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_nvml_library: Path
) -> Iterator[FakeHost]:
    """An 8 x A100-SXM4-40GB node (GPUs 0 and 1 in MIG mode, NVSwitch), not yet started.

    Tests may replace `fake_host.topology` before `start()`; every `Nvml` it
    started is closed at teardown.
    """
    host = FakeHost(tmp_path, fake_nvml_library)
    for name, value in host.environ().items():
        monkeypatch.setenv(name, value)
    yield host
    host.close()
