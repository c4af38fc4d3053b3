"""Streams through the gateway: hijacked, chunked and large bodies, relayed faithfully.

Interactive `exec` with a TTY (raw API: the hijack, the raw TTY stream and a
resize), `attach` and `run -i` (stdin's end passed on as a half-close),
`logs -f` (lines arrive while the container runs), `events` (live, and only
the caller's containers), a build with a ~200 MB context and `save | load`.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.gatewayhost import AMY, BEN, IMAGE, GatewayHost

RUN = ("run", "-d", "--network", "none")
MB = 1 << 20


def _until(sock: socket.socket, wanted: bytes, deadline_s: float = 60) -> bytes:
    """Read from a raw stream until ``wanted`` appeared; everything read."""
    seen = b""
    end = time.monotonic() + deadline_s
    while wanted not in seen:
        sock.settimeout(max(0.1, end - time.monotonic()))
        data = sock.recv(65536)
        if not data:
            break
        seen += data
    assert wanted in seen, seen[-500:]
    return seen


def _hijack(sock: socket.socket, path: str, body: object) -> bytes:
    """Start a hijacked stream; what came after the `101` head."""
    payload = json.dumps(body).encode()
    sock.sendall(
        (
            f"POST {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
            f"Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        + payload
    )
    seen = _until(sock, b"\r\n\r\n")
    head, _, rest = seen.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return rest


def test_interactive_exec_with_a_tty(gateway: GatewayHost) -> None:
    container = gateway.ok(AMY, *RUN, IMAGE, "sleep", "600")
    created = gateway.api(
        AMY,
        "POST",
        f"/v1.41/containers/{container}/exec",
        {
            "AttachStdin": True,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": True,
            "Cmd": ["sh"],
        },
    )
    assert created.status == 201, created.body
    exec_id = created.json()["Id"]
    (sock,) = gateway.connect(AMY)
    with sock:
        _hijack(sock, f"/v1.41/exec/{exec_id}/start", {"Detach": False, "Tty": True})
        resized = gateway.api(AMY, "POST", f"/v1.41/exec/{exec_id}/resize?h=41&w=123")
        assert resized.status in (200, 201), resized.body
        sock.sendall(b"busybox tty; busybox stty size; echo $((6 * 7))\n")
        seen = _until(sock, b"42\r\n")  # a TTY turns \n into \r\n: the stream is raw, not framed
        assert b"/dev/pts/" in seen and b"41 123" in seen
        sock.sendall(b"exit\n")
        sock.settimeout(30)
        while sock.recv(65536):
            pass  # the engine ends the stream when the shell exits
    inspected = gateway.api(AMY, "GET", f"/v1.41/exec/{exec_id}/json").json()
    assert inspected["Running"] is False and inspected["ExitCode"] == 0


def test_an_interactive_exec_through_the_cli_with_a_pseudo_terminal(gateway: GatewayHost) -> None:
    """`docker exec -it` from a terminal (util-linux `script` gives it one)."""
    container = gateway.ok(AMY, *RUN, IMAGE, "sleep", "600")
    command = f"docker exec -it {container} sh -c 'busybox tty; echo exit-$((40 + 2))'"
    result = subprocess.run(
        gateway.as_user(AMY, "script", "-qec", command, "/dev/null"),
        env=gateway.environ(AMY),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        check=False,
    )
    out = result.stdout.decode()
    assert result.returncode == 0, (out, result.stderr.decode())
    assert "/dev/pts/" in out and "exit-42" in out


def test_attach_and_run_interactive_pass_stdin_and_its_end(gateway: GatewayHost) -> None:
    container = gateway.ok(
        AMY,
        "run",
        "-d",
        "-i",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "while read line; do echo got $line; done",
    )
    attached = gateway.popen(
        AMY, "attach", container, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert attached.stdin is not None and attached.stdout is not None
        for word in ("hello", "again"):  # a conversation: each answer needs the line before it
            attached.stdin.write(f"{word}\n".encode())
            attached.stdin.flush()
            assert attached.stdout.readline() == f"got {word}\n".encode()
    finally:
        attached.kill()
        attached.wait(30)

    data = os.urandom(8 * MB)
    piped = gateway.docker(
        AMY,
        "run",
        "-i",
        "--rm",
        "--network",
        "none",
        IMAGE,
        "busybox",
        "sha256sum",
        stdin=data,
        timeout=300,
    )
    assert piped.returncode == 0, piped.stderr.decode()
    assert piped.stdout.decode().split()[0] == hashlib.sha256(data).hexdigest()


def test_logs_follow_streams_lines_while_the_container_runs(gateway: GatewayHost) -> None:
    script = (
        "echo first; while [ ! -e /go ]; do sleep 0.05; done; "
        "i=0; while [ $i -lt 1000 ]; do echo line-$i; i=$((i+1)); done; echo last"
    )
    container = gateway.ok(AMY, *RUN, IMAGE, "sh", "-c", script)
    follow = gateway.popen(AMY, "logs", "-f", container, stdout=subprocess.PIPE)
    try:
        assert follow.stdout is not None
        assert follow.stdout.readline() == b"first\n"  # before the container went on
        gateway.ok(AMY, "exec", container, "busybox", "touch", "/go")
        rest = follow.stdout.read().decode().splitlines()
        assert follow.wait(120) == 0
    finally:
        follow.kill()
    assert rest == [f"line-{i}" for i in range(1000)] + ["last"]


@pytest.fixture
def events_of_amy(gateway: GatewayHost) -> Iterator[subprocess.Popen[bytes]]:
    watcher = gateway.popen(
        AMY,
        "events",
        "--filter",
        "type=container",
        "--filter",
        "event=create",
        "--format",
        "{{.Actor.Attributes.name}}",
        stdout=subprocess.PIPE,
    )
    try:
        yield watcher
    finally:
        watcher.kill()
        watcher.wait(30)


def test_events_stream_live_and_only_for_the_callers_containers(
    gateway: GatewayHost, events_of_amy: subprocess.Popen[bytes]
) -> None:
    stdout = events_of_amy.stdout
    assert stdout is not None
    # The watcher subscribes at some point after it started: create probes until one is reported.
    probes: list[str] = []
    end = time.monotonic() + 60
    while not select.select([stdout], [], [], 1)[0]:
        assert time.monotonic() < end, "no event reached the watcher"
        probes.append(f"amy-probe-{len(probes)}")
        gateway.ok(AMY, "create", "--network", "none", "--name", probes[-1], IMAGE, "true")
    assert stdout.readline().decode().strip() in probes
    gateway.ok(BEN, "create", "--network", "none", "--name", "ben-secret", IMAGE, "true")
    gateway.ok(AMY, "create", "--network", "none", "--name", "amy-marker", IMAGE, "true")
    lines = []
    while (line := stdout.readline().decode().strip()) != "amy-marker":
        assert line, "the event stream ended"
        lines.append(line)
    assert "ben-secret" not in lines


def _big_context(home: Path, uid: int, gid: int) -> tuple[Path, str]:
    context = home / "ctx"
    context.mkdir()
    digest = hashlib.sha256()
    with (context / "big").open("wb") as out:
        for _ in range(200):
            block = os.urandom(MB)
            digest.update(block)
            out.write(block)
    (context / "Dockerfile").write_text(
        f"FROM {IMAGE}\nCOPY big /big\nRUN busybox sha256sum /big > /big.sum\n"
    )
    for path in (context, context / "big", context / "Dockerfile"):
        os.chown(path, uid, gid)
    return context, digest.hexdigest()


def test_a_build_with_a_200_mb_context_and_save_load(gateway: GatewayHost) -> None:
    home = gateway.home(AMY)
    stat = home.stat()
    context, digest = _big_context(home, stat.st_uid, stat.st_gid)
    tag = "ds01gw-amy-big:1"
    try:
        built = gateway.docker(
            AMY, "build", "--network", "none", "-t", tag, str(context), timeout=600
        )
        assert built.returncode == 0, built.stderr.decode()[-2000:]
        summed = gateway.ok(AMY, "run", "--rm", "--network", "none", tag, "cat", "/big.sum")
        assert summed.split()[0] == digest
        image_id = gateway.ok(AMY, "image", "inspect", "--format", "{{.Id}}", tag)

        saved = gateway.docker(AMY, "save", tag, timeout=600)
        assert saved.returncode == 0 and len(saved.stdout) > 200 * MB, saved.stderr.decode()
        gateway.ok(AMY, "rmi", tag)
        assert gateway.docker(AMY, "image", "inspect", tag).returncode != 0
        loaded = gateway.docker(AMY, "load", stdin=saved.stdout, timeout=600)
        assert loaded.returncode == 0, loaded.stderr.decode()
        assert gateway.ok(AMY, "image", "inspect", "--format", "{{.Id}}", tag) == image_id
    finally:
        subprocess.run(
            gateway.engine.docker_command("rmi", "-f", tag), capture_output=True, check=False
        )


def test_a_run_without_stdin_keeps_its_output_stream_whatever_the_collector_does(
    gateway: GatewayHost,
) -> None:
    """`docker run` without -i half-closes its side of the attach at once.

    From then on nothing but the gateway holds the connection's task (asyncio
    keeps tasks and stream readers only weakly): it must survive a garbage
    collection while it waits for the container's output.
    """
    script = "echo started; while [ ! -e /go ]; do sleep 0.05; done; echo finished"
    run = gateway.popen(
        AMY,
        "run",
        "--rm",
        "--name",
        "gc-probe",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        script,
        stdout=subprocess.PIPE,
    )
    try:
        assert run.stdout is not None
        assert run.stdout.readline() == b"started\n"
        gc.collect()
        gc.collect()
        gateway.ok(AMY, "exec", "gc-probe", "busybox", "touch", "/go")
        assert run.stdout.read() == b"finished\n"
        assert run.wait(120) == 0
    finally:
        run.kill()
        run.wait(30)
