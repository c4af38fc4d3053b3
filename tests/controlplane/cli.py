"""Running `kubectl ds01` in the tests: as a kubectl plugin in a subprocess, or its `main`."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from controller.cli.main import main
from controller.devcluster.controlplane import LocalCluster

BIN = Path(sys.executable).parent
"""The virtual environment's scripts: `ds01` and `kubectl-ds01` live here."""


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


def plugin(
    cluster: LocalCluster, kubeconfig: Path, *args: str, columns: int | None = None
) -> Result:
    """`kubectl ds01 ARGS` with `kubectl-ds01` on PATH, as a user types it."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    kubectl_dir = str(Path(cluster.binaries.kubectl).parent)
    env["PATH"] = os.pathsep.join([str(BIN), kubectl_dir, env.get("PATH", "")])
    env["KUBECONFIG"] = str(kubeconfig)
    if columns is not None:
        env["COLUMNS"] = str(columns)
    done = subprocess.run(
        ["kubectl", "ds01", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


@contextlib.contextmanager
def _no_columns() -> Iterator[None]:
    saved = os.environ.pop("COLUMNS", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["COLUMNS"] = saved


def ds01(kubeconfig: Path | None, *args: str) -> Result:
    """`ds01 ARGS --kubeconfig K` through `main(argv)` in this process (faster)."""
    out, err = io.StringIO(), io.StringIO()
    argv = [*args, "--kubeconfig", str(kubeconfig)] if kubeconfig else list(args)
    with _no_columns(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's usage errors
            code = int(exit_.code or 0)
    return Result(code, out.getvalue(), err.getvalue())
