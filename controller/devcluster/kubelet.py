"""The embedded node's kubelet: its configuration, identity and what it leaves on the host.

One kubelet per host: the device-plugin directory (`/var/lib/kubelet/device-plugins`)
is a constant of the kubelet, not a setting, so the root directory stays the
default and the manifests' hostPaths are exactly a lab's. Settings chosen for a
development machine and why:

- `failCgroupV1: false`: 1.35+ refuses cgroup v1 unless told (the development
  and CI machines are v1 only); `cgroupDriver: cgroupfs` (no systemd).
- eviction off (0 %) and image garbage collection off (100 %): a nearly full
  disk must not evict the node's own agent or delete the project's image, which
  cannot be pulled again (there is no registry).
- `oomScoreAdj: 0`: nobody here may lower an oom score (no CAP_SYS_RESOURCE).
- x509 client certificates and Webhook authorization on its API, listening on
  the pod bridge's address only (`containerd.NODE_ADDRESS`), never on an
  address other machines reach; read-only port off.
- `nodeStatusUpdateFrequency: 2s`: the device plugin's resources show in
  `allocatable` within seconds of registering.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

ROOT_DIR = Path("/var/lib/kubelet")
DEVICE_PLUGIN_DIR = ROOT_DIR / "device-plugins"
POD_RESOURCES_SOCKET = ROOT_DIR / "pod-resources" / "kubelet.sock"
POD_LOGS_DIR = Path("/var/log/pods")
CGROUP_PARENT = "kubepods"
"""The pods' cgroup under every hierarchy's root (`cgroupRoot: /`)."""
PORT = 10250


def configuration(
    *,
    address: str,
    runtime_endpoint: str,
    client_ca: Path,
    cluster_dns: str | None = None,
) -> dict[str, object]:
    """The KubeletConfiguration (kubelet.config.k8s.io/v1beta1)."""
    config: dict[str, object] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": address,
        "port": PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 0,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(client_ca)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": runtime_endpoint,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": "/",
        "cgroupsPerQOS": True,
        "failCgroupV1": False,
        "failSwapOn": False,
        "oomScoreAdj": 0,
        "evictionHard": {
            "memory.available": "0%",
            "nodefs.available": "0%",
            "nodefs.inodesFree": "0%",
            "imagefs.available": "0%",
            "imagefs.inodesFree": "0%",
        },
        "evictionPressureTransitionPeriod": "0s",
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "imageMinimumGCAge": "876000h",
        "makeIPTablesUtilChains": False,
        "protectKernelDefaults": False,
        "serializeImagePulls": False,
        "nodeStatusUpdateFrequency": "2s",
        "nodeStatusReportFrequency": "1m",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "podLogsDir": str(POD_LOGS_DIR),
        "shutdownGracePeriod": "0s",
        "registerNode": True,
        "maxPods": 110,
        "resolvConf": "/etc/resolv.conf",
        "localStorageCapacityIsolation": True,
    }
    if cluster_dns:
        config["clusterDNS"] = [cluster_dns]
    return config


def write_configuration(path: Path, config: dict[str, object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def argv(
    kubelet: Path,
    *,
    config: Path,
    kubeconfig: Path,
    node_name: str,
    node_ip: str,
    labels: dict[str, str],
    cert_dir: Path,
) -> list[str]:
    return [
        str(kubelet),
        f"--config={config}",
        f"--kubeconfig={kubeconfig}",
        f"--hostname-override={node_name}",
        f"--node-ip={node_ip}",
        f"--node-labels={','.join(f'{k}={v}' for k, v in sorted(labels.items()))}",
        f"--cert-dir={cert_dir}",
        "--v=1",
    ]


def cgroup_leftovers(cgroup_root: Path = Path("/sys/fs/cgroup")) -> list[Path]:
    """Every pod cgroup directory in every hierarchy, deepest first."""
    found: list[Path] = []
    if not cgroup_root.is_dir():
        return found
    for hierarchy in cgroup_root.iterdir():
        top = hierarchy / CGROUP_PARENT
        if top.is_dir():
            found.extend(p for p in top.rglob("*") if p.is_dir())
            found.append(top)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def pids_in(cgroup: Path) -> list[int]:
    try:
        return [int(line) for line in (cgroup / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def remove_cgroups(cgroup_root: Path = Path("/sys/fs/cgroup")) -> list[str]:
    """rmdir every pod cgroup (all processes in them must be gone); what could not go."""
    stuck = []
    for directory in cgroup_leftovers(cgroup_root):
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            continue
        except OSError as error:
            stuck.append(f"{directory}: {error.strerror}")
    return stuck
