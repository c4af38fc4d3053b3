"""The project's image, built here without a registry, as the node's containerd runs it.

The Python in it, the distributions installed (exactly the lock, plus the
project), its entry point, and that the production commands load no
development-only code, are read inside a pod running the image; its size is
printed (a number to watch, not a threshold).
"""

from __future__ import annotations

import json
import tarfile

from controller import __version__
from controller.devcluster import image
from controller.devcluster.process import wait_until
from tests.node.nodeenv import DEADLINE_S, NodeEnv

INSIDE = r"""
import contextlib, importlib.metadata as md, io, json, platform, sys
from controller.cli.main import main
loaded = {}
for argv in (["operator", "--help"], ["agent", "--help"], ["status", "--help"], ["--version"]):
    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
        main(argv)
    loaded[" ".join(argv)] = sorted(m for m in sys.modules if m.startswith("controller.devcluster"))
import controller.agent.main, controller.cli.ds01, controller.operator.main
loaded["what runs"] = sorted(m for m in sys.modules if m.startswith("controller.devcluster"))
dists = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in md.distributions()}
print("IMAGE " + json.dumps({"python": platform.python_version(), "dists": dists,
                             "loaded": loaded, "argv0": sys.argv[0]}), flush=True)
"""


def test_the_image_holds_the_pinned_python_and_distributions_and_no_dev_code(
    node_env: NodeEnv,
) -> None:
    namespace = node_env.admin.namespace("image-check")
    node_env.admin.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "inside", "namespace": namespace},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
                "containers": [
                    {
                        "name": "inside",
                        "image": node_env.node.image.name,
                        "imagePullPolicy": "Never",
                        "command": ["python3", "-c", INSIDE],
                        "securityContext": {"readOnlyRootFilesystem": True},
                    }
                ],
            },
        }
    )
    wait_until(
        lambda: node_env.phase(namespace, "inside") == "Succeeded", DEADLINE_S, "the image check"
    )
    line = next(
        text
        for text in node_env.admin.kubectl("logs", "-n", namespace, "inside").stdout.splitlines()
        if text.startswith("IMAGE ")
    )
    found = json.loads(line.removeprefix("IMAGE "))
    assert found["python"].startswith(f"{image.PYTHON}.")
    expected = {**image.locked(), "ds01-controller": __version__}
    assert found["dists"] == expected
    # The production commands, kubectl ds01 and --version: no development cluster code.
    assert found["loaded"] and all(modules == [] for modules in found["loaded"].values())


def test_the_image_runs_ds01_as_its_entry_point_and_reports_its_size(node_env: NodeEnv) -> None:
    built = node_env.node.image
    with tarfile.open(built.archive) as archive:
        manifest = json.loads(archive.extractfile("manifest.json").read())  # type: ignore[union-attr]
        config = json.loads(archive.extractfile(manifest[0]["Config"]).read())  # type: ignore[union-attr]
    assert manifest[0]["RepoTags"] == [image.image_name()]
    assert config["config"]["Entrypoint"] == image.ENTRYPOINT
    # The node's containerd has it under the name the manifests use.
    assert node_env.node.real.containerd.has_image(built.name)
    print(
        f"\nimage {built.name}: {built.size_bytes / 2**20:.0f} MiB uncompressed, "
        f"{built.archive.stat().st_size / 2**20:.0f} MiB archive"
    )
