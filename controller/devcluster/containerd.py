"""A private containerd for the embedded node's kubelet: Debian's containerd, runc and CNI.

It shares nothing with any other containerd on the host (Docker's, the dev
dockerd's): its own root (images, snapshots) in the state directory, its own
state, socket and runc root under a short directory in /run (unix socket paths
are limited to 108 bytes), network namespaces under its state (so `down` finds
every one), and its own CNI configuration. The settings that matter on the
development machines:

- `restrict_oom_score_adj = true`: processes here lack CAP_SYS_RESOURCE, so nobody
  may lower `oom_score_adj`; unrestricted, runc dies creating every pod sandbox
  with "can't get final child's PID from pipe: EOF".
- `SystemdCgroup = false` (no systemd; the kubelet uses cgroupfs too).
- the runtime binary is ``runc`` (a path): the `ds01-runc` front when the node
  closes GPUs at container creation, as Docker hosts do (`runtime/runcfront.py`).
- the sandbox ("pause") image is the project's own image, imported before the
  kubelet starts, so nothing is ever pulled: there is no registry.

Pod network: a `bridge` with `host-local` addresses (10.88.0.0/16, containerd's
own example range) and no masquerading or gateway route out, so pods are
reachable from the host (probes) and reach nothing beyond it. The node's
address is the bridge's own, so the kubelet listens only there and on loopback.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from controller.devcluster.process import ManagedProcess, wait_until

NAMESPACE = "k8s.io"
"""containerd's namespace for the CRI (the kubelet's containers and images)."""
BRIDGE = "ds01-cni0"
POD_SUBNET = "10.88.0.0/16"
NODE_ADDRESS = "10.88.0.1"
"""The bridge's address: the node's InternalIP, where the apiserver reaches the kubelet."""
CNI_BIN_DIRS = (Path("/usr/lib/cni"), Path("/opt/cni/bin"))
TOOLS = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "ip": "iproute2",
}
"""Commands the node needs, and the Debian package that brings each."""
CNI_PLUGINS = ("bridge", "host-local", "loopback")


def cni_bin_dir() -> Path | None:
    """Where the CNI plugins are (Debian: /usr/lib/cni), or None."""
    for directory in CNI_BIN_DIRS:
        if all((directory / plugin).is_file() for plugin in CNI_PLUGINS):
            return directory
    return None


def missing_tools() -> list[str]:
    """Commands and CNI plugins the node lacks, each with its Debian package."""
    missing = [f"{tool} ({package})" for tool, package in TOOLS.items() if not shutil.which(tool)]
    if cni_bin_dir() is None:
        missing.append("CNI plugins (containernetworking-plugins)")
    return missing


@dataclass(frozen=True)
class Containerd:
    """One private containerd: ``root`` in the state directory, ``run_dir`` short, in /run."""

    root: Path
    run_dir: Path
    runc: str
    sandbox_image: str

    @property
    def socket(self) -> Path:
        return self.run_dir / "containerd.sock"

    @property
    def state(self) -> Path:
        return self.run_dir / "state"

    @property
    def runc_root(self) -> Path:
        return self.run_dir / "runc"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni"

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def config(self) -> str:
        bin_dir = cni_bin_dir()
        if bin_dir is None:
            raise RuntimeError("CNI plugins not found: install containernetworking-plugins")
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        runc = f"{cri}.containerd.runtimes.runc"
        return "\n".join(
            [
                "version = 2",
                f'root = "{self.root / "data"}"',
                f'state = "{self.state}"',
                # Snapshotters this kernel or build cannot use; silences their errors.
                'disabled_plugins = ["io.containerd.snapshotter.v1.aufs",'
                ' "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",'
                ' "io.containerd.snapshotter.v1.devmapper"]',
                "[grpc]",
                f'  address = "{self.socket}"',
                '[plugins."io.containerd.internal.v1.opt"]',
                f'  path = "{self.root / "opt"}"',
                f"[{cri}]",
                f'  sandbox_image = "{self.sandbox_image}"',
                "  restrict_oom_score_adj = true",
                "  netns_mounts_under_state_dir = true",
                "  disable_tcp_service = true",
                '  stream_server_address = "127.0.0.1"',
                f"[{cri}.containerd]",
                '  snapshotter = "overlayfs"',
                '  default_runtime_name = "runc"',
                f"[{runc}]",
                '  runtime_type = "io.containerd.runc.v2"',
                f"[{runc}.options]",
                f'  BinaryName = "{self.runc}"',
                f'  Root = "{self.runc_root}"',
                "  SystemdCgroup = false",
                f"[{cri}.cni]",
                f'  bin_dir = "{bin_dir}"',
                f'  conf_dir = "{self.cni_conf_dir}"',
                "",
            ]
        )

    def network(self) -> dict[str, object]:
        """The one CNI network: a bridge the pods hang on, addresses from POD_SUBNET."""
        return {
            "cniVersion": "0.4.0",
            "name": "ds01-pods",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_ADDRESS}]],
                        "dataDir": str(self.run_dir / "ipam"),
                    },
                },
                {"type": "loopback"},
            ],
        }

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config())
        (self.cni_conf_dir / "10-ds01-pods.conflist").write_text(
            json.dumps(self.network(), indent=2)
        )

    def argv(self) -> list[str]:
        containerd = shutil.which("containerd")
        if containerd is None:
            raise RuntimeError("containerd not found: install Debian's containerd")
        return [containerd, f"--config={self.config_path}", "--log-level=warn"]

    def ctr(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        """Run `ctr` against this containerd in the CRI namespace; its stdout."""
        result = subprocess.run(
            ["ctr", f"--address={self.socket}", f"--namespace={NAMESPACE}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def answers(self) -> bool:
        """Whether the CRI plugin is loaded and serving."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2)
                sock.connect(str(self.socket))
        except OSError:
            return False
        listing = subprocess.run(
            ["ctr", f"--address={self.socket}", "plugins", "ls"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
        return any(
            line.split()[:2] == ["io.containerd.grpc.v1", "cri"] and line.split()[-1] == "ok"
            for line in listing.splitlines()
        )

    def wait_ready(self, process: ManagedProcess, deadline_s: float = 60) -> None:
        def ready() -> bool:
            if not process.alive():
                raise RuntimeError(f"containerd exited during start-up:\n{process.log_tail()}")
            return self.answers()

        wait_until(ready, deadline_s, "containerd's CRI plugin to serve", 0.2)

    def has_image(self, name: str) -> bool:
        return normalized(name) in self.ctr("images", "list", "--quiet").split()

    def import_image(self, archive: Path, name: str) -> None:
        """Import a docker-archive tar unless ``name`` is there with the same contents.

        The archive's file name carries its content key (`devcluster.image`); the
        last one imported under each name is recorded in the root, which outlives
        `down`, so a warm start imports only an image that changed.
        """
        stamp = self.root / f".imported-{name.replace('/', '_').replace(':', '_')}"
        if self.has_image(name) and stamp.exists() and stamp.read_text() == archive.name:
            return
        self.ctr("images", "import", str(archive), timeout=600)
        if not self.has_image(name):
            raise RuntimeError(f"importing {archive} did not give image {name}")
        stamp.write_text(archive.name)

    def record(self) -> dict[str, str]:
        """What `down` needs to clean up after this containerd (see `node.teardown`)."""
        return {
            "root": str(self.root),
            "run_dir": str(self.run_dir),
            "state": str(self.state),
            "socket": str(self.socket),
        }


def normalized(name: str) -> str:
    """An image name as containerd stores it (Docker Hub's defaults made explicit)."""
    first = name.split("/", 1)[0]
    if "/" not in name or not ("." in first or ":" in first or first == "localhost"):
        name = f"docker.io/{name if '/' in name else 'library/' + name}"
    return name


def ensure_bridge() -> None:
    """Create the pod bridge with the node's address, before the kubelet needs the address.

    The CNI bridge plugin would create it with the first pod; the kubelet needs an
    address to listen on and report before any pod exists.
    """
    if not Path(f"/sys/class/net/{BRIDGE}").exists():
        _ip("link", "add", BRIDGE, "type", "bridge")
    prefix = POD_SUBNET.split("/")[1]
    addresses = _ip("-o", "-4", "addr", "show", "dev", BRIDGE)
    if f"{NODE_ADDRESS}/{prefix}" not in addresses:
        _ip("addr", "add", f"{NODE_ADDRESS}/{prefix}", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")


def delete_bridge() -> None:
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        _ip("link", "delete", BRIDGE)


def _ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def task_dirs(state: Path) -> list[Path]:
    return sorted((state / "io.containerd.runtime.v2.task" / NAMESPACE).glob("*/"))


def shim_pids(state: Path, socket: Path) -> list[int]:
    """The pids of the runc shims this containerd started (they outlive it).

    containerd 1.6 keeps no shim pid file: a shim is the parent of its task's
    init process, and names this containerd's socket on its command line, so
    this must run before the tasks' processes are killed.
    """
    pids = set()
    for task in task_dirs(state):
        try:
            init = int((task / "init.pid").read_text().strip())
            stat = Path(f"/proc/{init}/stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            cmdline = Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if b"containerd-shim" in cmdline[0] and str(socket).encode() in cmdline:
            pids.add(parent)
    return sorted(pids)


def shim_sockets(state: Path) -> list[Path]:
    """The shims' own sockets (in /run/containerd/s), which a killed shim leaves behind."""
    sockets = []
    for task in task_dirs(state):
        try:
            address = (task / "address").read_text().strip()
        except OSError:
            continue
        if address.startswith("unix://"):
            sockets.append(Path(address.removeprefix("unix://")))
    return sockets


def clear_ipam(run_dir: Path) -> None:
    """Forget host-local's leases (every pod is gone when this is called)."""
    shutil.rmtree(run_dir / "ipam", ignore_errors=True)
