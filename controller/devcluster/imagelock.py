"""`deploy/image/requirements.txt`: the image's dependencies, pinned with their hashes.

The versions are the ones the test suite ran with: the closure of the project's
runtime requirements (no extras) as installed in the running interpreter's
environment (`.venv`). Each pin carries the sha256 of the wheel pip picks for
CPython 3.11 on manylinux x86_64, so both image recipes (`devcluster.image` and
the `Dockerfile`) install exactly these bytes (`pip --require-hashes`).

    python -m controller.devcluster.image lock
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

PROJECT = "ds01-controller"
_HEADER = """\
# The image's Python dependencies: the closure of ds01-controller's runtime
# requirements at the versions the tests ran with, each with the sha256 of its
# CPython 3.11 manylinux x86_64 wheel. Generated; do not edit:
#   python -m controller.devcluster.image lock
# Used by controller/devcluster/image.py and the Dockerfile (pip --require-hashes).
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(project: str = PROJECT) -> dict[str, str]:
    """Every distribution ``project`` needs at run time, with its installed version."""
    found: dict[str, str] = {}
    todo = [project]
    while todo:
        dist = metadata.distribution(todo.pop())
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            name = canonical(requirement.name)
            if name not in found:
                found[name] = metadata.version(requirement.name)
                todo.append(requirement.name)
    return dict(sorted(found.items()))


def wheel_hashes(pins: dict[str, str]) -> dict[str, str]:
    """The sha256 of the wheel pip chooses for the image's interpreter, per distribution."""
    from controller.devcluster.image import PLATFORMS, PYTHON

    with tempfile.TemporaryDirectory(prefix="ds01-lock-") as tmp:
        requirements = Path(tmp) / "pins.txt"
        requirements.write_text("".join(f"{n}=={v}\n" for n, v in pins.items()))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                f"--python-version={PYTHON}",
                "--implementation=cp",
                f"--abi=cp{PYTHON.replace('.', '')}",
                *(f"--platform={p}" for p in PLATFORMS),
                f"--dest={tmp}",
                "-r",
                str(requirements),
            ],
            check=True,
        )
        hashes = {}
        for wheel in Path(tmp).glob("*.whl"):
            name = canonical(wheel.name.split("-", 1)[0])
            hashes[name] = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if missing := sorted(set(pins) - set(hashes)):
        raise RuntimeError(f"no wheel for {missing} on CPython 3.11 manylinux x86_64")
    return hashes


def render(pins: dict[str, str], hashes: dict[str, str]) -> str:
    lines = [_HEADER]
    for name, version in pins.items():
        lines.append(f"{name}=={version} \\\n    --hash=sha256:{hashes[name]}\n")
    return "".join(lines)


def write_lock(path: Path) -> str:
    pins = closure()
    path.write_text(render(pins, wheel_hashes(pins)))
    return f"{path}: {len(pins)} distributions pinned"
