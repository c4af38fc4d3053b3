"""Updates, execs, starts, volumes, networks and builds judged on canonical bodies. Pure."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controller.api import names
from controller.policy.docker import schemas
from controller.policy.docker.facts import Network, PathFacts, Refusal
from controller.policy.docker.gojson import decode
from controller.policy.docker.objects import (
    recheck_devices,
    vet_build,
    vet_exec,
    vet_network_connect,
    vet_network_create,
    vet_pull,
    vet_update,
    vet_volume_create,
)
from tests.unit.test_docker_create import AMY, LIMITS, RULES

BEN_NET = Network("bennet", "n1", "bennet", "bridge", "ben@lab.example")
MY_NET = Network("mynet", "n2", "mynet", "bridge", AMY.owner)


def canonical(shape: Any, body: dict[str, Any]) -> dict[str, Any]:
    return decode(json.dumps(body).encode(), shape)


@pytest.mark.parametrize(
    "body",
    [
        {"CgroupParent": "/escape"},
        {"DeviceCgroupRules": ["c *:* rwm"]},
        {"Devices": [{"PathOnHost": "/dev/sda"}]},
        {"DeviceRequests": [{"Count": -1}]},
        {"CpuRealtimeRuntime": 1000},
        {"OomKillDisable": True},
        {"RestartPolicy": {"Name": "forever"}},
    ],
)
def test_an_update_cannot_add_what_create_refuses(body: dict[str, Any]) -> None:
    assert isinstance(
        vet_update(canonical(schemas.UPDATE, body), limits=LIMITS, gpu_container=False), Refusal
    )


def test_an_update_within_limits_is_passed_on() -> None:
    out = vet_update(
        canonical(schemas.UPDATE, {"Memory": 1 << 30}), limits=LIMITS, gpu_container=False
    )
    assert out == {"Memory": 1 << 30, "MemorySwap": 1 << 30}
    gpu = vet_update(
        canonical(schemas.UPDATE, {"RestartPolicy": {"Name": "always"}}),
        limits=LIMITS,
        gpu_container=True,
    )
    assert isinstance(gpu, Refusal) and gpu.option == "--restart"


def test_exec_is_never_privileged_and_runs_as_the_caller_where_host_paths_are() -> None:
    assert isinstance(vet_exec({"Privileged": True}, caller=AMY, host_mounts=False), Refusal)
    assert vet_exec({"User": "0"}, caller=AMY, host_mounts=False) == {"User": "0"}
    for user in ("0", "root", "1001:0", "1002:1001"):
        out = vet_exec({"User": user}, caller=AMY, host_mounts=True)
        assert isinstance(out, Refusal) and out.option == "--user", user
    assert vet_exec({"User": "1001"}, caller=AMY, host_mounts=True) == {"User": "1001:1001"}
    assert vet_exec({"User": "1001:100"}, caller=AMY, host_mounts=True) == {"User": "1001:100"}
    assert isinstance(
        vet_exec({"Env": ["NVIDIA_VISIBLE_DEVICES=all"]}, caller=AMY, host_mounts=False), Refusal
    )


def test_volumes_are_plain_local_and_stamped_with_their_creator() -> None:
    out = vet_volume_create(
        {"Name": "v", "Labels": {names.OWNER: "ben@lab.example", "a": "b"}}, caller=AMY
    )
    assert out == {"Name": "v", "Labels": {"a": "b", names.OWNER: AMY.owner}}
    for body in (
        {"Name": "v", "DriverOpts": {"type": "none", "o": "bind", "device": "/"}},
        {"Name": "v", "Driver": "nfs"},
        {"Name": "../v"},
    ):
        assert isinstance(vet_volume_create(body, caller=AMY), Refusal), body


@pytest.mark.parametrize(
    "body",
    [
        {"Name": "n", "Driver": "host"},
        {"Name": "n", "Driver": "macvlan", "Options": {"parent": "eth0"}},
        {"Name": "n", "Options": {"com.docker.network.bridge.name": "docker0"}},
        {"Name": "n", "IPAM": {"Config": [{"Subnet": "10.0.0.0/8"}]}},
        {"Name": "n", "IPAM": {"Driver": "other"}},
        {"Name": "n", "Ingress": True},
        {"Name": "n", "ConfigFrom": {"Network": "x"}},
        {"Name": "n", "Scope": "swarm"},
        {"Name": ""},
    ],
)
def test_networks_are_plain_bridges_with_engine_chosen_addresses(body: dict[str, Any]) -> None:
    assert isinstance(
        vet_network_create(canonical(schemas.NETWORK_CREATE, body), caller=AMY), Refusal
    )


def test_a_plain_network_is_stamped() -> None:
    out = vet_network_create({"Name": "n", "Driver": "bridge"}, caller=AMY)
    assert isinstance(out, dict) and out["Labels"] == {names.OWNER: AMY.owner}


def test_connect_needs_the_caller_s_network_and_container() -> None:
    body = {"Container": "c"}
    assert isinstance(
        vet_network_connect(body, network=BEN_NET, container_owned=True, caller=AMY), Refusal
    )
    assert isinstance(
        vet_network_connect(body, network=MY_NET, container_owned=False, caller=AMY), Refusal
    )
    assert isinstance(
        vet_network_connect(body, network=MY_NET, container_owned=None, caller=AMY), Refusal
    )
    host = Network("h", "h1", "host", "host")
    assert isinstance(
        vet_network_connect(body, network=host, container_owned=True, caller=AMY), Refusal
    )
    assert vet_network_connect(body, network=MY_NET, container_owned=True, caller=AMY) == body


@pytest.mark.parametrize(
    ("params", "own", "refused"),
    [
        ({"networkmode": ("host",)}, False, True),
        ({"networkmode": ("container:x",)}, False, True),
        ({"networkmode": ("bennet",)}, False, True),
        ({"networkmode": ("mynet",)}, True, False),
        ({"networkmode": ("none",)}, False, False),
        ({"cgroupparent": ("/x",)}, False, True),
        ({"remote": ("https://example.org/ctx.tar",)}, False, True),
        ({"isolation": ("hyperv",)}, False, True),
        ({"t": ("a", "b")}, False, False),
    ],
)
def test_builds_stay_in_ordinary_containers(
    params: dict[str, tuple[str, ...]], own: bool, refused: bool
) -> None:
    assert (vet_build(params, own_network=own) is not None) is refused


def test_import_only_from_the_request() -> None:
    assert vet_pull({"fromSrc": ("http://10.0.0.1/x.tar",)}) is not None
    assert vet_pull({"fromSrc": ("-",)}) is None
    assert vet_pull({"fromImage": ("busybox",)}) is None


def test_a_start_judges_devices_again() -> None:
    gpu = {"/dev/nvidia0": frozenset({(195, 0)})}
    ok = PathFacts("/dev/nvidia0", "char", frozenset({(195, 0)}))
    devices = [{"PathOnHost": "/dev/nvidia0"}]
    assert recheck_devices(devices, facts={"/dev/nvidia0": ok}, rules=RULES, gpu_nodes=gpu) is None
    swapped = PathFacts("/dev/nvidia1", "char", frozenset({(195, 1)}), linked=True)
    out = recheck_devices(devices, facts={"/dev/nvidia0": swapped}, rules=RULES, gpu_nodes=gpu)
    assert isinstance(out, Refusal) and out.status == 409
    fuse = [{"PathOnHost": "/dev/fuse"}]
    dir_now = PathFacts("/dev", "dir", frozenset({(195, 0), (1, 1)}), linked=True)
    out = recheck_devices(fuse, facts={"/dev/fuse": dir_now}, rules=RULES, gpu_nodes={})
    assert isinstance(out, Refusal)
    fine = PathFacts("/dev/fuse", "char", frozenset({(10, 229)}))
    assert recheck_devices(fuse, facts={"/dev/fuse": fine}, rules=RULES, gpu_nodes={}) is None
