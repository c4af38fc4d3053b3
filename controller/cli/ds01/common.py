"""What every `kubectl ds01` command shares: flags, exit codes, errors and output.

Exit codes scripts can rely on:

| code | meaning |
|---|---|
| 0 | done |
| 1 | refused or not found: the policy, an approver, RBAC or admission said no, or no such object |
| 2 | usage error: a flag or argument is wrong (argparse's own code) |
| 3 | cannot reach the cluster: no kubeconfig, connection refused, TLS or authentication failure |
| 4 | timed out waiting (`request --wait`) |
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import yaml

from controller.cli.ds01.table import CellLike, layout

OK, REFUSED, USAGE, UNREACHABLE, TIMEOUT = 0, 1, 2, 3, 4


class CliError(Exception):
    """A failure to report in one line, with its exit code."""

    def __init__(self, message: str, code: int = REFUSED) -> None:
        super().__init__(message)
        self.code = code


def connection_flags() -> argparse.ArgumentParser:
    """kubectl's flags for where and as whom (a parent parser)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("cluster")
    group.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)"
    )
    group.add_argument("--context", help="kubeconfig context to use")
    group.add_argument("-n", "--namespace", help="account namespace (default: yours)")
    return parent


def output_flags(*formats: str) -> argparse.ArgumentParser:
    """``-o`` with the formats a command offers, and ``--no-headers``."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-o",
        "--output",
        choices=formats,
        default=None,
        help=f"output format: {', '.join(formats)} (default: a table)",
    )
    parent.add_argument("--no-headers", action="store_true", help="tables without the header line")
    return parent


@dataclass(frozen=True)
class Terminal:
    """Where output goes and what it can show."""

    stream: TextIO
    width: int | None
    """Columns to fit tables in; None: do not cut (not a terminal and no $COLUMNS)."""
    colour: bool

    @classmethod
    def detect(cls, stream: TextIO | None = None) -> Terminal:
        out = stream or sys.stdout
        tty = out.isatty()
        width: int | None = None
        if os.environ.get("COLUMNS", "").isdigit():
            width = int(os.environ["COLUMNS"])
        elif tty:
            width = shutil.get_terminal_size((120, 24)).columns
        colour = tty and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        return cls(out, width, colour)

    def print(self, text: str = "") -> None:
        self.stream.write(text + "\n")


def emit_table(
    term: Terminal,
    headers: Sequence[str],
    rows: Sequence[Sequence[CellLike]],
    no_headers: bool = False,
) -> None:
    for line in layout(headers, rows, term.width, headers_shown=not no_headers, colour=term.colour):
        term.print(line)


def emit_data(term: Terminal, data: Any, fmt: str) -> None:
    """``data`` as JSON or YAML."""
    if fmt == "json":
        term.print(json.dumps(data, indent=2, ensure_ascii=False, default=str))
    else:
        term.stream.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def emit_csv(
    term: Terminal, headers: Sequence[str], rows: Sequence[Sequence[Any]], no_headers: bool
) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if not no_headers:
        writer.writerow(headers)
    writer.writerows(rows)
    term.stream.write(buffer.getvalue())


def handled(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn every failure of a command into a one-line message and its exit code."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        from controller.cli.ds01.session import describe_failure

        try:
            return run(args)
        except BrokenPipeError:
            # The reader went away (`| head`): not an error of ours; say nothing more.
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives until exit
            return OK
        except CliError as error:
            print(f"ds01: {error}", file=sys.stderr)
            return error.code
        except Exception as error:
            described = describe_failure(error)
            if described is None:
                raise
            message, code = described
            print(f"ds01: {message}", file=sys.stderr)
            return code

    return wrapper
