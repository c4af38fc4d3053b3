"""The catalogue of ways a pod can reach past its container, for the admission matrix.

Each `Escape` is one class of threat, written the way a hostile client writes it
(not the way kubectl's helpers do): where it goes in a pod, the field the
refusal must name, whether Pod Security Admission "baseline" refuses it too,
and whether admins are allowed it (docs/security.md says why those two).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["containers", "initContainers", "ephemeralContainers"]
CONTAINER_NAMES: dict[Kind, str] = {
    "containers": "main",
    "initContainers": "setup",
    "ephemeralContainers": "debugger",
}
SCRATCH = "scratch"
"""An emptyDir every test pod has, so a mount needs no volume of its own."""


def base_pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "main", "image": "busybox:local"}],
            "volumes": [{"name": SCRATCH, "emptyDir": {}}],
        },
    }


def container(kind: Kind) -> dict[str, Any]:
    return {"name": CONTAINER_NAMES[kind], "image": "busybox:local"}


def field_of(kind: Kind) -> str:
    return f"spec.{kind}[name={CONTAINER_NAMES[kind]}]"


Pod = dict[str, Any]
Container = dict[str, Any]


@dataclass(frozen=True)
class Escape:
    """One class of pod escape."""

    name: str
    apply: Callable[[Pod, Container], None]
    """Writes the escape into the pod (pod-level) or the container (container-level)."""
    field: str
    """What the refusal names; ``{c}`` stands for the container's field path."""
    psa: bool
    """Pod Security Admission baseline refuses it by itself."""
    admin: bool = False
    """Admins (adminGroups) are allowed it in account namespaces."""
    container_level: bool = False
    ephemeral: bool = True
    """Possible in an ephemeral container (they have no ports or resources)."""

    def pod(self, kind: Kind = "containers") -> Pod:
        """A pod whose ``kind`` container (or the pod itself) carries this escape."""
        if kind == "ephemeralContainers":
            raise ValueError("ephemeral containers are added with `ephemeral_patch`")
        name = re.sub(r"[^a-z0-9]+", "-", f"escape-{self.name}".lower())[:60].strip("-")
        body = base_pod(name)
        target = body["spec"]["containers"][0]
        if kind == "initContainers":
            target = container(kind)
            body["spec"]["initContainers"] = [target]
        self.apply(body, target)
        return body

    def ephemeral_patch(self) -> dict[str, Any]:
        """A patch of pods/ephemeralcontainers adding a container with this escape."""
        debugger = container("ephemeralContainers")
        self.apply(base_pod("unused"), debugger)
        return {"spec": {"ephemeralContainers": [debugger]}}

    def expected_field(self, kind: Kind = "containers") -> str:
        return self.field.replace("{c}", field_of(kind))


def _pod(path: str, value: Any) -> Callable[[Pod, Container], None]:
    """Set ``spec.<path>`` (dotted) on the pod."""

    def apply(pod: Pod, _: Container) -> None:
        node = pod["spec"]
        *parents, last = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = copy.deepcopy(value)

    return apply


def _container(path: str, value: Any) -> Callable[[Pod, Container], None]:
    def apply(_: Pod, target: Container) -> None:
        node = target
        *parents, last = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = copy.deepcopy(value)

    return apply


def _annotation(key: str, value: str) -> Callable[[Pod, Container], None]:
    def apply(pod: Pod, _: Container) -> None:
        pod["metadata"].setdefault("annotations", {})[key] = value

    return apply


def _volume(name: str, source: dict[str, Any]) -> Callable[[Pod, Container], None]:
    def apply(pod: Pod, _: Container) -> None:
        pod["spec"]["volumes"].append({"name": name, **source})

    return apply


def _resources(resource: str) -> Callable[[Pod, Container], None]:
    return _container("resources", {"limits": {resource: "8"}, "requests": {resource: "8"}})


def _unmasked_proc(pod: Pod, target: Container) -> None:
    pod["spec"]["hostUsers"] = False  # the apiserver allows Unmasked only in a user namespace
    target.setdefault("securityContext", {})["procMount"] = "Unmasked"


def _resource_claim(pod: Pod, target: Container) -> None:
    pod["spec"]["resourceClaims"] = [{"name": "gpus", "resourceClaimTemplateName": "all-gpus"}]
    target["resources"] = {"claims": [{"name": "gpus"}]}


def _device_list_mount(_: Pod, target: Container) -> None:
    target["volumeMounts"] = [
        {"name": SCRATCH, "mountPath": "/var/run/nvidia-container-devices/all"}
    ]


# Capabilities that break out of a container or reach other users' work.
DANGEROUS_CAPABILITIES = (
    "SYS_ADMIN",
    "SYS_PTRACE",
    "SYS_MODULE",
    "DAC_READ_SEARCH",
    "NET_ADMIN",
    "NET_RAW",
    "BPF",
    "PERFMON",
    "SYS_RAWIO",
    "SYS_BOOT",
    "SYS_TIME",
    "IPC_LOCK",
    "SYS_NICE",
    "ALL",
)
# Host paths the review reached, and their spellings that a single clean-up misses.
HOST_PATHS = (
    "/",
    "/etc",
    "/etc/kubernetes",
    "/root",
    "/home",
    "/var/log",
    "/dev",
    "/proc",
    "/var/run/docker.sock",
    "/var/lib/kubelet",
    "/data/unlisted",
    "/////dev",
    "/././dev",
    "/dev/",
    "/dev/.",
    "//etc",
    "etc",
)
VENDOR_RESOURCES = (
    "nvidia.com/gpu",
    "nvidia.com/mig-1g.10gb",
    "amd.com/gpu",
    "gpu.intel.com/i915",
    "habana.ai/gaudi",
)

