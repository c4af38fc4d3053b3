"""One user connection: read each request strictly, judge it, send the gateway's own version.

Admins never get here: their connections are spliced to the engine as bytes.
For everyone else each request head is read strictly (`http.read_request`),
its target decoded as dockerd decodes it and matched against the allow-list
of routes (`controller.policy.docker`); then the handler (`routes.py`)
decides, and what reaches the engine is built by the gateway: its own request
line (canonical path and query), an allow-list of headers, and the body
re-serialised (JSON) or re-framed (tar streams). The engine connection is
opened on the first request and kept for the next ones.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, replace
from typing import Any

import structlog

from controller.agent.gateway.chunked import relay_chunked_response
from controller.agent.gateway.core import Core
from controller.agent.gateway.engine import EngineError
from controller.agent.gateway.http import (
    HEAD_LIMIT,
    LAST_CHUNK,
    Framing,
    Head,
    HttpError,
    chunk,
    json_response,
    read_body,
    read_head,
    read_request,
    relay_body,
    response_framing,
    splice,
    user_chunks,
    user_framing,
)
from controller.agent.gateway.identity import Identity
from controller.policy.docker.facts import Refusal
from controller.policy.docker.gojson import BodyError, Struct, decode
from controller.policy.docker.routes import Match, RouteError, canonical, match
from controller.policy.docker.target import Target, TargetError, parse_target

log = structlog.get_logger("ds01.gateway")

MIN_API = (1, 25)
"""Older API versions let `start` carry a HostConfig; users must speak at least this."""

FORWARDED = ("user-agent", "x-registry-auth", "x-registry-config")
"""Client headers the engine reads and that are passed on as given."""
SESSION_PREFIX = "x-docker-expose-session-"
"""BuildKit's session headers (`POST /session`)."""
WEBSOCKET_PREFIX = "sec-websocket-"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
"""Bodies Go's `Request.FormValue` would read parameters from (they are refused)."""


@dataclass
class Call:
    """A request as the gateway judged it: the client's head, its route, what to forward."""

    head: Head
    found: Match
    framing: Framing
    length: int
    target: Target
    """What is sent to the engine (the route's canonical path and query, names pinned)."""

    @property
    def method(self) -> str:
        return self.head.method

    @property
    def path(self) -> str:
        return self.found.target.path

    def retarget(self, target: Target) -> None:
        self.target = target

    def with_params(self, **params: str) -> None:
        query = dict(self.target.query)
        query.update(params)
        self.target = replace(self.target, query=tuple(query.items()))

    def wants_close(self) -> bool:
        return self.head.wants_close()


def _forwardable(call: Call, lower: str) -> bool:
    """Whether the client's header ``lower`` (lower-cased) is passed on to the engine."""
    if lower in FORWARDED or lower.startswith(SESSION_PREFIX):
        return True
    if lower == "content-type":
        return call.framing != "none"
    upgrade = call.found.route.upgrade
    return upgrade and (lower == "upgrade" or lower.startswith(WEBSOCKET_PREFIX))


