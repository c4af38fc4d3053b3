"""`ds01 dev ...`'s arguments, without importing the development cluster.

The production commands (`ds01 operator`, `ds01 agent`, `kubectl ds01`) share
one entry point with `ds01 dev`, and the image carries only what production
needs. So the parser is built here, and `controller.cli.dev` (which imports
the whole `controller.devcluster` package) is loaded only when a `dev`
subcommand runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _lazy(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from controller.cli import dev

        handler: Callable[[argparse.Namespace], int] = getattr(dev, name)
        return handler(args)

    return run


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
    up.add_argument(
        "--fresh",
        action="store_true",
        help="delete the state of earlier runs first (cluster data, the node's containers)",
    )
    up.add_argument(
        "--no-agent",
        action="store_true",
        help="write the GPU node's status instead of running an agent (no node, no dockerd)",
    )
    up.add_argument(
        "--no-node",
        action="store_true",
        help="run the operator and agent as host processes instead of pods on a real node"
        " (kubelet, containerd); what hosts that cannot run a kubelet get",
    )
    up.set_defaults(run=_lazy("_up"))
    build = sub.add_parser(
        "build", help="build the Kubernetes binaries and the project's image if missing"
    )
    build.set_defaults(run=_lazy("_build"))
    down = sub.add_parser("down", help="stop a local control plane started by `up`")
    down.set_defaults(run=_lazy("_down"))
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
    kubeconfig.set_defaults(run=_lazy("_kubeconfig"))
