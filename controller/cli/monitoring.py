"""`ds01 monitoring render|check`: write the dashboard and alert rules, or prove them current."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from controller.monitoring.render import drift, write


def _default_dir() -> Path:
    # Lazily: the production commands share this entry point and load no dev code.
    from controller.devcluster.binaries import source_root

    return source_root() / "deploy" / "monitoring"


def _render(args: argparse.Namespace) -> int:
    out: Path = args.out or _default_dir()
    names = write(out)
    print(f"wrote {', '.join(names)} to {out}")
    return 0


def _check(args: argparse.Namespace) -> int:
    diffs = drift(args.dir or _default_dir())
    if diffs:
        sys.stdout.write("".join(diffs))
        print(
            "deploy/monitoring differs from controller/monitoring: run `ds01 monitoring render` "
            "and commit",
            file=sys.stderr,
        )
        return 1
    print("deploy/monitoring matches controller/monitoring")
    return 0


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "monitoring", help="render or check the Grafana dashboard and Prometheus alert rules"
    )
    sub = parser.add_subparsers(dest="monitoring_command", required=True, metavar="ACTION")
    render_parser = sub.add_parser("render", help="write deploy/monitoring's generated files")
    render_parser.add_argument("--out", type=Path, help="directory (default: deploy/monitoring)")
    render_parser.set_defaults(run=_render)
    check_parser = sub.add_parser("check", help="fail when deploy/monitoring differs from a render")
    check_parser.add_argument("--dir", type=Path, help="directory (default: deploy/monitoring)")
    check_parser.set_defaults(run=_check)
