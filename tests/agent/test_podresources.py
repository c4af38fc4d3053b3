"""The PodResources client against a simulated kubelet PodResourcesLister on a real unix socket."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.agent.deviceplugin.proto import podresources_v1_pb2 as pr
from controller.agent.deviceplugin.proto import podresources_v1_pb2_grpc as pr_grpc
from controller.agent.deviceplugin.simkubelet import SimulatedPodResources, pod
from controller.agent.podresources import (
    ContainerDevices,
    ContainerRef,
    PodResourcesClient,
)

GPU_A = "GPU-0000000a-0000-0000-0000-000000000000"
GPU_B = "GPU-0000000b-0000-0000-0000-000000000000"
MIG_C = "MIG-0000000c-0000-0000-0000-000000000000"

PODS = [
    pod("u-248835", "train-0", {"main": {"gpu.ds01.io/gpu": [GPU_A, GPU_B]}, "sidecar": {}}),
    pod(
        "u-ada",
        "notebook",
        {
            "jupyter": {
                "gpu.ds01.io/mig-1g.10gb": [MIG_C],
                "nvidia.com/gpu": ["GPU-someone-elses"],
                "example.com/fpga": ["fpga0"],
            }
        },
    ),
    pod("kube-system", "dns", {"coredns": {}}),
    pod("other", "fpga-job", {"worker": {"example.com/fpga": ["fpga1"]}}),
]


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="podres-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def kubelet(socket_dir: Path) -> Iterator[SimulatedPodResources]:
    server = SimulatedPodResources(socket_dir / "kubelet.sock", PODS)
    server.start()
    yield server
    server.stop()


def test_method_path_is_kubelets() -> None:
    service = pr.DESCRIPTOR.services_by_name["PodResourcesLister"]
    assert (service.full_name, [m.name for m in service.methods]) == (
        "v1.PodResourcesLister",
        ["List"],
    )
    assert "'/v1.PodResourcesLister/List'" in Path(pr_grpc.__file__).read_text()


def test_lists_only_our_devices_per_container(kubelet: SimulatedPodResources) -> None:
    client = PodResourcesClient(kubelet.socket)
    try:
        result = client.list()
    finally:
        client.close()
    assert result.ok and result.error is None
    assert result.containers == (
        ContainerDevices(
            ContainerRef("u-248835", "train-0", "main"), "gpu.ds01.io/gpu", (GPU_A, GPU_B)
        ),
        ContainerDevices(
            ContainerRef("u-ada", "notebook", "jupyter"), "gpu.ds01.io/mig-1g.10gb", (MIG_C,)
        ),
    )
    assert result.by_device() == {
        GPU_A: ContainerRef("u-248835", "train-0", "main"),
        GPU_B: ContainerRef("u-248835", "train-0", "main"),
        MIG_C: ContainerRef("u-ada", "notebook", "jupyter"),
    }
    assert client.last_good == result


def test_missing_socket_is_reported_not_raised(socket_dir: Path) -> None:
    client = PodResourcesClient(socket_dir / "absent.sock")
    result = client.list()
    assert not result.ok
    assert result.error is not None and "absent.sock" in result.error
    assert result.containers == () and client.last_good is None


def test_kubelet_down_keeps_the_last_good_view(kubelet: SimulatedPodResources) -> None:
    client = PodResourcesClient(kubelet.socket, timeout_s=2)
    try:
        good = client.list()
        assert good.ok and len(good.containers) == 2

        # kubelet stops but leaves its socket file behind: the call itself fails.
        kubelet.stop()
        kubelet.socket.touch()
        down = client.list()
        assert not down.ok and down.error is not None and "UNAVAILABLE" in down.error
        assert client.last_good == good

        # kubelet back with a different picture: seen on the very next call.
        kubelet.socket.unlink()
        kubelet.set_pods(PODS[:1])
        kubelet.start()
        again = client.list()
        assert again.ok and [c.ref.pod for c in again.containers] == ["train-0"]
        assert client.last_good == again
    finally:
        client.close()
