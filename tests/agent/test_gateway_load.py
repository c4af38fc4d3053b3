"""Load through the gateway: 200 concurrent create/remove cycles, 50 parallel `logs -f` streams.

Each cycle and stream runs on its own connection, opened by a process of the
user (so each is identified through SO_PEERCRED), all released at once.
Nothing may fail, and every stream must carry every line in order.
"""

from __future__ import annotations

import http.client
import os
import socket
import struct
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from controller.devcluster.process import wait_until
from tests.agent.gatewayhost import ACCOUNTS, AMY, BEN, IMAGE, GatewayHost, Reply, request

T = TypeVar("T")
LINES = 2000


def _unlimited(gateway: GatewayHost) -> None:
    gateway.limits(
        (
            "load",
            {
                "subjects": [{"kind": "User", "name": ACCOUNTS[login]} for login in (AMY, BEN)],
                "rates": {"maxWorkloads": 1000},
            },
        )
    )


def _together(count: int, work: Callable[[int, threading.Barrier], T]) -> list[T]:
    """``work(i, barrier)`` for i in range(count), each in its own thread; the results in order."""
    barrier = threading.Barrier(count)
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda i: work(i, barrier), range(count)))


def _create(sock: socket.socket, name: str, body: dict[str, Any]) -> Reply:
    return request(sock, "POST", f"/v1.41/containers/create?name={name}", body)


def test_200_concurrent_creates_and_removes(gateway: GatewayHost) -> None:
    _unlimited(gateway)
    sockets = gateway.connect(AMY, 100) + gateway.connect(BEN, 100)
    body = {"Image": IMAGE, "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}}

    def cycle(index: int, barrier: threading.Barrier) -> tuple[int, int, str]:
        barrier.wait(120)
        with sockets[index] as sock:
            created = _create(sock, f"load-{index}", body)
            if created.status != 201:
                return created.status, 0, created.body.decode()[:200]
            removed = request(sock, "DELETE", f"/v1.41/containers/{created.json()['Id']}?force=1")
            return created.status, removed.status, removed.body.decode()[:200]

    results = _together(len(sockets), cycle)
    failures = [r for r in results if r[:2] != (201, 204)]
    assert not failures, failures[:5]
    assert not any(gateway.exists(f"load-{i}") for i in range(len(sockets)))
    assert gateway.api(AMY, "GET", "/_ping").status == 200  # and it still serves


def _demux(data: bytes) -> bytes:
    """stdout+stderr of a non-TTY log stream (Docker's 8-byte frame headers removed)."""
    out, at = b"", 0
    while at < len(data):
        _, size = struct.unpack(">BxxxL", data[at : at + 8])
        out += data[at + 8 : at + 8 + size]
        at += 8 + size
    return out


def _follow(sock: socket.socket, container: str, opened: threading.Event) -> tuple[int, bytes]:
    """`docker logs -f` on the raw API: its status and everything it carried until it ended."""
    connection = http.client.HTTPConnection("docker", timeout=300)
    connection.sock = sock
    connection.request("GET", f"/v1.41/containers/{container}/logs?follow=1&stdout=1&stderr=1")
    response = connection.getresponse()
    opened.set()
    return response.status, _demux(response.read())


def test_50_parallel_log_streams(gateway: GatewayHost) -> None:
    _unlimited(gateway)
    trigger = gateway.home(AMY) / "trigger"
    trigger.mkdir()
    os.chown(trigger, gateway.home(AMY).stat().st_uid, gateway.home(AMY).stat().st_gid)
    script = (
        f"i=0; while [ $i -lt {LINES} ]; do echo line-$i; i=$((i+1)); done; "
        "while [ ! -e /trigger/go ]; do sleep 0.05; done; echo end"
    )
    body = {
        "Image": IMAGE,
        "Cmd": ["sh", "-c", script],
        "HostConfig": {"NetworkMode": "none", "Binds": [f"{trigger}:/trigger:ro"]},
    }
    count = 50
    sockets = gateway.connect(AMY, count * 2)

    def start(index: int, barrier: threading.Barrier) -> str:
        barrier.wait(120)
        with sockets[index] as sock:
            created = _create(sock, f"logs-{index}", body)
            assert created.status == 201, created.body
            container = str(created.json()["Id"])
            started = request(sock, "POST", f"/v1.41/containers/{container}/start")
            assert started.status == 204, started.body
            return container

    containers = _together(count, start)
    results: list[tuple[int, bytes]] = []
    lock = threading.Lock()
    opened = [threading.Event() for _ in range(count)]

    def stream(index: int) -> None:
        got = _follow(sockets[count + index], containers[index], opened[index])
        with lock:
            results.append(got)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    wait_until(lambda: all(e.is_set() for e in opened), 120, "every log stream to be open")
    assert all(gateway.inspect(c)["State"]["Running"] for c in containers)  # still following
    (trigger / "go").touch()  # every container finishes; every stream must then end
    for thread in threads:
        thread.join(300)
    expected = "".join(f"line-{i}\n" for i in range(LINES)) + "end\n"
    assert len(results) == count
    assert all(status == 200 for status, _ in results)
    assert [out.decode() for _, out in results] == [expected] * count
