"""A fake GPU node for agent tests and benchmarks: topology file, device tree, started Nvml.

Everything below NVML is real: the agent's `Nvml` loads the fake library
through pynvml, reads a real (if temporary) /proc/devices and reports device
nodes that exist and carry the numbers it claims.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from controller.agent.nvml import Nvml
from controller.devcluster.binaries import cache_root
from controller.devcluster.fakegpu import TOPOLOGY_ENV, Topology, a100_node, build
from controller.devcluster.fakegpu.devtree import DevTree, make_devtree
from controller.devcluster.fakegpu.holdable import WANTED_GPUS, gpu_minors


def fake_library() -> Path:
    """The fake libnvidia-ml.so.1, built into the project's cache when its source changed."""
    return build(cache_root() / "fakenvml")


def misc_node() -> Topology:
    """DS01's 8-GPU node on misc devices this host can hold open (`fakegpu.holdable`).

    The agent tests address GPUs by index up to 6 and need six whole GPUs, so
    unlike `ds01 dev up`'s node (4 GPUs at least) they need all 8: a host with
    fewer holdable devices fails here, saying which it has.
    """
    return a100_node(minors=gpu_minors(minimum=WANTED_GPUS))


class FakeHost:
    """`topology` is what the fake NVML answers; edit it and call `write()` at run time."""

    def __init__(self, root: Path, library: Path, topology: Topology | None = None) -> None:
        self.root = root
        self.library = library
        self.topology = topology if topology is not None else a100_node()
        self.path = root / "topology"
        self.tree: DevTree | None = None
        self._started: list[Nvml] = []

    def write(self) -> None:
        self.topology.write(self.path)

    def make_tree(self, *, misc: bool = False) -> DevTree:
        if self.tree is None:
            self.tree = make_devtree(self.root / "host", self.topology, misc=misc)
        return self.tree

    def start(self, *, misc: bool = False, **options: Any) -> Nvml:
        """Write the topology, create the device tree and start an `Nvml` against both.

        The caller must have pointed $DS01_FAKE_NVML_TOPOLOGY at `path`
        (`environ()` gives the value; the fixture sets it).
        """
        self.write()
        tree = self.make_tree(misc=misc)
        nvml = Nvml(
            library=self.library, proc_root=tree.proc_root, dev_root=tree.dev_root, **options
        )
        nvml.start()
        self._started.append(nvml)
        return nvml

    def environ(self) -> dict[str, str]:
        return {TOPOLOGY_ENV: str(self.path)}

    def close(self) -> None:
        while self._started:
            self._started.pop().close()


def point_fake_at(path: Path) -> None:
    """For scripts (the benchmark): make the fake library read `path`."""
    os.environ[TOPOLOGY_ENV] = str(path)