ESCAPES: tuple[Escape, ...] = (
    Escape("hostNetwork", _pod("hostNetwork", True), "spec.hostNetwork", psa=True),
    Escape("hostPID", _pod("hostPID", True), "spec.hostPID", psa=True),
    Escape("hostIPC", _pod("hostIPC", True), "spec.hostIPC", psa=True),
    Escape(
        "seccomp-unconfined-pod",
        _pod("securityContext.seccompProfile", {"type": "Unconfined"}),
        "spec.securityContext.seccompProfile.type=Unconfined",
        psa=True,
    ),
    Escape(
        "apparmor-unconfined-pod",
        _pod("securityContext.appArmorProfile", {"type": "Unconfined"}),
        "spec.securityContext.appArmorProfile.type=Unconfined",
        psa=True,
    ),
    Escape(
        "seccomp-unconfined-annotation",
        _annotation("seccomp.security.alpha.kubernetes.io/pod", "unconfined"),
        "metadata.annotations[seccomp.security.alpha.kubernetes.io/pod]=unconfined",
        psa=False,
    ),
    Escape(
        "seccomp-unconfined-container-annotation",
        _annotation("container.seccomp.security.alpha.kubernetes.io/main", "unconfined"),
        "metadata.annotations[container.seccomp.security.alpha.kubernetes.io/main]=unconfined",
        psa=False,
    ),
    Escape(
        "apparmor-unconfined-annotation",
        _annotation("container.apparmor.security.beta.kubernetes.io/main", "unconfined"),
        "metadata.annotations[container.apparmor.security.beta.kubernetes.io/main]=unconfined",
        psa=True,
    ),
    Escape(
        "unsafe-sysctl",
        _pod("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "65536"}]),
        "spec.securityContext.sysctls[name=kernel.msgmax]",
        psa=True,
    ),
    Escape(
        "runtime-class",
        _pod("runtimeClassName", "kata"),
        "spec.runtimeClassName: kata",
        psa=False,
        admin=True,
    ),
    Escape(
        "nfs-volume",
        _volume("escape", {"nfs": {"server": "files.lab.example", "path": "/home"}}),
        "spec.volumes[name=escape]",
        psa=False,
        admin=True,
    ),
    Escape(
        "inline-csi-volume",
        _volume("escape", {"csi": {"driver": "nfs.csi.k8s.io"}}),
        "spec.volumes[name=escape].csi.driver=nfs.csi.k8s.io",
        psa=False,
        admin=True,
    ),
    Escape(
        "resource-claim",
        _resource_claim,
        "spec.resourceClaims[name=gpus]",
        psa=False,
        ephemeral=False,
    ),
    *(
        Escape(
            f"hostPath {path}",
            _volume("escape", {"hostPath": {"path": path}}),
            "spec.volumes[name=escape].hostPath.path",
            psa=True,
        )
        for path in HOST_PATHS
    ),
    Escape(
        "privileged",
        _container("securityContext.privileged", True),
        "{c}.securityContext.privileged",
        psa=True,
        container_level=True,
    ),
    *(
        Escape(
            f"capability {cap}",
            _container("securityContext.capabilities", {"add": [cap]}),
            "{c}.securityContext.capabilities.add: " + cap,
            psa=True,
            container_level=True,
        )
        for cap in DANGEROUS_CAPABILITIES
    ),
    Escape(
        "seccomp-unconfined-container",
        _container("securityContext.seccompProfile", {"type": "Unconfined"}),
        "{c}.securityContext.seccompProfile.type=Unconfined",
        psa=True,
        container_level=True,
    ),
    Escape(
        "apparmor-unconfined-container",
        _container("securityContext.appArmorProfile", {"type": "Unconfined"}),
        "{c}.securityContext.appArmorProfile.type=Unconfined",
        psa=True,
        container_level=True,
    ),
    Escape(
        "selinux-super-privileged-type",
        _container("securityContext.seLinuxOptions", {"type": "spc_t"}),
        "{c}.securityContext.seLinuxOptions",
        psa=True,
        container_level=True,
    ),
    Escape(
        "proc-unmasked",
        _unmasked_proc,
        "{c}.securityContext.procMount=Unmasked",
        psa=False,  # baseline allows it in a user namespace; ds01 does not
        container_level=True,
        ephemeral=False,  # hostUsers is fixed when the pod is created
    ),
    Escape(
        "host-port",
        _container("ports", [{"containerPort": 8080, "hostPort": 8080}]),
        "{c}.ports[containerPort=8080].hostPort=8080",
        psa=True,
        container_level=True,
        ephemeral=False,
    ),
    *(
        Escape(
            f"vendor {resource}",
            _resources(resource),
            "{c}.resources.limits[" + resource + "]",
            psa=False,
            container_level=True,
            ephemeral=False,
        )
        for resource in VENDOR_RESOURCES
    ),
    Escape(
        "nvidia-visible-devices",
        _container("env", [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]),
        "{c}.env[name=NVIDIA_VISIBLE_DEVICES]",
        psa=False,
        container_level=True,
    ),
    Escape(
        "nvidia-env-prefix",
        _container("envFrom", [{"prefix": "NVIDIA_", "configMapRef": {"name": "mine"}}]),
        "{c}.envFrom[prefix=NVIDIA_]",
        psa=False,
        container_level=True,
    ),
    Escape(
        "nvidia-device-list-mount",
        _device_list_mount,
        "{c}.volumeMounts[mountPath=/var/run/nvidia-container-devices/all]",
        psa=False,
        container_level=True,
    ),
)
BY_NAME = {e.name: e for e in ESCAPES}
