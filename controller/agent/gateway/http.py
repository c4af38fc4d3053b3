"""Just enough HTTP/1.1 to stand between the docker CLI and the engine, faithfully.

The gateway reads each request's head (to route and vet it) and relays the
rest as it arrives: bodies keep their framing (length, chunked) and are never
buffered unless the gateway must read them (a create body, a container list);
responses are relayed the same way; a hijacked connection (`101 Switching
Protocols`, or Docker's raw-stream answers that have no framing at all) is
spliced in both directions, half-closes included, as `docker attach` and
`docker exec -i` need.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

HEAD_LIMIT = 1 << 20
"""Longest request or response head (registry auth headers can be long)."""
COPY_SIZE = 1 << 18

Framing = Literal["none", "length", "chunked", "close"]


class HttpError(Exception):
    """A message that is not HTTP/1.1 as the gateway can relay it."""


@dataclass
class Head:
    """A request or response head: its start line's three parts and its headers in order."""

    start: tuple[str, str, str]
    headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def method(self) -> str:
        return self.start[0]

    @property
    def target(self) -> str:
        return self.start[1]

    @property
    def status(self) -> int:
        return int(self.start[1])

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)

    def set_header(self, name: str, value: str) -> None:
        self.drop_header(name)
        self.headers.append((name, value))

    def drop_header(self, name: str) -> None:
        lowered = name.lower()
        self.headers = [(k, v) for k, v in self.headers if k.lower() != lowered]

    def encode(self) -> bytes:
        lines = [" ".join(self.start), *(f"{k}: {v}" for k, v in self.headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def wants_close(self) -> bool:
        connection = (self.header("Connection") or "").lower()
        return "close" in connection or self.start[0] == "HTTP/1.0" or self.start[2] == "HTTP/1.0"


async def read_head(reader: asyncio.StreamReader) -> Head | None:
    """The next response head from the engine; None when it closed between messages."""
    try:
        data = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if not error.partial.strip():
            return None
        raise HttpError("connection closed in the middle of a message head") from None
    except asyncio.LimitOverrunError:
        raise HttpError("message head too long") from None
    lines = data[:-4].decode("latin-1").split("\r\n")
    while lines and not lines[0]:
        lines.pop(0)
    parts = lines[0].split(" ", 2) if lines else []
    if len(parts) < 2:
        raise HttpError(f"malformed start line {lines[0][:80] if lines else ''!r}")
    start = (parts[0], parts[1], parts[2] if len(parts) > 2 else "")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise HttpError(f"malformed header line {line[:80]!r}")
        headers.append((name.strip(), value.strip()))
    return Head(start, headers)


_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE"})
_SINGLE = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "content-type",
        "connection",
        "upgrade",
        "expect",
        "x-registry-auth",
        "x-registry-config",
    }
)
"""Headers a request may carry once: a second copy could be read either way."""


async def read_request(reader: asyncio.StreamReader) -> Head | None:
    """The next request head from a user, read strictly; None when they closed between requests.

    Go's HTTP server (dockerd) ends a line at a bare LF and would see a second
    request where a lenient reader sees one; so every line must end in CRLF,
    no bare CR or LF may appear, the request line is exactly three parts,
    header names are tokens, folded lines and repeated framing headers are
    refused. The gateway then sends only its own re-serialisation.
    """
    try:
        data = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if not error.partial.strip(b"\r\n"):
            return None
        raise HttpError("connection closed in the middle of a request head") from None
    except asyncio.LimitOverrunError:
        raise HttpError("request head too long") from None
    head = data[:-4]
    while head.startswith(b"\r\n"):  # stray CRLF between requests (RFC 9112 section 2.2)
        head = head[2:]
    if b"\r" in head.replace(b"\r\n", b"") or b"\n" in head.replace(b"\r\n", b""):
        raise HttpError("bare CR or LF in the request head; lines end with CRLF")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not all(parts):
        raise HttpError(f"malformed request line {lines[0][:80]!r}")
    method, target, version = (p.decode("latin-1") for p in parts)
    if method not in _METHODS:
        raise HttpError(f"method {method[:20]!r} is not accepted")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(f"protocol {version[:20]!r} is not accepted (HTTP/1.1 or HTTP/1.0)")
    headers: list[tuple[str, str]] = []
    seen: set[str] = set()
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            raise HttpError(f"malformed header line {line[:80]!r}")
        text = value.strip(b" \t")
        if any((c < 0x20 and c != 0x09) or c == 0x7F for c in text):
            raise HttpError(f"control character in header {name.decode('latin-1')!r}")
        key = name.decode("latin-1")
        if key.lower() in _SINGLE and key.lower() in seen:
            raise HttpError(f"header {key!r} is given twice")
        seen.add(key.lower())
        headers.append((key, text.decode("latin-1")))
    return Head((method, target, version), headers)


_LENGTH = re.compile(r"^[0-9]{1,18}$")
_CHUNK_LINE = re.compile(rb"^([0-9A-Fa-f]{1,16})\r\n$")


def user_framing(head: Head) -> tuple[Framing, int]:
    """How a user's request body is delimited; framing two parsers could read apart is refused."""
    encoding = head.header("Transfer-Encoding")
    length = head.header("Content-Length")
    if encoding is not None:
        if encoding.lower() != "chunked" or head.start[2] != "HTTP/1.1":
            raise HttpError(f"Transfer-Encoding {encoding[:40]!r} is not accepted (only chunked)")
        if length is not None:
            raise HttpError("both Transfer-Encoding and Content-Length: send one")
        return "chunked", 0
    if length is not None:
        if not _LENGTH.match(length):
            raise HttpError(f"bad Content-Length {length[:40]!r}")
        size = int(length)
        return ("length", size) if size > 0 else ("none", 0)
    return "none", 0


