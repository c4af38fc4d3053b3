"""The control-plane tier: one real etcd + kube-apiserver + kube-controller-manager per session."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.cli.dev import install, start_operator
from controller.devcluster.controlplane import LocalCluster, free_port
from controller.devcluster.process import ManagedProcess, wait_until
from controller.runtime.audit import read_records
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


class OperatorEnv:
    """A second local control plane with the operator running as its ServiceAccount."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.admin = Kube(cluster, cluster.kubeconfig)
        self.audit = cluster.workdir / "audit.jsonl"
        self.audit_key = cluster.workdir / "audit.key"
        if not self.audit_key.exists():
            self.audit_key.touch(mode=0o600)
            self.audit_key.write_text("test-audit-key-" + os.urandom(8).hex())
        self.metrics_port = free_port()
        self.process: ManagedProcess | None = None

    # Windows and cooldowns made short by configuration, never by sleeping.
    BUDGET_BUCKET_S = 1
    STARTS_WINDOW_S = 15
    ALERT_COOLDOWN_S = 5
    LIFECYCLE_INTERVAL_S = 1
    USAGE_INTERVAL_S = 1

    def start(self, *extra: str) -> None:
        """Start the operator with the short test windows, plus ``extra`` flags."""
        self.process = start_operator(
            self.cluster,
            "--expiry-warning=4s",
            "--default-enforcement=Enforce",
            f"--metrics-port={self.metrics_port}",
            f"--budget-bucket={self.BUDGET_BUCKET_S}s",
            f"--workload-starts-window={self.STARTS_WINDOW_S}s",
            f"--alert-cooldown={self.ALERT_COOLDOWN_S}s",
            f"--lifecycle-interval={self.LIFECYCLE_INTERVAL_S}s",
            f"--usage-interval={self.USAGE_INTERVAL_S}s",
            f"--audit-key={self.audit_key}",
            "--audit-checkpoint-every=20",
            "--audit-checkpoint-interval=2s",
            *extra,
        )

    def pause(self) -> None:
        """SIGSTOP: the operator sees nothing and writes nothing until `resume`."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: no cleanup handlers, no graceful shutdown."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        wait_until(lambda: not self.process.alive(), 10, "the operator to die")  # type: ignore[union-attr]
        self.process.stop()

    def audit_events(self) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        return read_records(self.audit)


@pytest.fixture(scope="session")
def operator_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorEnv]:
    """Its own cluster (so other tests' hand-written statuses are not reconciled) + samples."""
    with LocalCluster(tmp_path_factory.mktemp("operator-cluster")) as started:
        install(started, samples=True)
        env = OperatorEnv(started)
        env.start()
        yield env
