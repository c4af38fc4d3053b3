"""The gateway as the agent runs it: a socket, an event loop in its own thread.

The socket is the agent's own (created with the configured mode and group) or
one systemd passes in (`LISTEN_FDS`, socket activation): then connections
wait in the kernel's queue while the agent restarts, and nothing is lost,
since the gateway keeps no state of its own beyond a restart.

Each connection's peer is identified by the kernel. Admins are spliced to the
engine as bytes. A process inside a container is refused outright: root in
a container is UID 0 to the kernel, and must not pass for an admin.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import socket
import stat
import threading
from pathlib import Path

import structlog

from controller.agent.gateway.core import AuditWrite, Core, EventPost, GatewayOptions, Recorder
from controller.agent.gateway.engine import Engine
from controller.agent.gateway.http import HEAD_LIMIT, json_response, splice
from controller.agent.gateway.identity import Identities, peer_of
from controller.agent.gateway.proxy import Session
from controller.agent.gateway.views import PolicySource
from controller.agent.procfs import cgroup_path, placement

log = structlog.get_logger("ds01.gateway")
SD_LISTEN_FDS_START = 3


def _activated() -> socket.socket | None:
    """The socket systemd passed (socket activation), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or not os.environ.get("LISTEN_FDS"):
        return None
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise RuntimeError("the socket systemd passed is not a unix stream socket")
    return sock


def listen(options: GatewayOptions) -> tuple[socket.socket, bool]:
    """The listening socket, and whether the gateway created it (and must remove it)."""
    passed = _activated()
    if passed is not None:
        return passed, False
    path = options.socket
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise RuntimeError(f"{path} exists and is not a socket; refusing to replace it")
        path.unlink()  # a stale socket from a previous run
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)  # nobody may connect before the mode below is set
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    if options.socket_group:
        os.chown(path, -1, grp.getgrnam(options.socket_group).gr_gid)
    os.chmod(path, options.socket_mode)
    sock.listen(1024)
    return sock, True


def _own_container() -> str | None:
    try:
        return placement(cgroup_path(Path("/proc/self/cgroup").read_text())).container_id
    except OSError:
        return None


def in_container(pid: int, own: str | None) -> bool:
    """Whether ``pid`` runs in a container (other than the one the gateway itself may run in).

    A peer whose process is gone by the time it is looked at (it connected and
    exited, handing the socket on) cannot be placed: it is treated as inside
    a container, so it is refused rather than taken for a host process.
    """
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return True
    where = placement(cgroup_path(text))
    inside = where.container_id is not None or where.pod_uid is not None
    return inside and where.container_id != own


class Gateway:
    """`start()` binds and serves in a thread; `stop()` ends it and removes the socket."""

    def __init__(
        self,
        options: GatewayOptions,
        source: PolicySource,
        audit: AuditWrite,
        event: EventPost | None,
    ) -> None:
        self.options = options
        self.recorder = Recorder(audit, event)
        self.core = Core(
            options=options,
            source=source,
            engine=Engine(options.engine_socket, options.key),
            identities=Identities(options.admin_group, source.accounts, host_etc=options.host_etc),
            recorder=self.recorder,
        )
        self._own = _own_container()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._created = False
        self._error: BaseException | None = None
        self._connections: set[asyncio.Task[None]] = set()
        """Every connection's task, held strongly (see `_accept`)."""

    def start(self) -> None:
        sock, self._created = listen(self.options)
        self._thread = threading.Thread(
            target=self._serve, args=(sock,), name="docker-gateway", daemon=True
        )
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError(f"gateway did not start: {self._error}") from self._error
        log.info(
            "docker gateway serving",
            socket=str(self.options.socket),
            engine=self.options.engine_socket,
            admins=self.options.admin_group,
        )

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.recorder.close()
        if self._created:
            with contextlib.suppress(FileNotFoundError):
                self.options.socket.unlink()

    def _serve(self, sock: socket.socket) -> None:
        try:
            asyncio.run(self._main(sock))
        except BaseException as error:  # reported to start(), or logged when serving
            self._error = error
            self._ready.set()
            log.exception("docker gateway stopped")

    async def _main(self, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        server = await asyncio.start_unix_server(self._accept, sock=sock, limit=HEAD_LIMIT)
        self._ready.set()
        async with server:
            await self._stopped.wait()
            server.close()
            tasks = asyncio.all_tasks() - {asyncio.current_task()}
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.core.engine.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio holds a connection's task only through its transport while that is
        # registered with the event loop, and stream readers only weakly. Once a client
        # half-closes (`docker run` without -i does at once) its transport leaves the
        # loop, and a task waiting on the engine's side would be garbage: collected, it
        # would cut the user's output off. So the gateway holds every connection's task.
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._serve_connection(reader, writer)
        finally:
            if task is not None:
                self._connections.discard(task)

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            peer = peer_of(writer.get_extra_info("socket"))
            if in_container(peer.pid, self._own):
                message = (
                    "the Docker gateway does not serve processes inside containers (or processes "
                    "that are gone before they could be placed)"
                )
                await self.core.record(
                    "auth.denied",
                    f"uid-{peer.uid}",
                    f"refused a connection from pid {peer.pid} (uid {peer.uid}): {message}",
                    {"pid": peer.pid, "uid": peer.uid},
                )
                writer.write(json_response(403, {"message": message}, close=True))
                await writer.drain()
                writer.close()
                return
            identity = self.core.identities.resolve(peer)
            if identity.admin:
                await self._admin(reader, writer)
                return
            await Session(self.core, reader, writer, identity).run()
        except (ConnectionError, OSError) as error:
            log.debug("connection ended", error=str(error))
        except asyncio.CancelledError:
            # The gateway is stopping. Ending quietly, rather than as a cancelled task:
            # Python 3.11's stream server logs a cancelled connection handler as an error.
            writer.close()
        except Exception:
            log.exception("gateway connection failed")
            writer.close()

    async def _admin(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Admins pass through unchanged: bytes both ways, nothing parsed."""
        try:
            upstream = await asyncio.open_unix_connection(self.options.engine_socket)
        except OSError as error:
            message = f"docker engine unavailable behind the gateway: {error}"
            writer.write(json_response(502, {"message": message}, close=True))
            writer.close()
            return
        try:
            await splice((reader, writer), upstream)
        finally:
            upstream[1].close()
            writer.close()
