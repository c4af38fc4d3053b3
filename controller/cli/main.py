"""`ds01` and `kubectl ds01`: one entry point, subcommands per audience."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from controller import __version__
from controller.cli import agent, crds, devcommand, ds01, monitoring, operator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ds01",
        description="GPU access control for shared research-lab GPU servers.",
    )
    parser.add_argument("--version", action="version", version=f"ds01-controller {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    devcommand.register(commands)
    crds.register(commands)
    monitoring.register(commands)
    operator.register(commands)
    agent.register(commands)
    ds01.register(commands, parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, ValueError, OSError) as error:
        print(f"ds01: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
