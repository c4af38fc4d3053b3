"""Running a benchmark at a tiny size, as a test, so that it cannot rot unnoticed.

A benchmark is run as `python -m benchmarks.NAME` in its own process (as a
person runs it), and must exit 0 and print every line it exists to print, each
with its number. Nothing here looks at the numbers themselves: timing asserts
would only measure the machine the tests run on.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NUMBER = r"[-+]?\d+(?:\.\d+)?"


def run_benchmark(name: str, *args: str, timeout_s: float = 600) -> str:
    """Its output (stdout and stderr together); a failure shows the end of it."""
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"benchmarks.{name} exited {done.returncode}:\n{output[-4000:]}"
    return output


def missing_fields(output: str, fields: dict[str, str]) -> list[str]:
    """The fields (name -> regex, `{n}` for a number) that no line of ``output`` shows."""
    return [
        name
        for name, pattern in fields.items()
        if not re.search(pattern.replace("{n}", NUMBER), output, re.MULTILINE)
    ]
