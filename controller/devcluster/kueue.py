"""Kueue, built from the Go module proxy and run against a local control plane.

Only the side-by-side benchmark (`benchmarks/kueue_compare.py`) uses it, so it
is built on demand, never by `ds01 dev build`. The version comes from the
wrapper module `tools/kueue/go.mod`, kept apart from `tools/k8s`: Kueue is
built against the Kubernetes libraries it was released with, and one module
holding both would lift them to the apiserver's newer ones.

Two variants are run:

- ``core``: ``minimalkueue``, Kueue's own scheduler-performance harness: the
  core controllers and the scheduler, no webhooks, no job integrations, no
  leader election; a lower bound on Kueue's cost.
- ``full``: the ``kueue`` manager as shipped, out of cluster: leader election
  and internal certificate management off, the visibility server off (it wants
  a fixed ``/visibility`` folder), one job integration (the list may not be
  empty) and a self-signed serving pair (webhooks are served but not
  registered with the apiserver).

Binaries and the CRDs of the same version are kept in
``<cache>/bin/kueue-<version>/`` (CRDs copied from the module cache, where
``go mod download -json`` puts the module), so a second run needs no Go at all.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from controller.devcluster import binaries
from controller.devcluster.controlplane import LocalCluster, free_port, http_ok
from controller.devcluster.process import ManagedProcess, wait_until

MODULE = "sigs.k8s.io/kueue"
PACKAGES = {
    "minimalkueue": f"{MODULE}/test/performance/scheduler/minimalkueue",
    "kueue": f"{MODULE}/cmd/kueue",
}
VARIANT_COMMAND = {"core": "minimalkueue", "full": "kueue"}
METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")
"""Where the v0.17 manager reads its metrics serving pair when it does not make its
own (a fixed path, read even with metrics off); the full variant writes it."""


@dataclass(frozen=True)
class KueueBuild:
    """Where Kueue's binaries and CRDs for the pinned version are, built or not."""

    version: str
    directory: Path

    def binary(self, command: str) -> Path:
        return self.directory / command

    @property
    def crd_dir(self) -> Path:
        return self.directory / "crds"

    def missing(self, commands: tuple[str, ...]) -> list[str]:
        absent = [c for c in commands if not os.access(self.binary(c), os.X_OK)]
        if not any(self.crd_dir.glob("*.yaml")):
            absent.append("crds")
        return absent


def wrapper_dir() -> Path:
    return binaries.source_root() / "tools" / "kueue"


def planned() -> KueueBuild:
    version = binaries.required_version(wrapper_dir() / "go.mod", MODULE)
    return KueueBuild(version, binaries.cache_root() / "bin" / f"kueue-{version}")


def module_dir(version: str) -> Path:
    """The module's folder in the Go module cache (downloaded if absent)."""
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("the Go toolchain is needed to build Kueue: `go` not found")
    result = subprocess.run(
        [go, "mod", "download", "-json", f"{MODULE}@{version}"],
        cwd=wrapper_dir(),
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(json.loads(result.stdout)["Dir"])


def ensure(commands: tuple[str, ...] = tuple(PACKAGES)) -> KueueBuild:
    """Build the missing ``commands`` (and copy the CRDs) into the cache; return where."""
    unknown = [c for c in commands if c not in PACKAGES]
    if unknown:
        raise ValueError(f"commands: unknown Kueue command(s) {unknown}; known: {list(PACKAGES)}")
    build = planned()
    if not build.missing(commands):
        return build
    build.directory.parent.mkdir(parents=True, exist_ok=True)
    with open(build.directory.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        absent = build.missing(commands)
        names = [c for c in absent if c != "crds"]
        ldflags = f"-s -w -X {MODULE}/pkg/version.GitVersion={build.version}"
        if names:
            binaries.build_into(
                build.directory,
                names,
                lambda out: binaries.go_build(
                    wrapper_dir(),
                    [PACKAGES[n] for n in names],
                    out / names[0] if len(names) == 1 else out,
                    ldflags,
                ),
            )
        if "crds" in absent:
            source = module_dir(build.version) / "config" / "components" / "crd" / "bases"
            files = sorted(p.name for p in source.glob("*.yaml"))

            def copy_crds(out: Path) -> None:
                for name in files:
                    shutil.copyfile(source / name, out / name)

            binaries.build_into(build.crd_dir, files, copy_crds)
    if still := build.missing(commands):
        raise RuntimeError(f"Kueue build finished but these are missing: {still}")
    return build


def install_crds(cluster: LocalCluster, build: KueueBuild) -> None:
    """Server-side apply Kueue's CRDs (the Workload CRD is too big for client-side apply)."""
    cluster.apply("-f", str(build.crd_dir))
    names = [
        f"crd/{p.name.removeprefix('kueue.x-k8s.io_').removesuffix('.yaml')}.kueue.x-k8s.io"
        for p in sorted(build.crd_dir.glob("*.yaml"))
    ]
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)


def start(cluster: LocalCluster, build: KueueBuild, variant: str) -> ManagedProcess:
    """Start Kueue (``core`` or ``full``) as the cluster admin.

    The full manager is waited for until its readiness probe passes; ``minimalkueue``
    serves no probe, so the caller waits for what it needs (its queues turning Active).
    """
    if variant == "core":
        return cluster.spawn(
            "minimalkueue",
            [str(build.binary("minimalkueue")), f"--kubeconfig={cluster.kubeconfig}"],
        )
    if variant != "full":
        raise ValueError(f"variant: must be core or full, not {variant!r}")
    return _start_full(cluster, build)


def _start_full(cluster: LocalCluster, build: KueueBuild) -> ManagedProcess:
    certs = cluster.workdir / "kueue-certs"
    certs.mkdir(parents=True, exist_ok=True)
    pair = cluster._authority().serving(["127.0.0.1", "localhost"])
    pair.write(certs, "tls")
    if not (METRICS_CERT_DIR / "tls.crt").is_file():
        METRICS_CERT_DIR.mkdir(parents=True, exist_ok=True)
        pair.write(METRICS_CERT_DIR, "tls")
    cluster.kubectl("create", "namespace", "kueue-system", check=False)
    health = free_port()
    config = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": "kueue-system",
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"port": free_port(), "host": "127.0.0.1", "certDir": str(certs)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        # The shipped configuration's client limits and concurrency.
        "clientConnection": {"qps": 50, "burst": 100},
        "controller": {
            "groupKindConcurrency": {
                "Workload.kueue.x-k8s.io": 5,
                "LocalQueue.kueue.x-k8s.io": 1,
                "ClusterQueue.kueue.x-k8s.io": 1,
                "ResourceFlavor.kueue.x-k8s.io": 1,
            }
        },
        "integrations": {"frameworks": ["batch/job"]},
        "featureGates": {"VisibilityOnDemand": False},
    }
    path = cluster.workdir / "kueue-config.json"
    path.write_text(json.dumps(config, indent=2))
    process = cluster.spawn(
        "kueue",
        [
            str(build.binary("kueue")),
            f"--config={path}",
            f"--kubeconfig={cluster.kubeconfig}",
            "--zap-log-level=info",
        ],
    )

    def ready() -> bool:
        if not process.alive():
            raise RuntimeError(f"kueue exited during start-up:\n{process.log_tail()}")
        return http_ok(f"http://127.0.0.1:{health}/readyz")

    wait_until(ready, 120, "kueue to report ready")
    return process
