"""The node tier: a real Kubernetes node (containerd, kubelet, scheduler) on this host.

Each module gets one cluster and one node (`node_env`), started as `ds01 dev
up` starts them: the project's image imported into the node's containerd, the
`local` overlay of the manifests applied, the operator and the agent running
as pods. Only one node can run on a host (the kubelet's device-plugin directory
is fixed), so modules run one after another. Claims are proved by the kernel's
or the kubelet's answer: what a container could open, what PodResources says,
what the Node reports, which processes run with which ids.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controller.cli.dev import install
from controller.devcluster import agentnode, node, podnode
from controller.devcluster.controlplane import LocalCluster
from tests.node.nodeenv import NODE, OPERATOR_ENV, TEST_AGENT_ARGS, NodeEnv


@pytest.fixture(scope="module")
def node_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeEnv]:
    if unmet := agentnode.unmet_requirements() + node.unmet_requirements():
        pytest.skip(f"this host cannot run a real node: needs {'; '.join(unmet)}")
    cluster = LocalCluster(tmp_path_factory.mktemp("node-cluster"))
    try:
        cluster.start()
        install(cluster, samples=False)
        started = podnode.start(
            cluster, NODE, agent_args=TEST_AGENT_ARGS, operator_env=OPERATOR_ENV
        )
        yield NodeEnv(cluster, started)
    finally:
        cluster.stop()
