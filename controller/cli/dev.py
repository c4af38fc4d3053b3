"""`ds01 dev up|down|kubeconfig`: the embedded local default.

`up` builds the control-plane binaries when missing, starts etcd, the
apiserver and the controller-manager on loopback, installs the CRDs, RBAC and
samples, prints how to reach the cluster, and keeps running until interrupted
(or returns at once with --detach; `down` stops it from anywhere).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from controller.devcluster import binaries
from controller.devcluster.controlplane import LocalCluster, stop_recorded
from controller.devcluster.process import PidFile


def default_workdir() -> Path:
    """$DS01_DEV_DIR, else $XDG_STATE_HOME/ds01-controller/dev."""
    if explicit := os.environ.get("DS01_DEV_DIR"):
        return Path(explicit)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "ds01-controller" / "dev"


def install(cluster: LocalCluster, samples: bool = True) -> None:
    """Apply the CRDs, wait until they are served, then RBAC and (optionally) samples."""
    root = binaries.source_root()
    cluster.kubectl("apply", "--server-side", "-k", str(root / "crds"))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *(
            f"crd/{p.name.removesuffix('.yaml')}"
            for p in sorted((root / "crds").glob("*.gpu.ds01.io.yaml"))
        ),
    )
    target = root / "manifests" / ("overlays/local" if samples else "core")
    cluster.kubectl("apply", "--server-side", "-k", str(target))


def _up(args: argparse.Namespace) -> int:
    workdir: Path = args.workdir or default_workdir()
    if any(p.alive() for p in PidFile(workdir / "pids.json").read()):
        print(
            f"a local cluster is already running in {workdir}; `ds01 dev down` stops it",
            file=sys.stderr,
        )
        return 1
    started = time.monotonic()
    built = binaries.ensure()
    cluster = LocalCluster(workdir, binaries=built)
    cluster.start()
    try:
        install(cluster, samples=not args.no_samples)
    except BaseException:
        cluster.stop()
        raise
    elapsed = time.monotonic() - started
    kubectl_dir = built.kubectl.parent
    print(
        f"\nds01 local control plane is up in {elapsed:.1f}s "
        f"(Kubernetes {built.kubernetes_version}, etcd {built.etcd_version})\n"
        f"  API server:  {cluster.server}\n"
        f"  logs:        {workdir / 'logs'}\n\n"
        f"  export KUBECONFIG={shlex.quote(str(cluster.kubeconfig))}\n"
        f"  export PATH={shlex.quote(str(kubectl_dir))}:$PATH"
        f"   # kubectl {built.kubernetes_version}\n\n"
        "  kubectl get gpuratelimits,gpugrants,gpuexemptions -A\n"
        "  ds01 dev kubeconfig --user 248835@lab.example --group student   # act as a student\n",
        flush=True,
    )
    if args.detach:
        print("detached; `ds01 dev down` stops it")
        return 0
    return _serve(cluster)


def _serve(cluster: LocalCluster) -> int:
    """Block until SIGINT/SIGTERM or until a control-plane process dies."""
    stop = False

    def request_stop(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    print("running; press Ctrl-C to stop", flush=True)
    try:
        while not stop:
            dead = [p for p in cluster.processes if not p.alive()]
            if dead:
                for process in dead:
                    print(f"{process.name} exited:\n{process.log_tail()}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    finally:
        cluster.stop()
        print("stopped")
    return 0


def _build(args: argparse.Namespace) -> int:
    started = time.monotonic()
    built = binaries.ensure()
    print(
        f"Kubernetes {built.kubernetes_version} in {built.kubernetes_dir}\n"
        f"etcd {built.etcd_version} in {built.etcd_dir}\n"
        f"ready in {time.monotonic() - started:.1f}s"
    )
    return 0


def _down(args: argparse.Namespace) -> int:
    workdir: Path = args.workdir or default_workdir()
    stopped = stop_recorded(workdir)
    print(f"stopped {stopped} process(es)" if stopped else f"nothing running in {workdir}")
    return 0


def _kubeconfig(args: argparse.Namespace) -> int:
    workdir: Path = args.workdir or default_workdir()
    if not (workdir / "server").is_file():
        print(f"no local cluster in {workdir}; run `ds01 dev up` first", file=sys.stderr)
        return 1
    path = LocalCluster.attach(workdir).user_kubeconfig(args.user, tuple(args.group))
    print(
        f"export KUBECONFIG={shlex.quote(str(path))}   # {args.user} in {args.group or 'no groups'}"
    )
    return 0


def register(commands: Any) -> None:
    parser = commands.add_parser("dev", help="run the embedded local control plane")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="state directory (default: $DS01_DEV_DIR or ~/.local/state/ds01-controller/dev)",
    )
    sub = parser.add_subparsers(dest="dev_command", required=True, metavar="ACTION")
    up = sub.add_parser("up", help="build if needed, start, install CRDs, RBAC and samples")
    up.add_argument("--no-samples", action="store_true", help="install CRDs and RBAC only")
    up.add_argument("--detach", action="store_true", help="return once up; `down` stops it")
    up.set_defaults(run=_up)
    build = sub.add_parser("build", help="build the control-plane binaries if missing")
    build.set_defaults(run=_build)
    down = sub.add_parser("down", help="stop a local control plane started by `up`")
    down.set_defaults(run=_down)
    kubeconfig = sub.add_parser(
        "kubeconfig", help="mint a client certificate for a user and print its KUBECONFIG"
    )
    kubeconfig.add_argument("--user", required=True, help="user name (certificate CN)")
    kubeconfig.add_argument(
        "--group",
        action="append",
        default=[],
        help="group (certificate O); repeat for several, e.g. ds01:approvers",
    )
    kubeconfig.set_defaults(run=_kubeconfig)
