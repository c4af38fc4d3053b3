"""`docker create` judged field by field on the canonical body: deny by default. Pure."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.agent.gateway.core import USER_CAPABILITIES
from controller.policy.docker import hostconfig, schemas
from controller.policy.docker.create import CreatePlan, needs, vet_create
from controller.policy.docker.facts import (
    Caller,
    Facts,
    Network,
    PathFacts,
    Reference,
    Refusal,
    Rules,
    Volume,
)
from controller.policy.docker.gojson import decode
from controller.policy.effective import effective_limits

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
AMY = Caller("amy@lab.example", "amy", 1001, 1001, frozenset({1001, 100}))
RULES = Rules(
    bind_roots=("/home/amy",),
    protected=("/proc", "/sys", "/dev", "/run/docker.sock"),
    gpu_numbers=frozenset({(195, 0), (195, 1), (195, 255), (511, 3)}),
    gpu_majors=frozenset({195, 511}),
    runtime="ds01-runc",
    runtimes=frozenset({"runc"}),
    devices=("/dev/fuse",),
    capabilities=USER_CAPABILITIES,
)
LIMITS = effective_limits(AMY.owner, (), [])
CLI_BODIES = json.loads((Path(__file__).parent / "data" / "docker_cli_bodies.json").read_text())


def facts(**found: Any) -> Facts:
    out = Facts.none()
    out.paths.update(found.get("paths", {}))
    out.references.update(found.get("references", {}))
    out.volumes.update(found.get("volumes", {}))
    out.networks.update(found.get("networks", {}))
    return out


def vet(host: dict[str, Any] | None = None, found: Facts | None = None, **config: Any) -> Any:
    body = {"Image": "img", **config, "HostConfig": host or {}}
    canonical = decode(json.dumps(body).encode(), schemas.CREATE)
    return vet_create(
        canonical,
        name="amy-1",
        caller=AMY,
        limits=LIMITS,
        rules=RULES,
        facts=found or Facts.none(),
        now=NOW,
    )


def refused(result: Any, option: str) -> Refusal:
    assert isinstance(result, Refusal), result
    assert result.option == option, result
    return result


def test_every_field_of_hostconfig_and_config_has_exactly_one_rule() -> None:
    """A field added to the schema without a decision would be judged by nobody."""
    tables = [
        hostconfig.FREE_HOST,
        hostconfig.ZERO_HOST,
        hostconfig.NULL_ONLY_HOST,
        hostconfig.CHECKED_HOST,
    ]
    assert sum(len(t) for t in tables) == len(set().union(*tables))
    assert set().union(*tables) == set(schemas.HOST_FIELDS)
    config = set(schemas.CREATE.fields)
    assert config == hostconfig.FREE_CONFIG | hostconfig.CHECKED_CONFIG
    assert not hostconfig.FREE_CONFIG & hostconfig.CHECKED_CONFIG
    endpoint = set(schemas.ENDPOINT.fields)
    assert endpoint == hostconfig.FREE_ENDPOINT | hostconfig.ZERO_ENDPOINT


@pytest.mark.parametrize("index", range(len(CLI_BODIES["create"])))
def test_what_the_cli_sends_for_ordinary_runs_is_judged_on_its_merits(index: int) -> None:
    body = CLI_BODIES["create"][index]["body"]
    canonical = decode(json.dumps(body).encode(), schemas.CREATE)
    found = facts(
        paths={
            "/tmp": PathFacts("/tmp", "dir"),
            "/dev/fuse": PathFacts("/dev/fuse", "char", frozenset({(10, 229)})),
        },
        volumes={"v28": Volume("v28", True, AMY.owner), "v20": Volume("v20", True, AMY.owner)},
    )
    result = vet_create(
        canonical, name="c", caller=AMY, limits=LIMITS, rules=RULES, facts=found, now=NOW
    )
    # /tmp is outside Amy's bind roots and /dev/fuse is on the allow-list; the rest is ordinary.
    host = canonical["HostConfig"]
    if host.get("Binds") or any(m.get("Type") == "bind" for m in host.get("Mounts") or ()):
        assert isinstance(result, Refusal) and "bind roots" in result.message
    elif any(e.startswith("NVIDIA_") for e in canonical.get("Env") or ()):
        refused(result, "--env")
    else:
        assert isinstance(result, CreatePlan), result
        assert result.body["HostConfig"]["Runtime"] == "ds01-runc"


@pytest.mark.parametrize("field", sorted(hostconfig.ZERO_HOST))
@given(data=st.data())
def test_fields_that_reach_past_the_container_are_refused_unless_zero(
    field: str, data: st.DataObject
) -> None:
    shape = schemas.HOST_FIELDS[field]
    samples = {
        "str": st.text(min_size=1, max_size=5),
        "bool": st.just(True),
        "int": st.integers(1, 1000),
        "uint": st.integers(1, 1000),
    }
    kind = getattr(shape, "kind", None)
    if kind in samples:
        value = data.draw(samples[kind])
    elif field == "Annotations":
        value = {"cdi.k8s.io/x": "nvidia.com/gpu=all"}
    elif field == "DeviceCgroupRules":
        value = ["c 195:* rwm"]
    elif field == "BlkioWeightDevice":
        value = [{"Path": "/dev/sda", "Weight": 10}]
    else:
        value = [{"Path": "/dev/sda", "Rate": 1}]
    result = vet({field: value})
    assert isinstance(result, Refusal), (field, value)
    assert vet({field: None}) is not None and not isinstance(vet({field: None}), Refusal)


@pytest.mark.parametrize("field", sorted(hostconfig.NULL_ONLY_HOST))
def test_an_empty_masked_paths_list_unmasks_and_is_refused(field: str) -> None:
    refused(vet({field: []}), "--security-opt systempaths=unconfined")
    assert isinstance(vet({field: None}), CreatePlan)


@pytest.mark.parametrize(
    ("host", "option"),
    [
        ({"CapAdd": ["SYS_ADMIN"]}, "--cap-add"),
        ({"CapAdd": ["cap_sys_ptrace"]}, "--cap-add"),
        ({"CapAdd": ["NET_ADMIN"]}, "--cap-add"),
        ({"CapAdd": "ALL"}, "--cap-add"),
        ({"SecurityOpt": ["seccomp=unconfined"]}, "--security-opt"),
        ({"SecurityOpt": ["apparmor:unconfined"]}, "--security-opt"),
        ({"SecurityOpt": ["label=disable"]}, "--security-opt"),
        ({"SecurityOpt": ["systempaths=unconfined"]}, "--security-opt"),
        ({"PidMode": "host"}, "--pid"),
        ({"IpcMode": "host"}, "--ipc"),
        ({"UTSMode": "host"}, "--uts"),
        ({"UsernsMode": "host"}, "--userns"),
        ({"CgroupnsMode": "host"}, "--cgroupns"),
        ({"NetworkMode": "host"}, "--network"),
        ({"Runtime": "nvidia"}, "--runtime"),
        ({"Isolation": "hyperv"}, "--isolation"),
        ({"OomScoreAdj": -500}, "--oom-score-adj"),
        ({"VolumeDriver": "rexray"}, "--volume-driver"),
        ({"LogConfig": {"Type": "syslog"}}, "--log-driver"),
        ({"LogConfig": {"Type": "json-file", "Config": {"syslog-address": "x"}}}, "--log-opt"),
        ({"StorageOpt": {"dm.basesize": "1G"}}, "--storage-opt"),
        ({"Sysctls": {"kernel.core_pattern": "|/x"}}, "--sysctl"),
        ({"Sysctls": {"vm.overcommit_memory": "1"}}, "--sysctl"),
        ({"PortBindings": {"80/tcp": [{"HostPort": "80"}]}}, "--publish"),
        ({"PortBindings": {"80/tcp": [{"HostPort": "1-65535"}]}}, "--publish"),
        ({"Binds": ["/:/host"]}, "--volume"),
        ({"Binds": ["/etc:/x"]}, "--volume"),
        ({"Binds": ["/home/amy/d:/x:z"]}, "--volume"),
        ({"Binds": ["/home/amy/d:/x:rshared"]}, "--volume"),
        ({"Mounts": [{"Type": "bind", "Source": "/", "Target": "/h"}]}, "--mount"),
        ({"Mounts": [{"Type": "npipe", "Source": "x", "Target": "/h"}]}, "--mount"),
        ({"Mounts": [{"Type": "image", "Source": "x", "Target": "/h"}]}, "--mount"),
        (
            {
                "Mounts": [
                    {
                        "Type": "volume",
                        "Source": "v",
                        "Target": "/v",
                        "VolumeOptions": {
                            "DriverConfig": {
                                "Name": "local",
                                "Options": {"type": "none", "o": "bind", "device": "/"},
                            }
                        },
                    }
                ]
            },
            "--mount",
        ),
        (
            {
                "Mounts": [
                    {
                        "Type": "bind",
                        "Source": "/home/amy/d",
                        "Target": "/h",
                        "BindOptions": {"Propagation": "rshared"},
                    }
                ]
            },
            "--mount",
        ),
        (
            {
                "Mounts": [
                    {
                        "Type": "bind",
                        "Source": "/home/amy/new",
                        "Target": "/h",
                        "BindOptions": {"CreateMountpoint": True},
                    }
                ]
            },
            "--mount",
        ),
        ({"Devices": [{"PathOnHost": "/dev/nvidia0", "PathInContainer": "/dev/x"}]}, "--device"),
        ({"Devices": [{"PathOnHost": "/dev/sg0", "PathInContainer": "/dev/x"}]}, "--device"),
        ({"Devices": [{"PathOnHost": "/dev/fuse", "CgroupPermissions": "rwmx"}]}, "--device"),
        ({"DeviceRequests": [{"Driver": "cdi", "DeviceIDs": ["x"]}]}, "--gpus"),
        ({"RestartPolicy": {"Name": "sometimes"}}, "--restart"),
    ],
)
def test_escapes_are_refused_naming_the_flag(host: dict[str, Any], option: str) -> None:
    found = facts(
        paths={
            "/": PathFacts("/", "dir"),
            "/etc": PathFacts("/etc", "dir"),
            "/home/amy/d": PathFacts("/home/amy/d", "dir"),
            "/home/amy/new": PathFacts("/home/amy/new", "missing"),
            "/dev/nvidia0": PathFacts("/dev/nvidia0", "char", frozenset({(195, 0)})),
            "/dev/sg0": PathFacts("/dev/sg0", "char", frozenset({(21, 0)})),
            "/dev/fuse": PathFacts("/dev/fuse", "char", frozenset({(10, 229)})),
        }
    )
    refused(vet(host, found), option)


def test_a_device_is_passed_on_resolved_and_only_from_a_safe_place() -> None:
    linked = PathFacts("/dev/fuse", "char", frozenset({(10, 229)}), linked=True)
    plan = vet(
        {"Devices": [{"PathOnHost": "/home/amy/f", "PathInContainer": "/dev/fuse"}]},
        facts(paths={"/home/amy/f": linked}),
    )
    assert isinstance(plan, CreatePlan)
    assert plan.body["HostConfig"]["Devices"][0]["PathOnHost"] == "/dev/fuse"
    unsafe = PathFacts("/dev/fuse", "char", frozenset({(10, 229)}), writable=True)
    refused(
        vet({"Devices": [{"PathOnHost": "/dev/fuse"}]}, facts(paths={"/dev/fuse": unsafe})),
        "--device",
    )
    directory = PathFacts("/dev/fuse", "dir", frozenset({(195, 0)}))
    refused(
        vet({"Devices": [{"PathOnHost": "/dev/fuse"}]}, facts(paths={"/dev/fuse": directory})),
        "--device",
    )


def test_other_containers_volumes_and_networks_only_the_caller_s_own() -> None:
    mine = Reference("a" * 64, owned=True, host_mounts=False)
    theirs = Reference("b" * 64, owned=False, host_mounts=False)
    found = facts(
        references={"mine": mine, "theirs": theirs},
        volumes={"benvol": Volume("benvol", True, "ben@lab.example"), "new": Volume("new", False)},
        networks={
            "bennet": Network("bennet", "n1", "bennet", "bridge", "ben@lab.example"),
            "mynet": Network("mynet", "n2", "mynet", "bridge", AMY.owner),
            "hostid": Network("hostid", "n3", "host", "host"),
        },
    )
    for key, flag in (("PidMode", "--pid"), ("IpcMode", "--ipc"), ("NetworkMode", "--network")):
        refused(vet({key: "container:theirs"}, found), flag)
        plan = vet({key: "container:mine"}, found)
        assert (
            isinstance(plan, CreatePlan) and plan.body["HostConfig"][key] == f"container:{'a' * 64}"
        )
        assert vet({key: "container:gone"}, found).status == 404
    refused(vet({"VolumesFrom": ["theirs"]}, found), "--volumes-from")
    refused(vet({"Links": ["theirs:db"]}, found), "--link")
    refused(vet({"Binds": ["benvol:/data"]}, found), "--volume")
    refused(
        vet({"Mounts": [{"Type": "volume", "Source": "benvol", "Target": "/d"}]}, found), "--mount"
    )
    plan = vet({"Binds": ["new:/data"]}, found)
    assert isinstance(plan, CreatePlan) and plan.volumes == ("new",)
    refused(vet({"NetworkMode": "bennet"}, found), "--network")
    refused(vet({"NetworkMode": "hostid"}, found), "--network")
    plan = vet({"NetworkMode": "mynet"}, found, NetworkingConfig={"EndpointsConfig": {"mynet": {}}})
    assert isinstance(plan, CreatePlan)
    assert plan.body["HostConfig"]["NetworkMode"] == "n2"  # pinned by ID
    assert plan.body["NetworkingConfig"]["EndpointsConfig"] == {"n2": {}}
    refused(
        vet({}, found, NetworkingConfig={"EndpointsConfig": {"bennet": {}}}),
        "--network",
    )
    refused(vet({}, found, NetworkingConfig={"EndpointsConfig": {"host": {}}}), "--network")
    refused(
        vet({}, found, NetworkingConfig={"EndpointsConfig": {"mynet": {"DriverOpts": {"a": "b"}}}}),
        "--network",
    )


def test_host_mounts_run_as_the_caller_with_no_new_privileges() -> None:
    found = facts(paths={"/home/amy/d": PathFacts("/home/amy/d", "dir")})
    plan = vet({"Binds": ["/home/amy/d:/d"]}, found)
    assert isinstance(plan, CreatePlan) and plan.host_mounts
    assert plan.body["User"] == "1001:1001"
    assert plan.body["HostConfig"]["SecurityOpt"] == ["no-new-privileges"]
    plan = vet({"Binds": ["/home/amy/d:/d"]}, found, User="1001")
    assert isinstance(plan, CreatePlan) and plan.body["User"] == "1001:1001"
    for user in ("0", "root", "1001:0", "1002", "amy"):
        refused(vet({"Binds": ["/home/amy/d:/d"]}, found, User=user), "--user")
    refused(vet({"Binds": ["/home/amy/d:/d"], "GroupAdd": ["0"]}, found), "--group-add")
    assert isinstance(vet({"Binds": ["/home/amy/d:/d"], "GroupAdd": ["100"]}, found), CreatePlan)


def test_gpus_come_only_through_the_gateway() -> None:
    refused(vet({}, Env=["NVIDIA_VISIBLE_DEVICES=all"]), "--env")
    refused(vet({}, Env=["nvidia_driver_capabilities=all"]), "--env")
    plan = vet({"DeviceRequests": [{"Count": 1, "Capabilities": [["gpu"]]}]})
    assert isinstance(plan, CreatePlan) and plan.gpu is not None and plan.gpu.count == 1
    assert "DeviceRequests" not in plan.body["HostConfig"]
    refused(
        vet(
            {
                "DeviceRequests": [{"Count": 1, "Capabilities": [["gpu"]]}],
                "RestartPolicy": {"Name": "always"},
            }
        ),
        "--restart",
    )


def test_labels_under_the_gateway_prefix_are_the_gateway_s() -> None:
    plan = vet({}, Labels={"gpu.ds01.io/owner": "ben@lab.example", "mine": "1"})
    assert isinstance(plan, CreatePlan)
    assert plan.labels == {"mine": "1", "gpu.ds01.io/workload-type": "docker"}
    refused(vet({}, Labels={"gpu.ds01.io/keep-alive": "forever"}), "--label")


def test_needs_names_every_host_path_container_volume_and_network() -> None:
    body = {
        "HostConfig": {
            "Binds": ["/home/amy/a:/a", "vol1:/v", "/anon"],
            "Mounts": [
                {"Type": "bind", "Source": "/home/amy/b"},
                {"Type": "volume", "Source": "vol2"},
            ],
            "Devices": [{"PathOnHost": "/dev/fuse"}],
            "NetworkMode": "net1",
            "PidMode": "container:c1",
            "VolumesFrom": ["c2:ro"],
            "Links": ["/c3:db"],
        },
        "NetworkingConfig": {"EndpointsConfig": {"net2": {}, "bridge": {}}},
    }
    wanted = needs(body)
    assert wanted.binds == ("/home/amy/a", "/home/amy/b")
    assert wanted.volumes == ("vol1", "vol2")
    assert wanted.devices == ("/dev/fuse",)
    assert wanted.references == ("c1", "c2", "c3")
    assert wanted.networks == ("net1", "net2")
