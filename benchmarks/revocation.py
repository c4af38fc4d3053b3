"""Benchmark: from a revocation written to GPUNode.spec to the kernel saying no.

Through the real path: the admin (as the operator would) patches the node's
spec on a local apiserver; the agent's watch sees it, a pass writes the device
rule and ends the holder. Per trial, in a login-session slice of a real user:

- (a) time until a prober in the slice gets EPERM on a new open;
- (b) time until the process holding the device open is gone.

Also the agent's CPU per enforcement pass. Prints numbers, asserts nothing.
Needs root (cgroups, mknod, users), gcc, Go (the control plane).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import statistics
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kubernetes import config

from controller.agent.main import AgentOptions, build
from controller.agent.runner import Runner
from controller.cli.dev import install
from controller.devcluster.controlplane import LocalCluster
from controller.devcluster.process import wait_until
from controller.runtime import logs
from tests.agent.fakehost import FakeHost, fake_library, misc_node, point_fake_at
from tests.agent.users import ensure_user
from tests.controlplane.kube import Kube, agent_kubeconfig

NODE = "bench-node"
LOGIN = "ds01-bench"


def quantiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (
        f"p50 {statistics.median(ordered) * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms  "
        f"max {ordered[-1] * 1000:7.1f} ms"
    )


class Bench:
    """The cluster, the agent (running as `ds01 agent` does), a user's slice and a GPU."""

    def __init__(self, root: Path, cluster: LocalCluster) -> None:
        self.uid = ensure_user(LOGIN)
        self.user = f"{LOGIN}@lab.example"
        self.admin = Kube(cluster, cluster.kubeconfig)
        self.admin.namespace(
            f"u-{LOGIN}",
            {"gpu.ds01.io/user": self.user.replace("@", "-")},
            {"gpu.ds01.io/user-name": self.user, "gpu.ds01.io/linux-user": LOGIN},
        )
        host = FakeHost(root, fake_library(), misc_node())
        point_fake_at(host.path)
        host.write()
        tree = host.make_tree(misc=True)
        options = AgentOptions(
            node=NODE,
            kubeconfig=agent_kubeconfig(cluster, self.admin, NODE),
            nvml_library=host.library,
            driver_proc_root=tree.proc_root,
            dev_root=tree.dev_root,
            kill_grace_s=1.0,
        )
        api = config.new_client_from_config(config_file=str(options.kubeconfig))
        self.agent, self.closers = build(options, api)
        self.agent.refresh = timedelta(seconds=1)
        self.runner = Runner(
            self.agent, api, None, interval_s=30.0, enforce_interval_s=5.0, docker_socket=None
        )
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.runner.run, args=(self.stop,), daemon=True)
        self.thread.start()
        self.gpu = self.agent.source.inventory().gpus[4]
        self.public = Path(tempfile.mkdtemp(prefix="ds01-dev-", dir="/tmp"))
        self.public.chmod(0o755)
        self.device = self.public / "gpu"
        os.mknod(self.device, stat.S_IFCHR | 0o666, os.stat(self.gpu.device.path).st_rdev)
        self.device.chmod(0o666)
        self.slice = Path("/sys/fs/cgroup/devices/user.slice") / f"user-{self.uid}.slice"
        self.slice.mkdir(parents=True, exist_ok=True)
        self.source = {"kind": "GPUGrant", "name": "bench", "namespace": f"u-{LOGIN}"}

    def close(self) -> None:
        self.stop.set()
        self.runner.trigger.set()
        self.thread.join(timeout=30)
        for close in reversed(self.closers):
            close()
        self.slice.rmdir()
        shutil.rmtree(self.public)

    def trial(self) -> tuple[float, float, float]:
        """(seconds to EPERM, seconds until the holder is gone, CPU of one pass)."""
        far = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        patch(
            self.admin,
            {
                "enforcement": "Enforce",
                "revocations": None,
                "hostAccess": [
                    {
                        "user": self.user,
                        "linuxUser": LOGIN,
                        "deviceUUIDs": [self.gpu.uuid],
                        "until": far,
                        "source": self.source,
                    }
                ],
            },
        )
        generation = self.admin.get("gpunode", NODE)["metadata"]["generation"]
        wait_until(lambda: self.agent.applied_generation == generation, 30, "access applied")
        holder = self.in_slice(f"exec 3<>{self.device}; echo OPEN; exec sleep 600")
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"OPEN"
        prober = self.in_slice(
            f"while :; do if ! command exec 3<>{self.device} 2>/dev/null;"
            " then date +%s.%N; exit; fi; exec 3>&-; done"
        )
        started = time.time()
        patch(
            self.admin,
            {
                "revocations": [
                    {
                        "user": self.user,
                        "deviceUUIDs": [self.gpu.uuid],
                        "reason": "benchmark",
                        "effectiveAt": datetime.now(UTC).isoformat(),
                        "until": far,
                        "source": self.source,
                    }
                ]
            },
        )
        while holder.poll() is None:
            time.sleep(0.002)
        gone = time.time() - started
        out, _ = prober.communicate(timeout=30)
        cpu = time.process_time()
        self.agent.enforce()
        return float(out.decode().strip()) - started, gone, time.process_time() - cpu

    def in_slice(self, script: str) -> subprocess.Popen[bytes]:
        """Run ``script`` as the user in their login slice, from its first instruction."""
        enter = (
            f"echo $$ > {self.slice}/cgroup.procs && exec setpriv --reuid={self.uid} "
            f'--regid={self.uid} --clear-groups sh -c "$0"'
        )
        return subprocess.Popen(["sh", "-c", enter, script], stdout=subprocess.PIPE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    args = parser.parse_args()
    logs.configure("WARNING")
    root = Path(tempfile.mkdtemp(prefix="ds01-bench-revoke-"))
    denied, gone, cpu = [], [], []
    with LocalCluster(root / "cluster") as cluster:
        install(cluster, samples=False)
        bench = Bench(root, cluster)
        try:
            for _ in range(args.trials):
                a, b, c = bench.trial()
                denied.append(a)
                gone.append(b)
                cpu.append(c)
        finally:
            bench.close()
    print(
        f"revocation -> EPERM on a new open, {len(denied)} trials: {quantiles(denied)}"
        "  (target p99 < 2000 ms)"
    )
    print(f"revocation -> holder gone:                  {quantiles(gone)}  (target p99 < 2000 ms)")
    print(f"agent CPU per enforcement pass:             {quantiles(cpu)}")


def patch(admin: Kube, spec: dict[str, object]) -> None:
    admin.kubectl("patch", "gpunode", NODE, "--type=merge", "-p", json.dumps({"spec": spec}))


if __name__ == "__main__":
    main()
