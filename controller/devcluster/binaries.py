"""Build the control-plane binaries from the Go module proxy, once per version.

The versions come from the wrapper modules' go.mod files in ``tools/`` (one
source of truth). Binaries land in a cache outside the repository, keyed by
version, and are rebuilt only when missing. A build goes to a temporary folder
and is renamed into place, under a file lock, so an interrupted or concurrent
build never leaves a half-written binary that a later run would trust.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_COMMANDS = (
    "kube-apiserver",
    "kube-controller-manager",
    "kubectl",
    "kube-scheduler",
    "kubelet",
)


def source_root() -> Path:
    """The repository checkout this package runs from (where ``tools/`` lives)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "tools" / "k8s" / "go.mod").is_file():
        raise RuntimeError(
            f"tools/k8s/go.mod not found under {root}: the local control plane is built "
            "from the Go wrapper modules of a source checkout; install with `pip install -e .`"
        )
    return root


def cache_root() -> Path:
    """Where built binaries are kept: $DS01_CACHE_DIR, else $XDG_CACHE_HOME/ds01-controller."""
    if explicit := os.environ.get("DS01_CACHE_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ds01-controller"


def required_version(go_mod: Path, module: str) -> str:
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", go_mod.read_text(), re.M)
    if not match:
        raise RuntimeError(f"{go_mod}: no requirement on {module}")
    return match.group(1)


@dataclass(frozen=True)
class Binaries:
    """Paths of the built control-plane binaries."""

    kubernetes_version: str
    etcd_version: str
    kubernetes_dir: Path
    etcd_dir: Path

    @property
    def kube_apiserver(self) -> Path:
        return self.kubernetes_dir / "kube-apiserver"

    @property
    def kube_controller_manager(self) -> Path:
        return self.kubernetes_dir / "kube-controller-manager"

    @property
    def kube_scheduler(self) -> Path:
        return self.kubernetes_dir / "kube-scheduler"

    @property
    def kubectl(self) -> Path:
        return self.kubernetes_dir / "kubectl"

    @property
    def kubelet(self) -> Path:
        return self.kubernetes_dir / "kubelet"

    @property
    def etcd(self) -> Path:
        return self.etcd_dir / "etcd"

    def missing(self) -> list[Path]:
        paths = [self.kubernetes_dir / c for c in KUBERNETES_COMMANDS] + [self.etcd]
        return [p for p in paths if not os.access(p, os.X_OK)]


def planned() -> Binaries:
    """Where the binaries for the pinned versions are, built or not."""
    tools = source_root() / "tools"
    k8s = required_version(tools / "k8s" / "go.mod", "k8s.io/kubernetes")
    etcd = required_version(tools / "etcd" / "go.mod", "go.etcd.io/etcd/server/v3")
    cache = cache_root() / "bin"
    return Binaries(k8s, etcd, cache / f"kubernetes-{k8s}", cache / f"etcd-{etcd}")


def go_build(module_dir: Path, packages: list[str], out: Path, ldflags: str) -> None:
    """Build ``packages``; ``out`` is a folder for several, the binary's path for one."""
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("the Go toolchain is needed to build the control plane: `go` not found")
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly -buildvcs=false"}
    target = f"{out}/" if len(packages) > 1 else str(out)
    command = [go, "build", "-trimpath", "-ldflags", ldflags, "-o", target, *packages]
    names = [out.name] if len(packages) == 1 else [p.rsplit("/", 1)[-1] for p in packages]
    print(f"building {', '.join(names)} from the Go module proxy ...", file=sys.stderr)
    subprocess.run(command, cwd=module_dir, env=env, check=True)


def build_into(final: Path, names: list[str], build: Callable[[Path], None]) -> None:
    """Build ``names`` into a staging folder, then move each into ``final``.

    A command added to the list later (kubelet, after the control plane) is
    built alone, next to the binaries already cached; each lands by a rename,
    so none is ever seen half-written.
    """
    staging = final.with_name(final.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    build(staging)
    final.mkdir(parents=True, exist_ok=True)
    for name in names:
        (staging / name).rename(final / name)
    shutil.rmtree(staging, ignore_errors=True)


def ensure() -> Binaries:
    """Build whatever is missing and return the binaries' paths."""
    binaries = planned()
    if not binaries.missing():
        return binaries
    tools = source_root() / "tools"
    cache = binaries.kubernetes_dir.parent
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        commands = [p.name for p in binaries.missing() if p.parent == binaries.kubernetes_dir]
        if commands:
            version = binaries.kubernetes_version
            major, minor = version.lstrip("v").split(".")[:2]
            base = "k8s.io/component-base/version"
            ldflags = (
                f"-s -w -X {base}.gitVersion={version} -X {base}.gitMajor={major} "
                f"-X {base}.gitMinor={minor} -X {base}.gitTreeState=clean "
                f"-X k8s.io/client-go/pkg/version.gitVersion={version}"
            )
            packages = [f"k8s.io/kubernetes/cmd/{c}" for c in commands]

            def build_kubernetes(out: Path) -> None:
                # One command: the binary's path; several: the folder they go to.
                target = out / commands[0] if len(commands) == 1 else out
                go_build(tools / "k8s", packages, target, ldflags)

            build_into(binaries.kubernetes_dir, commands, build_kubernetes)
        if binaries.etcd in binaries.missing():
            build_into(
                binaries.etcd_dir,
                ["etcd"],
                lambda out: go_build(
                    tools / "etcd", ["go.etcd.io/etcd/server/v3"], out / "etcd", "-s -w"
                ),
            )
    if still := binaries.missing():
        raise RuntimeError(f"build finished but these are missing: {still}")
    return binaries
