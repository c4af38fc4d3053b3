"""`ds01 agent` as its supervisor runs it: a socket passed in, a crash, a restart, nothing lost.

The test stands in for systemd (`deploy/docker-host/ds01-gateway.socket`): it
holds the listening socket and starts the real `ds01 agent` process with it
(`LISTEN_FDS`, socket activation). The apiserver is unreachable throughout, so
accounts and limits come from the agent's saved copy. The agent is killed;
a user's docker CLI connects while nothing serves (the kernel queues the
connection), and is answered by the restarted agent, which still knows who
owns what from the signed labels.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.agent.state import ViewStore
from controller.agent.trust import verify
from controller.api.ratelimit import GPURateLimitSpec
from controller.devcluster.process import wait_until
from controller.policy.effective import NamedLimit
from tests.agent.enforcehost import KEY, StaticCluster
from tests.agent.engine import IMAGE, DockerEngine
from tests.agent.fakehost import FakeHost, misc_node
from tests.agent.gatewayhost import ACCOUNTS, ADMIN_GROUP, AMY, BEN, ensure_group
from tests.agent.users import ensure_user

UNREACHABLE = """apiVersion: v1
kind: Config
clusters: [{name: away, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: agent, user: {token: none}}]
contexts: [{name: away, context: {cluster: away, user: agent}}]
current-context: away
"""


class Supervisor:
    """Holds the gateway's listening socket and (re)starts `ds01 agent` with it, as systemd does."""

    def __init__(self, argv: list[str], sock: socket.socket, log: Path) -> None:
        self.argv = argv
        self.sock = sock
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        fd = self.sock.fileno()
        script = 'exec 3<&"$FD" && LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"'
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                ["bash", "-c", script, "bash", *self.argv],
                env={**os.environ, "FD": str(fd)},
                pass_fds=(fd,),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def supervised(
    fake_host: FakeHost, docker_engine: DockerEngine, tmp_path: Path
) -> Iterator[tuple[Supervisor, Path, dict[str, str]]]:
    fake_host.topology = misc_node()
    fake_host.write()
    tree = fake_host.make_tree(misc=True)
    for login in (AMY, BEN):
        ensure_user(login)
    ensure_group(ADMIN_GROUP, [])
    key = tmp_path / "gateway.key"
    key.write_bytes(KEY)
    key.chmod(0o600)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(UNREACHABLE)
    state = tmp_path / "state"
    limit = GPURateLimitSpec.model_validate(
        {
            "subjects": [{"kind": "User", "name": ACCOUNTS[AMY]}],
            "resources": {"perWorkload": {"memory": {"default": "300Mi"}}},
        }
    )
    ViewStore(state).save(
        StaticCluster(logins={AMY: ACCOUNTS[AMY], BEN: ACCOUNTS[BEN]}).namespaces(),
        [NamedLimit("amy", limit)],
    )
    run_dir = Path(tempfile.mkdtemp(prefix="ds01-gws-", dir="/tmp"))
    run_dir.chmod(0o755)
    path = run_dir / "docker.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    path.chmod(0o666)
    sock.listen(1024)
    homes = {}
    for login in (AMY, BEN):
        home = run_dir / login
        (home / ".docker").mkdir(parents=True)
        uid = ensure_user(login)
        for entry in (home, home / ".docker"):
            os.chown(entry, uid, uid)
        homes[login] = str(home)
    argv = [
        str(Path(sys.executable).parent / "ds01"),
        "agent",
        "--node=gateway-supervised",
        f"--kubeconfig={kubeconfig}",
        f"--nvml-library={fake_host.library}",
        f"--driver-proc-root={tree.proc_root}",
        f"--dev-root={tree.dev_root}",
        f"--docker-socket={docker_engine.socket}",
        f"--gateway-socket={path}",
        f"--gateway-key={key}",
        f"--gateway-admin-group={ADMIN_GROUP}",
        f"--state-dir={state}",
        f"--audit-log={tmp_path / 'audit.jsonl'}",
        "--lifecycle-interval=0",
        f"--runtime-dir={docker_engine.runtime_dir}",
    ]
    supervisor = Supervisor(argv, sock, tmp_path / "agent.log")
    before = set(docker_engine.docker("ps", "-aq", "--no-trunc").split())
    try:
        yield supervisor, path, homes
    finally:
        supervisor.stop()
        sock.close()
        left = set(docker_engine.docker("ps", "-aq", "--no-trunc").split()) - before
        if left:
            docker_engine.docker("rm", "-f", *left)
        subprocess.run(["rm", "-rf", str(run_dir)], check=False)


def _docker(path: Path, homes: dict[str, str], login: str, *args: str) -> subprocess.Popen[bytes]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": homes[login],
        "DOCKER_CONFIG": f"{homes[login]}/.docker",
        "DOCKER_HOST": f"unix://{path}",
    }
    uid = ensure_user(login)
    argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--init-groups", "docker", *args]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _queued(path: Path) -> int:
    """Connections waiting on the listening socket at ``path`` (its Recv-Q in `ss`)."""
    listing = subprocess.run(["ss", "-xlnH"], capture_output=True, text=True, check=True).stdout
    for line in listing.splitlines():
        fields = line.split()
        if str(path) in fields:
            return int(fields[2])
    raise AssertionError(f"{path} is not listening")


def _ok(process: subprocess.Popen[bytes]) -> str:
    out, err = process.communicate(timeout=180)
    assert process.returncode == 0, err.decode()
    return out.decode().strip()


def test_a_restarted_agent_answers_queued_connections_and_knows_everything_it_knew(
    supervised: tuple[Supervisor, Path, dict[str, str]], docker_engine: DockerEngine
) -> None:
    supervisor, path, homes = supervised
    supervisor.start()
    run = ("run", "-d", "--network", "none", IMAGE, "sleep", "600")
    container = _ok(_docker(path, homes, AMY, *run))
    labels = docker_engine.docker("inspect", "--format", "{{json .Config.Labels}}", container)
    name = docker_engine.docker("inspect", "--format", "{{.Name}}", container).lstrip("/")
    stamp = verify(KEY, name, json.loads(labels))
    assert stamp is not None and stamp.owner == ACCOUNTS[AMY]  # from the saved accounts
    memory = docker_engine.docker("inspect", "--format", "{{.HostConfig.Memory}}", container)
    assert int(memory) == 300 * 2**20  # and the saved limits

    supervisor.kill()
    waiting = _docker(path, homes, AMY, "ps", "-q", "--no-trunc")
    wait_until(lambda: _queued(path) > 0, 60, "the CLI's connection to wait in the kernel's queue")
    supervisor.start()
    assert _ok(waiting).split() == [container]
    ben = _ok(_docker(path, homes, BEN, "ps", "-aq"))
    assert ben == ""
    refused = _docker(path, homes, BEN, "rm", "-f", container)
    _, err = refused.communicate(timeout=180)
    assert refused.returncode != 0 and b"is not yours" in err
    assert path.exists()  # the supervisor's socket: the agent never removes it