def _outgoing(call: Call) -> Head:
    """The head the gateway sends: its own request line and an allow-list of headers."""
    headers: list[tuple[str, str]] = [("Host", "docker")]
    headers += [(n, v) for n, v in call.head.headers if _forwardable(call, n.lower())]
    if call.found.route.upgrade and call.head.header("Upgrade") is not None:
        headers.append(("Connection", "Upgrade"))
    return Head((call.method, call.target.encode(), "HTTP/1.1"), headers)


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
                head = await read_request(self.reader)
                if head is None:
                    return
                framing, length = user_framing(head)
                self._body_read = False
                call = await self._judge(head, framing, length)
                if call is None:
                    if head.wants_close():
                        return
                    continue
                if not await dispatch(self, call):
                    return
        except HttpError as error:
            await self._malformed(str(error))
        except EngineError as error:
            log.warning("engine unavailable", error=str(error)[:300])
            with contextlib.suppress(OSError):
                message = f"docker engine unavailable behind the gateway: {error}"
                await self.send(json_response(502, {"message": message}, close=True))
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self.close()

    async def _malformed(self, message: str) -> None:
        """A request that is not HTTP as dockerd would read it: recorded, answered, closed."""
        caller = self.identity.caller
        await self.core.record(
            "gateway.malformed",
            caller.owner,
            f"refused a malformed request of {caller.owner}: {message}",
            {"login": caller.login, "uid": caller.uid, "message": message},
        )
        with contextlib.suppress(OSError):
            await self.send(json_response(400, {"message": f"gateway: {message}"}, close=True))

    async def _judge(self, head: Head, framing: Framing, length: int) -> Call | None:
        """The request's route, or None once it was refused (body drained, answer sent)."""
        try:
            target = parse_target(head.target)
            found = match(head.method, target)
        except (TargetError, RouteError) as error:
            status = error.status if isinstance(error, RouteError) else 400
            event = "auth.denied" if status == 403 else "gateway.refused"
            await self._refuse_unrouted(
                head, framing, length, Refusal("request", str(error), status, event)
            )
            return None
        call = Call(head, found, framing, length, canonical(found))
        refusal = _check_head(call)
        if refusal is not None:
            await self.refuse(call, refusal)
            return None
        if target.version is not None and target.version < MIN_API:
            refusal = Refusal(
                "api-version",
                f"API {target.version[0]}.{target.version[1]} is too old for this gateway; "
                "use 1.25 or newer",
                status=400,
            )
            await self.refuse(call, refusal)
            return None
        return call

    async def _refuse_unrouted(
        self, head: Head, framing: Framing, length: int, refusal: Refusal
    ) -> None:
        async for _ in user_chunks(self.reader, framing, length):
            pass
        caller = self.identity.caller
        request = f"{head.method} {head.target[:200]}"
        await self.core.record(
            refusal.event,
            caller.owner,
            f"refused {request} of {caller.owner}: {refusal.message}",
            {
                "request": request,
                "login": caller.login,
                "uid": caller.uid,
                "message": refusal.message,
            },
        )
        await self.send(
            json_response(refusal.status, {"message": refusal.message}, close=head.wants_close())
        )

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
        expect = (call.head.header("Expect") or "").lower() == "100-continue"
        if expect and not self._body_read and call.framing != "none":
            await self.send(b"HTTP/1.1 100 Continue\r\n\r\n")  # the client waits for it
        self._body_read = True
        limit = self.core.options.body_limit
        parts: list[bytes] = []
        size = 0
        async for data in user_chunks(self.reader, call.framing, call.length):
            size += len(data)
            if size > limit:
                raise HttpError(f"body larger than {limit} bytes")
            parts.append(data)
        return b"".join(parts)

    async def read_json(self, call: Call, shape: Struct) -> dict[str, Any] | Refusal:
        """The body read as dockerd would read it into ``shape``, canonical; or why not."""
        raw = await self.read_request_body(call)
        try:
            return decode(raw, shape)
        except BodyError as error:
            return Refusal("body", f"gateway: {error}", status=400, event="gateway.refused")

    async def drain_request_body(self, call: Call) -> None:
        """Discard an unread body so the answer is read, not cut off by a reset."""
        if self._body_read:
            return
        self._body_read = True
        async for _ in user_chunks(self.reader, call.framing, call.length):
            pass

    async def forward(self, call: Call, body: bytes | None = None) -> Head:
        """Send the gateway's request upstream (``body``, or the client's re-framed); the answer.

        A kept-alive engine connection may have been closed meanwhile; when
        nothing of the client's body was relayed yet, the request is sent
        again on a new connection.
        """
        head = _outgoing(call)
        expect = (call.head.header("Expect") or "").lower() == "100-continue"
        streams = body is None and call.framing != "none" and not self._body_read
        if body is not None:
            head.headers.append(("Content-Length", str(len(body))))
        elif streams and call.framing == "length":
            head.headers.append(("Content-Length", str(call.length)))
        elif streams:
            head.headers.append(("Transfer-Encoding", "chunked"))
        if expect and streams:
            await self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        for attempt in (0, 1):
            reused = self._upstream is not None and attempt == 0
            reader, writer = await self.upstream()
            try:
                writer.write(head.encode() + (body or b""))
                if streams:
                    self._body_read = True
                    await self._reframe(call, writer)
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

    async def _reframe(self, call: Call, writer: asyncio.StreamWriter) -> None:
        """The client's body, read strictly, written with the gateway's own framing."""
        async for data in user_chunks(self.reader, call.framing, call.length):
            writer.write(chunk(data) if call.framing == "chunked" else data)
            await writer.drain()
        if call.framing == "chunked":
            writer.write(LAST_CHUNK)

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
        return not (response.wants_close() or call.wants_close())

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

    async def answer(self, call: Call, response: Head, data: bytes) -> bool:
        """Send a response whose body the gateway read (and maybe changed)."""
        response.drop_header("Transfer-Encoding")
        response.set_header("Content-Length", str(len(data)))
        await self.send(response.encode() + data)
        return not (response.wants_close() or call.wants_close())

    async def passthrough(self, call: Call, body: bytes | None = None) -> bool:
        return await self.relay(call, await self.forward(call, body))

    async def reply(self, call: Call, status: int, payload: Any) -> bool:
        await self.drain_request_body(call)
        close = call.wants_close()
        await self.send(json_response(status, payload, close=close))
        return not close

    async def refuse(self, call: Call, refusal: Refusal, **details: Any) -> bool:
        """Answer in Docker's error format, after the audit record is written (and an Event)."""
        caller = self.identity.caller
        await self.core.record(
            refusal.event,
            caller.owner,
            f"refused {call.method} {call.path} of {caller.owner}: {refusal.message}",
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


def _check_head(call: Call) -> Refusal | None:
    """What the head itself may not carry: form bodies, bodies where none belong, upgrades."""
    content_type = (call.head.header("Content-Type") or "").lower()
    if content_type.startswith(FORM_TYPES):
        return Refusal(
            "Content-Type",
            f"Content-Type {content_type.split(';')[0]} is not accepted (dockerd would read "
            "parameters from the body)",
            status=400,
            event="gateway.refused",
        )
    route = call.found.route
    if call.framing != "none" and route.body is None:
        return Refusal(
            "body",
            f"{call.method} {call.path} takes no body",
            status=400,
            event="gateway.refused",
        )
    if call.head.header("Upgrade") is not None and not route.upgrade:
        return Refusal(
            "Upgrade",
            f"{call.method} {call.path} cannot be upgraded",
            status=400,
            event="gateway.refused",
        )
    return None
