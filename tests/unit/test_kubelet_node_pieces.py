"""Pure pieces of the real-node work, tested without a node.

- `ds01-runc` for containerd (`--source=cri`): a pod's container is named by
  containerd's annotations, a system namespace's container is left alone without
  asking (the agent's own container starts while no agent answers), and Docker's
  front believes no annotation (users can set them there).
- The device plugin's paths: the kubelet gets host paths, the container `/dev` ones.
- The minimum Kubernetes version the operator enforces at start.
- The Docker gateway in a pod reads the host's users from the host's files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from controller.agent.deviceplugin.allocate import container_path, host_path
from controller.agent.gateway.identity import Accounts, Identities, Peer
from controller.agent.inventory import DeviceNode
from controller.agent.ociwrapper import POD_ANNOTATIONS, SYSTEM_NAMESPACES, pod_of
from controller.agent.runtimegate import RequestError, read_pod
from controller.policy.attribution import SYSTEM_NAMESPACES as ATTRIBUTION_SYSTEM
from controller.policy.devicerules import RUNC_APPENDED, emulate, parse_rules
from controller.runtime import kubeversion
from controller.runtime.runcfront import CRI, front_script

ROOT = Path(__file__).resolve().parents[2]
GPU = (10, 229)


def privileged_bundle(tmp_path: Path, namespace: str | None) -> Path:
    """A bundle as containerd writes one for a privileged pod container: allow everything."""
    directory = tmp_path / "bundle"
    directory.mkdir()
    config: dict[str, object] = {
        "process": {"user": {"uid": 0}},
        "linux": {"resources": {"devices": [{"allow": True, "access": "rwm"}]}, "devices": []},
    }
    if namespace is not None:
        config["annotations"] = {
            POD_ANNOTATIONS["namespace"]: namespace,
            POD_ANNOTATIONS["name"]: "debug",
            POD_ANNOTATIONS["container"]: "shell",
        }
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def create(tmp_path: Path, directory: Path, source: str) -> int:
    """The wrapper's create path, agent away (its socket absent), the last table: Enforce."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(exist_ok=True)
    (runtime / "gpu-devices.json").write_text(
        json.dumps({"mode": "Enforce", "numbers": [list(GPU)]})
    )
    launch = (
        "import sys; sys.path.insert(0, sys.argv.pop(1)); "
        "from controller.agent.ociwrapper import main; sys.exit(main())"
    )
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", launch, str(ROOT), f"--runtime-dir={runtime}",
         "--runc=true", "--timeout=0.5", f"--source={source}", "--",
         "create", "--bundle", str(directory), "cid"],
        check=False,
    ).returncode  # fmt: skip


def opens_gpu(directory: Path) -> bool:
    rules = json.loads((directory / "config.json").read_text())["linux"]["resources"]["devices"]
    state = emulate([*parse_rules(rules), *RUNC_APPENDED])
    return state.allows("c", GPU, "r") or state.allows("c", GPU, "w")


def test_a_system_namespaces_pod_container_is_left_as_containerd_made_it(tmp_path: Path) -> None:
    directory = privileged_bundle(tmp_path, "ds01-system")
    assert create(tmp_path, directory, CRI) == 0
    assert opens_gpu(directory)  # the agent's own container keeps its GPUs


def test_any_other_privileged_pod_container_is_closed_when_no_agent_answers(
    tmp_path: Path,
) -> None:
    directory = privileged_bundle(tmp_path, "ops")
    assert create(tmp_path, directory, CRI) == 0
    assert not opens_gpu(directory)


def test_dockers_front_believes_no_namespace_annotation(tmp_path: Path) -> None:
    directory = privileged_bundle(tmp_path, "ds01-system")  # set by a user, not containerd
    assert create(tmp_path, directory, "docker") == 0
    assert not opens_gpu(directory)


def test_the_cri_front_passes_its_source_and_dockers_is_unchanged() -> None:
    assert "--source=cri -- " in front_script(source=CRI)
    assert "--source" not in front_script()


def test_the_wrapper_and_the_agent_agree_on_the_system_namespaces() -> None:
    assert SYSTEM_NAMESPACES == ATTRIBUTION_SYSTEM


def test_a_pod_is_named_only_by_containerds_annotations() -> None:
    annotated = {
        "annotations": {
            POD_ANNOTATIONS["namespace"]: "u-kim",
            POD_ANNOTATIONS["name"]: "train",
            POD_ANNOTATIONS["container"]: "main",
        }
    }
    assert pod_of(annotated) == {"namespace": "u-kim", "name": "train", "container": "main"}
    assert pod_of({"annotations": {POD_ANNOTATIONS["name"]: "train"}}) is None
    assert pod_of({}) is None
    assert read_pod({"pod": {"namespace": "u-kim", "name": "train"}}) == ("u-kim", "train")
    assert read_pod({}) is None
    with pytest.raises(RequestError, match="pod: must name"):
        read_pod({"pod": {"namespace": "u-kim"}})


@pytest.mark.parametrize(
    ("seen", "agent_root", "host_root", "kubelet", "container"),
    [
        ("/host/dev/nvidia0", "/host/dev", "/dev", "/dev/nvidia0", "/dev/nvidia0"),
        ("/dev/nvidia0", "/dev", "/dev", "/dev/nvidia0", "/dev/nvidia0"),
        ("/host/dev/nvidia-caps/nvidia-cap21", "/host/dev", "/var/sim/dev",
         "/var/sim/dev/nvidia-caps/nvidia-cap21", "/dev/nvidia-caps/nvidia-cap21"),
    ],
)  # fmt: skip
def test_the_kubelet_gets_host_paths_and_the_container_its_dev_names(
    seen: str, agent_root: str, host_root: str, kubelet: str, container: str
) -> None:
    node = DeviceNode(seen, 195, 0)
    assert host_path(node, agent_root, host_root) == kubelet
    assert container_path(node, agent_root) == container


@pytest.mark.parametrize(
    ("version", "refused"),
    [
        ("v1.36.3", False),
        ("v1.36.0+k3s1", False),
        ("v1.37.0-rc.1", False),
        ("v2.0.0", False),
        ("v1.35.4", True),
        ("v1.35.0-eks-4c9a2f1", True),
        ("v1.9.0", True),
    ],
)
def test_the_operator_refuses_clusters_older_than_1_36_naming_why(
    version: str, refused: bool
) -> None:
    why = kubeversion.refusal(version)
    assert (why is not None) == refused
    if why:
        assert "Kubernetes >= 1.36" in why and "MutatingAdmissionPolicy" in why and version in why


def test_a_gateway_in_a_pod_knows_the_hosts_users_from_the_hosts_files(tmp_path: Path) -> None:
    """In a pod the process's own user database is the image's; the host's /etc is mounted."""
    (tmp_path / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nkim:x:984:982::/home/kim:/bin/sh\n"
    )
    (tmp_path / "group").write_text("kim:x:982:\nds01-admins:x:990:kim\nother:x:991:bo\n")
    accounts = Accounts(by_login={"kim": "kim@lab.example"}, groups={"kim@lab.example": ("r",)})
    identities = Identities("ds01-admins", lambda: accounts, host_etc=tmp_path)
    kim = identities.resolve(Peer(pid=1, uid=984, gid=982))
    assert (kim.caller.login, kim.account, kim.home) == ("kim", "kim@lab.example", "/home/kim")
    assert kim.caller.gids == frozenset({982, 990}) and kim.admin  # an admin by group
    nobody = identities.resolve(Peer(pid=1, uid=4242, gid=4242))
    assert (nobody.caller.login, nobody.account, nobody.admin) == (None, None, False)