async def user_chunks(
    reader: asyncio.StreamReader, framing: Framing, length: int
) -> AsyncIterator[bytes]:
    """A user's request body as it arrives, framing removed, chunked framing read strictly."""
    if framing != "chunked":
        async for data in body_chunks(reader, framing, length):
            yield data
        return
    while True:
        match = _CHUNK_LINE.match(await reader.readline())
        if match is None:
            raise HttpError("malformed chunk size line (hex digits, then CRLF)")
        size = int(match.group(1), 16)
        if size == 0:
            if await reader.readexactly(2) != b"\r\n":
                raise HttpError("trailers after a chunked body are not accepted")
            return
        data = await reader.readexactly(size + 2)
        if data[-2:] != b"\r\n":
            raise HttpError("a chunk does not end with CRLF")
        yield data[:-2]


def request_framing(head: Head) -> tuple[Framing, int]:
    """How a request's body is delimited."""
    if "chunked" in (head.header("Transfer-Encoding") or "").lower():
        return "chunked", 0
    length = head.header("Content-Length")
    if length is not None:
        try:
            size = int(length)
        except ValueError:
            raise HttpError(f"bad Content-Length {length!r}") from None
        return ("length", size) if size > 0 else ("none", 0)
    return "none", 0


def response_framing(head: Head, method: str) -> tuple[Framing, int]:
    """How a response's body is delimited; `close` also means a hijacked stream."""
    status = head.status
    if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
        return "none", 0
    if "chunked" in (head.header("Transfer-Encoding") or "").lower():
        return "chunked", 0
    length = head.header("Content-Length")
    if length is not None:
        return ("length", int(length)) if int(length) > 0 else ("none", 0)
    return "close", 0


async def _copy_exact(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    while n > 0:
        data = await reader.read(min(n, COPY_SIZE))
        if not data:
            raise HttpError("connection closed in the middle of a body")
        n -= len(data)
        writer.write(data)
        await writer.drain()


async def relay_body(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, framing: Framing, length: int
) -> None:
    """Copy one body as it arrives, keeping its framing (chunk boundaries included)."""
    if framing == "length":
        await _copy_exact(reader, writer, length)
    elif framing == "chunked":
        while True:
            line = await reader.readline()
            if not line.endswith(b"\n"):
                raise HttpError("connection closed in the middle of a chunked body")
            size = _chunk_size(line)
            if size == 0:
                writer.write(line)
                while True:  # trailers, then the empty line
                    trailer = await reader.readline()
                    if not trailer.endswith(b"\n"):
                        raise HttpError("connection closed in a chunked body's trailer")
                    writer.write(trailer)
                    if trailer in (b"\r\n", b"\n"):
                        break
                await writer.drain()
                return
            writer.write(line)
            await _copy_exact(reader, writer, size + 2)
    elif framing == "close":
        while data := await reader.read(COPY_SIZE):
            writer.write(data)
            await writer.drain()


def _chunk_size(line: bytes) -> int:
    try:
        return int(line.split(b";", 1)[0].strip(), 16)
    except ValueError:
        raise HttpError(f"bad chunk size line {line[:40]!r}") from None


async def body_chunks(
    reader: asyncio.StreamReader, framing: Framing, length: int
) -> AsyncIterator[bytes]:
    """A body's payload as it arrives, framing removed."""
    if framing == "length":
        left = length
        while left > 0:
            data = await reader.read(min(left, COPY_SIZE))
            if not data:
                raise HttpError("connection closed in the middle of a body")
            left -= len(data)
            yield data
    elif framing == "chunked":
        while True:
            line = await reader.readline()
            if not line.endswith(b"\n"):
                raise HttpError("connection closed in the middle of a chunked body")
            size = _chunk_size(line)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return
            data = await reader.readexactly(size + 2)
            yield data[:-2]
    elif framing == "close":
        while data := await reader.read(COPY_SIZE):
            yield data


async def read_body(
    reader: asyncio.StreamReader, framing: Framing, length: int, limit: int
) -> bytes:
    """A whole body (framing removed), refused past ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    async for data in body_chunks(reader, framing, length):
        size += len(data)
        if size > limit:
            raise HttpError(f"body larger than {limit} bytes")
        parts.append(data)
    return b"".join(parts)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"


async def splice(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    """Relay a hijacked connection both ways until the engine's side ends.

    A half-close from the client (stdin ended) is passed on as a half-close,
    so the engine keeps sending output; when the engine's side ends, the
    client's copy is stopped.
    """

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(COPY_SIZE):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass

    inbound = asyncio.create_task(pipe(client[0], upstream[1]))
    try:
        await pipe(upstream[0], client[1])
    finally:
        inbound.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await inbound


def json_response(status: int, payload: object, *, close: bool = False) -> bytes:
    """A complete response with a JSON body (Docker's error format is {"message": ...})."""
    body = json.dumps(payload).encode()
    reason = {
        200: "OK",
        400: "Bad Request",
        403: "Forbidden",
        404: "Not Found",
        409: "Conflict",
        413: "Payload Too Large",
        502: "Bad Gateway",
    }.get(status, "Error")
    head = Head(
        ("HTTP/1.1", str(status), reason),
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ],
    )
    if close:
        head.set_header("Connection", "close")
    return head.encode() + body
