"""One user connection: read each request, vet it, relay it to the engine and back.

Admins never get here: their connections are spliced to the engine as bytes.
For everyone else each request head is routed (`routes.py`); a request the
gateway does not need to look into is relayed as it arrives, body and answer
streamed with their own framing. The engine connection is opened on the first
request and kept for the next ones, as the docker CLI keeps its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import structlog

from controller.agent.gateway.chunked import relay_chunked_response
from controller.agent.gateway.core import Core
from controller.agent.gateway.engine import EngineError
from controller.agent.gateway.http import (
    HEAD_LIMIT,
    Head,
    HttpError,
    body_chunks,
    json_response,
    read_body,
    read_head,
    relay_body,
    request_framing,
    response_framing,
    splice,
)
from controller.agent.gateway.identity import Identity
from controller.policy.gateway import Refusal

log = structlog.get_logger("ds01.gateway")

_VERSION = re.compile(r"^(/v[0-9]+(?:\.[0-9]+)?)(/.*)$")
MIN_API = (1, 25)
"""Older API versions let `start` carry a HostConfig; users must speak at least this."""


@dataclass
class Call:
    """A request head with its API version prefix split off."""

    head: Head
    prefix: str
    path: str
    query: str

    @staticmethod
    def of(head: Head) -> Call:
        path, _, query = head.target.partition("?")
        match = _VERSION.match(path)
        prefix, path = (match.group(1), match.group(2)) if match else ("", path)
        return Call(head, prefix, path, query)

    @property
    def method(self) -> str:
        return self.head.method

    def params(self) -> dict[str, str]:
        return dict(parse_qsl(self.query, keep_blank_values=True))

    def retarget(self, path: str | None = None, params: dict[str, str] | None = None) -> None:
        """Point the request elsewhere (a resolved ID, a set name), keeping its version prefix."""
        if path is not None:
            self.path = path
        if params is not None:
            self.query = urlencode(params)
        target = self.prefix + self.path + (f"?{self.query}" if self.query else "")
        self.head.start = (self.head.start[0], target, self.head.start[2])

    def too_old(self) -> bool:
        if not self.prefix:
            return False  # unversioned: the engine's own (newest) version
        major, _, minor = self.prefix[2:].partition(".")
        return (int(major), int(minor or 0)) < MIN_API


class Session:
    """One user's connection to the gateway."""

    def __init__(
        self,
        core: Core,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        identity: Identity,
    ) -> None:
        self.core = core
        self.reader = reader
        self.writer = writer
        self.identity = identity
        self._upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._body_read = False

    # -- the loop ---------------------------------------------------------------

    async def run(self) -> None:
        from controller.agent.gateway.routes import dispatch

        try:
            while True:
                head = await read_head(self.reader)
                if head is None:
                    return
                call = Call.of(head)
                self._body_read = False
                if not await dispatch(self, call):
                    return
        except HttpError as error:
            with contextlib.suppress(OSError):
                await self.send(json_response(400, {"message": f"gateway: {error}"}, close=True))
        except EngineError as error:
            log.warning("engine unavailable", error=str(error)[:300])
            with contextlib.suppress(OSError):
                message = f"docker engine unavailable behind the gateway: {error}"
                await self.send(json_response(502, {"message": message}, close=True))
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        if self._upstream is not None:
            self._upstream[1].close()
            self._upstream = None
        self.writer.close()

    # -- primitives ---------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._upstream is None or self._upstream[1].is_closing():
            try:
                self._upstream = await asyncio.open_unix_connection(
                    self.core.options.engine_socket, limit=HEAD_LIMIT
                )
            except OSError as error:
                raise EngineError(f"{self.core.options.engine_socket}: {error}") from error
        return self._upstream

    async def read_request_body(self, call: Call) -> bytes:
        framing, length = request_framing(call.head)
        self._body_read = True
        return await read_body(self.reader, framing, length, self.core.options.body_limit)

    async def drain_request_body(self, call: Call) -> None:
        """Discard an unread body so the answer is read, not cut off by a reset."""
        if self._body_read:
            return
        framing, length = request_framing(call.head)
        self._body_read = True
        async for _ in body_chunks(self.reader, framing, length):
            pass

    async def forward(self, call: Call, body: bytes | None = None) -> Head:
        """Send the request upstream (``body`` replacing the client's); the response head.

        A kept-alive engine connection may have been closed meanwhile; when
        nothing of the client's body was relayed yet, the request is sent
        again on a new connection.
        """
        head = call.head
        if (head.header("Expect") or "").lower() == "100-continue":
            head.drop_header("Expect")
            if body is None and not self._body_read:
                await self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        if body is not None:
            head.drop_header("Transfer-Encoding")
            head.set_header("Content-Length", str(len(body)))
        framing, length = request_framing(head)
        streams = body is None and framing != "none" and not self._body_read
        for attempt in (0, 1):
            reused = self._upstream is not None and attempt == 0
            reader, writer = await self.upstream()
            try:
                writer.write(head.encode() + (body or b""))
                if streams:
                    self._body_read = True
                    await relay_body(self.reader, writer, framing, length)
                await writer.drain()
                response = await read_head(reader)
            except (ConnectionError, BrokenPipeError) as error:
                response, failure = None, str(error)
            else:
                failure = "the engine closed the connection without answering"
            if response is not None:
                return response
            writer.close()
            self._upstream = None
            if not (reused and not streams):
                raise EngineError(failure)
        raise EngineError("no answer from the engine")

    async def relay(self, call: Call, response: Head) -> bool:
        """Relay the answer (streamed, or spliced when hijacked); whether to keep the connection."""
        framing, length = response_framing(response, call.method)
        await self.send(response.encode())
        reader, writer = await self.upstream()
        if response.status == 101 or framing == "close":
            await splice((self.reader, self.writer), (reader, writer))
            return False
        clean = True
        if framing == "chunked":
            clean = await relay_chunked_response(reader, self.writer)
        else:
            await relay_body(reader, self.writer, framing, length)
        if response.wants_close() or not clean:
            writer.close()
            self._upstream = None
        return not (response.wants_close() or call.head.wants_close())

    async def read_response(self, call: Call, response: Head, limit: int) -> bytes:
        reader, writer = await self.upstream()
        framing, length = response_framing(response, call.method)
        if framing == "close":
            self._upstream = None  # read to the end: the engine closes it
        data = await read_body(reader, framing, length, limit)
        if response.wants_close():
            writer.close()
            self._upstream = None
        return data

    async def passthrough(self, call: Call, body: bytes | None = None) -> bool:
        return await self.relay(call, await self.forward(call, body))

    async def reply(self, call: Call, status: int, payload: Any) -> bool:
        await self.drain_request_body(call)
        close = call.head.wants_close()
        await self.send(json_response(status, payload, close=close))
        return not close

    async def refuse(self, call: Call, refusal: Refusal, **details: Any) -> bool:
        """Answer in Docker's error format, and record it (Event + audit)."""
        caller = self.identity.caller
        self.core.notify(
            refusal.event,
            caller.owner,
            f"refused {call.method} {call.path} of {caller.owner}: {refusal.message}",
            "Warning",
            {
                "option": refusal.option,
                "request": f"{call.method} {call.path}",
                "login": caller.login,
                "uid": caller.uid,
                "message": refusal.message,
                **details,
            },
        )
        return await self.reply(call, refusal.status, {"message": refusal.message})
