"""The image's two recipes agree: the one `ds01 dev up` builds without a registry
(`controller/devcluster/image.py`) and the `Dockerfile` labs build with one.

Same Debian release and packages (so the same Python), the same pinned wheels
with the same files pruned, the same entry point, environment and user. The
lock itself is the closure of the project's runtime requirements at the
versions the tests run with. `tests/node/test_image.py` checks the built image.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from controller.devcluster import image, imagelock
from controller.devcluster.binaries import source_root

DOCKERFILE = (source_root() / "Dockerfile").read_text()


def instructions(keyword: str) -> list[str]:
    """The arguments of every ``keyword`` instruction (continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [
        line.split(None, 1)[1].strip()
        for line in joined.splitlines()
        if line.split(None, 1)[:1] == [keyword]
    ]


def test_both_recipes_start_from_the_same_debian_release_and_packages() -> None:
    assert instructions("FROM") == [
        f"debian:{image.SUITE}-slim AS wheels",
        f"debian:{image.SUITE}-slim",
    ]
    assert "COPY deploy/image/debian-packages /tmp/debian-packages" in DOCKERFILE
    assert "$(grep -v '^#' /tmp/debian-packages)" in DOCKERFILE
    assert image.debian_packages() == ["python3-minimal", "libpython3.11-stdlib", "libstdc++6"]
    assert f"python{image.PYTHON} -m compileall" in DOCKERFILE  # the same interpreter


def test_both_recipes_install_the_same_pinned_wheels_into_the_same_place() -> None:
    [install] = [r for r in instructions("RUN") if "--require-hashes" in r]
    assert "-r /recipe/requirements.txt" in install and "--only-binary=:all:" in install
    assert "grep -v '^#' /recipe/prune | xargs rm -rf" in install
    assert f"COPY --from=wheels /site /{image.SITE_PACKAGES}" in DOCKERFILE
    assert image.pruned() == ["kubernetes/aio"]


def test_both_recipes_have_the_same_entry_point_environment_and_user() -> None:
    assert json.loads(instructions("ENTRYPOINT")[0]) == image.ENTRYPOINT
    assert json.loads(instructions("CMD")[0]) == ["--help"]
    assert instructions("ENV") == image.ENV
    for script in image.ENTRY_SCRIPTS:
        assert f"COPY --chmod=755 deploy/image/ds01 /usr/local/bin/{script}" in DOCKERFILE
    assert f"echo '{image.NONROOT}' >> /etc/passwd" in DOCKERFILE
    entry = (image.recipe_dir() / "ds01").read_text()
    assert entry.startswith(f"#!/usr/bin/python{image.PYTHON}\n")
    assert "from controller.cli.main import main" in entry


def test_the_lock_pins_exactly_the_runtime_closure_the_tests_run_with() -> None:
    closure = imagelock.closure()
    assert image.locked() == closure, "run `python -m controller.devcluster.image lock`"
    text = (image.recipe_dir() / "requirements.txt").read_text()
    assert text.count("--hash=sha256:") == len(closure)


def test_the_project_layer_is_rebuilt_when_the_code_changes_and_only_then(
    tmp_path: Path,
) -> None:
    root = tmp_path / "checkout"
    shutil.copytree(source_root() / "controller", root / "controller")
    shutil.copy(source_root() / "pyproject.toml", root / "pyproject.toml")
    before = image.project_key(root)
    assert before == image.project_key(source_root())
    module = root / "controller" / "__init__.py"
    os.utime(module, (1, 1))  # a touch, or a fresh clone's times: same contents, same layer
    (root / "controller" / "__pycache__").mkdir(exist_ok=True)
    (root / "controller" / "__pycache__" / "x.pyc").write_bytes(b"bytecode")
    assert image.project_key(root) == before
    module.write_text(module.read_text() + "# changed\n")
    assert image.project_key(root) != before
