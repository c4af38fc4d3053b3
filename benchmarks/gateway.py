"""Benchmark: what the Docker gateway adds, next to the engine's own socket.

A private dockerd, and the agent serving its gateway (as `ds01 agent
--gateway-socket` does, fake NVML, accounts from a static view). One real
Linux user makes every request, once on the engine's socket and once through
the gateway, alternating so drift hits both alike:

- `docker run --rm --network none IMAGE true` with the docker CLI;
- a create/start/wait/remove cycle on the raw API (one kept-alive connection
  per path, as the CLI keeps one), so CLI start-up does not hide the gateway;
- `logs -f` throughput: a finished container's 64 MiB of log lines read
  through a following logs stream by `docker logs -f` (in its own process, as
  a user's is: a reader inside this process would share the gateway's
  interpreter lock and be counted against it).

Prints p50/p99 side by side and the added latency; asserts nothing (DESIGN
section 8: under 5% on `docker run`, `logs -f` at full speed). The user may
reach this private engine's socket directly only for the comparison.

    .venv/bin/python -m benchmarks.gateway [--runs N] [--cycles N] [--log-trials N] [--log-mib N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pwd
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from controller.agent.main import AgentOptions, build
from controller.devcluster.dockerd import IMAGE, Dockerd
from controller.devcluster.fakegpu import a100_node
from controller.runtime import logs
from tests.agent.enforcehost import KEY, StaticCluster
from tests.agent.fakehost import FakeHost, fake_library, point_fake_at
from tests.agent.gatewayhost import connect_as
from tests.agent.users import ensure_user

LOGIN = "ds01-bench-gw"


def quantiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[
        min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))
    ]


def row(what: str, engine: list[float], gateway: list[float]) -> str:
    e50, e99 = quantiles(engine)
    g50, g99 = quantiles(gateway)
    added = (g50 - e50) * 1000
    return (
        f"{what:<34} engine p50 {e50 * 1000:7.1f} ms p99 {e99 * 1000:7.1f} ms | "
        f"gateway p50 {g50 * 1000:7.1f} ms p99 {g99 * 1000:7.1f} ms | "
        f"added p50 {added:+6.1f} ms ({added / (e50 * 1000) * 100:+5.1f}%)"
    )


@dataclass
class Api:
    """One kept-alive HTTP connection on a socket the user connected."""

    connection: http.client.HTTPConnection

    @staticmethod
    def of(sock: socket.socket) -> Api:
        connection = http.client.HTTPConnection("docker", timeout=300)
        connection.sock = sock
        return Api(connection)

    def call(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        self.connection.request(method, path, body=payload, headers=headers)
        response = self.connection.getresponse()
        return response.status, response.read()

    def cycle(self) -> None:
        """Create, start, wait for and remove a container that runs `true`."""
        body = {"Image": IMAGE, "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}}
        status, data = self.call("POST", "/v1.41/containers/create", body)
        assert status == 201, data
        container = json.loads(data)["Id"]
        for method, path, want in (
            ("POST", f"/v1.41/containers/{container}/start", 204),
            ("POST", f"/v1.41/containers/{container}/wait", 200),
            ("DELETE", f"/v1.41/containers/{container}?force=1", 204),
        ):
            status, data = self.call(method, path)
            assert status == want, (path, status, data)


class Bench:
    def __init__(self, root: Path) -> None:
        self.uid = ensure_user(LOGIN)
        self.gid = pwd.getpwnam(LOGIN).pw_gid
        run_dir = Path(tempfile.mkdtemp(prefix="ds01-bgw-", dir="/tmp"))  # short socket paths
        run_dir.chmod(0o755)
        self.run_dir = run_dir
        self.engine = Dockerd(root / "dockerd", run_dir / "engine")
        self.engine.start()
        self.engine.socket.chmod(0o666)  # only so the comparison can use it as the same user
        (run_dir / "engine").chmod(0o755)
        host = FakeHost(root, fake_library(), a100_node())
        point_fake_at(host.path)
        host.write()
        tree = host.make_tree()
        key = root / "gateway.key"
        key.write_bytes(KEY)
        self.gateway_socket = run_dir / "gateway.sock"
        options = AgentOptions(
            node="bench-gateway",
            nvml_library=host.library,
            driver_proc_root=tree.proc_root,
            dev_root=tree.dev_root,
            docker_socket=str(self.engine.socket),
            gateway_key=key,
            audit_log=root / "audit.jsonl",
            state_dir=root / "state",
            lifecycle_interval_s=0,
            gateway_socket=self.gateway_socket,
        )
        self.agent, self.closers = build(options, None)
        self.agent.cluster = StaticCluster(logins={LOGIN: f"{LOGIN}@lab.example"})
        self.agent.views(datetime.now(UTC))
        self.home = run_dir / "home"
        (self.home / ".docker").mkdir(parents=True)
        for path in (self.home, self.home / ".docker"):
            os.chown(path, self.uid, self.gid)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        self.engine.stop()
        subprocess.run(["rm", "-rf", str(self.run_dir)], check=False)

    def paths(self) -> dict[str, Path]:
        return {"engine": self.engine.socket, "gateway": self.gateway_socket}

    def cli(self, path: Path, *args: str) -> float:
        return self._as_user(path, ["docker", *args])[0]

    def follow(self, path: Path, container: str) -> tuple[float, int]:
        """(seconds, bytes) of `docker logs -f` read to its end (the container has finished)."""
        seconds, out = self._as_user(path, ["sh", "-c", 'docker logs -f "$0" | wc -c', container])
        return seconds, int(out)

    def _as_user(self, path: Path, command: list[str]) -> tuple[float, bytes]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "DOCKER_CONFIG": str(self.home / ".docker"),
            "DOCKER_HOST": f"unix://{path}",
        }
        argv = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups"]
        started = time.perf_counter()
        done = subprocess.run([*argv, *command], env=env, check=True, capture_output=True)
        return time.perf_counter() - started, done.stdout

    @contextmanager
    def apis(self) -> Iterator[dict[str, Api]]:
        apis = {name: Api.of(connect_as(LOGIN, path)[0]) for name, path in self.paths().items()}
        try:
            yield apis
        finally:
            for api in apis.values():
                api.connection.close()

    def log_container(self, size: int) -> str:
        """A finished container (the user's, through the gateway) with ``size`` bytes of lines."""
        line = "a line of log output, sixty-four bytes long, give or take a few."
        script = f"busybox yes '{line}' | busybox head -c {size}"
        with self.apis() as apis:
            api = apis["gateway"]
            body = {
                "Image": IMAGE,
                "Cmd": ["sh", "-c", script],
                "HostConfig": {"NetworkMode": "none"},
            }
            status, data = api.call("POST", "/v1.41/containers/create?name=bench-logs", body)
            assert status == 201, data
            container = str(json.loads(data)["Id"])
            api.call("POST", f"/v1.41/containers/{container}/start")
            api.call("POST", f"/v1.41/containers/{container}/wait")
        return container


def alternate(trials: int, measure: Callable[[str], float]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"engine": [], "gateway": []}
    for index in range(trials):
        order = ["engine", "gateway"] if index % 2 == 0 else ["gateway", "engine"]
        for name in order:
            out[name].append(measure(name))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="docker run --rm per path")
    parser.add_argument("--cycles", type=int, default=100, help="raw API cycles per path")
    parser.add_argument("--log-trials", type=int, default=5, help="logs -f reads per path")
    parser.add_argument("--log-mib", type=int, default=64, help="MiB of log lines to follow")
    args = parser.parse_args()
    log_bytes = args.log_mib << 20
    logs.configure("WARNING")
    root = Path(tempfile.mkdtemp(prefix="ds01-bench-gateway-"))
    bench = Bench(root)
    try:
        paths = bench.paths()
        run = ("run", "--rm", "--network", "none", IMAGE, "true")
        for name in paths:  # warm both paths (image layers, CLI caches)
            bench.cli(paths[name], *run)
        runs = alternate(args.runs, lambda name: bench.cli(paths[name], *run))
        with bench.apis() as apis:

            def cycle(name: str) -> float:
                started = time.perf_counter()
                apis[name].cycle()
                return time.perf_counter() - started

            cycles = alternate(args.cycles, cycle)
        container = bench.log_container(log_bytes)
        throughput: dict[str, list[float]] = {"engine": [], "gateway": []}
        relay_cpu: list[float] = []  # this process's CPU seconds per MiB the gateway relayed
        sizes: set[int] = set()
        for index in range(args.log_trials):
            order = ["engine", "gateway"] if index % 2 == 0 else ["gateway", "engine"]
            for name in order:
                cpu = time.process_time()
                seconds, size = bench.follow(paths[name], container)
                if name == "gateway":
                    relay_cpu.append((time.process_time() - cpu) / (size / (1 << 20)))
                throughput[name].append(size / seconds / (1 << 20))
                sizes.add(size)
    finally:
        bench.close()
    print(row(f"docker run --rm ({args.runs} runs)", runs["engine"], runs["gateway"]))
    print(row(f"create/start/wait/rm ({args.cycles})", cycles["engine"], cycles["gateway"]))
    e, g = statistics.median(throughput["engine"]), statistics.median(throughput["gateway"])
    print(
        f"{'logs -f, ' + str(args.log_mib) + ' MiB of lines':<34} "
        f"engine p50 {e:7.1f} MiB/s min {min(throughput['engine']):7.1f} | "
        f"gateway p50 {g:7.1f} MiB/s min {min(throughput['gateway']):7.1f} | "
        f"gateway/engine {g / e * 100:5.1f}%  (bytes read: {sorted(sizes)})"
    )
    print(
        f"{'logs -f, gateway CPU':<34} p50 {statistics.median(relay_cpu) * 1000:6.2f} ms per MiB"
        " relayed (the agent process: what the gateway takes from the engine on a busy host)"
    )
    print(
        "target (docs/architecture/overview.md, Targets): under 5% added on docker run;"
        " logs -f at full speed"
    )


if __name__ == "__main__":
    main()
