"""`scripts/host-packages`: the one list of Debian packages the node agent needs on a host.

`make up` and `.ci/run` both install through it (as root, with apt-get), so a
fresh machine gets the agent on `make up` as it does in CI; anyone who cannot
install is told what is missing and that the node then runs unenforced.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from controller.devcluster.binaries import source_root
from tests.agent.users import ensure_user

ROOT = source_root()
SCRIPT = ROOT / "scripts" / "host-packages"
ABSENT = "ds01-no-such-package"


def host_packages(*args: str, login: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the script, as ``login`` from a copy anyone can read (a clone may sit under /root)."""
    if login is None:
        return subprocess.run(
            [str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=False
        )
    uid = ensure_user(login)
    with tempfile.TemporaryDirectory(prefix="ds01-host-packages-") as public:
        Path(public).chmod(0o755)
        copy = Path(public) / SCRIPT.name
        shutil.copy(SCRIPT, copy)
        copy.chmod(0o755)
        return subprocess.run(
            ["setpriv", f"--reuid={uid}", "--regid=65534", "--clear-groups", str(copy), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def test_make_up_and_ci_install_the_agents_packages_from_the_same_list() -> None:
    up_recipe = re.search(r"^up:.*?(?=^\S)", (ROOT / "Makefile").read_text(), re.M | re.S)
    assert up_recipe and "scripts/host-packages --install" in up_recipe.group(0)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/host-packages --install" in ci
    assert "docker.io" not in ci and "apt-get" not in ci  # no second list to drift


def test_this_host_has_every_package_on_the_list() -> None:
    checked = host_packages()
    assert checked.returncode == 0, checked.stderr


def test_a_user_who_cannot_install_is_told_what_is_missing_and_that_nothing_is_enforced() -> None:
    refused = host_packages("--install", ABSENT, login="ds01-newcomer")
    assert refused.returncode == 1
    assert f"missing Debian packages: {ABSENT}; not installing them: not root" in refused.stderr
    assert "without enforcement" in refused.stderr


def test_a_check_without_install_says_how_to_install() -> None:
    checked = host_packages(ABSENT)
    assert checked.returncode == 1
    assert "sudo scripts/host-packages --install" in checked.stderr
