"""The control-plane tier: one real etcd + kube-apiserver + kube-controller-manager per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.cli.dev import install
from controller.devcluster.controlplane import LocalCluster
from tests.controlplane.kube import Kube


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A fresh local control plane with the CRDs and RBAC installed (no samples)."""
    with LocalCluster(tmp_path_factory.mktemp("cluster")) as started:
        install(started, samples=False)
        yield started


@pytest.fixture(scope="session")
def admin(cluster: LocalCluster) -> Kube:
    """The cluster admin (system:masters)."""
    return Kube(cluster, cluster.kubeconfig)


@pytest.fixture(scope="session")
def as_user(cluster: LocalCluster):  # type: ignore[no-untyped-def]
    """Factory: a Kube acting as ``user`` in ``groups``, with a freshly minted certificate."""
    made: dict[tuple[str, tuple[str, ...]], Kube] = {}

    def make(user: str, *groups: str) -> Kube:
        key = (user, groups)
        if key not in made:
            made[key] = Kube(cluster, cluster.user_kubeconfig(user, groups))
        return made[key]

    return make


@pytest.fixture(scope="session")
def samples(cluster: LocalCluster) -> Path:
    """Apply manifests/samples (accounts, limits, grants, an exemption) once."""
    root = Path(__file__).resolve().parents[2]
    cluster.kubectl("apply", "--server-side", "-k", str(root / "manifests" / "samples"))
    return root / "manifests" / "samples"
