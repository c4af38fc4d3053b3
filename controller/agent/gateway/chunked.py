"""Relaying a chunked response in blocks: the end of the body found without stopping at each chunk.

A following stream (`logs -f`, `stats`, a pull's progress) is a chunked body
of small chunks, one per log line. Relaying it chunk by chunk (read the size
line, read the data, write, wait for the client) costs several event-loop
round trips per line, and the gateway then falls behind the engine. Here the
gateway reads whatever has arrived, scans it for chunk boundaries only to
know where the body ends, and writes it on in one piece: the bytes are passed
unchanged, chunk boundaries included.

Only for responses: after its body the engine sends nothing until the next
request, so a block never holds the start of another message (if it did, the
engine broke HTTP and the connection is dropped). Request bodies are relayed
chunk by chunk (`http.relay_body`), since a client may pipeline.
"""

from __future__ import annotations

import asyncio

from controller.agent.gateway.http import COPY_SIZE, HttpError

SIZE_LINE_LIMIT = 4096


class ChunkScanner:
    """Follows a chunked body's framing over blocks of bytes; `done` once it ended."""

    def __init__(self) -> None:
        self.state = "size"
        self.line = bytearray()
        self.remaining = 0
        self.done = False

    def feed(self, data: bytes) -> int:
        """Scan ``data``; how many of its bytes belong to the body (all, unless it ended)."""
        at = 0
        end = len(data)
        while at < end and not self.done:
            if self.state == "size" and not self.line:
                at = self._whole_chunks(data, at, end)
                if at == end:
                    break
            if self.state == "data":
                step = min(self.remaining, end - at)
                self.remaining -= step
                at += step
                if self.remaining == 0:
                    self.state = "size"
                continue
            newline = data.find(b"\n", at)
            stop = end if newline < 0 else newline + 1
            self.line += data[at:stop]
            at = stop
            if len(self.line) > SIZE_LINE_LIMIT:
                raise HttpError("chunk size line too long")
            if newline < 0:
                continue
            self._line(bytes(self.line))
            self.line.clear()
        return at

    @staticmethod
    def _whole_chunks(data: bytes, at: int, end: int) -> int:
        """Skip the chunks that lie whole in ``data`` from ``at``; where the rest begins.

        The fast path: a `logs -f` chunk is one log line (about 100 bytes), and
        the state machine's steps per chunk cost more than the rest of the relay.
        The last chunk, a long or partial size line and a partial chunk are left
        to the state machine, which reads that size line again.
        """
        find = data.find
        while True:
            newline = find(b"\n", at)
            if newline < 0 or newline + 1 - at > SIZE_LINE_LIMIT:
                return at
            line = data[at : newline + 1]
            size = _KNOWN_SIZES.get(line)
            if size is None:
                size = _chunk_size(line)
                if len(line) <= KNOWN_LINE_LIMIT and len(_KNOWN_SIZES) < KNOWN_SIZES_LIMIT:
                    _KNOWN_SIZES[line] = size
            after = newline + 1 + size + 2  # the data and its CRLF
            if size == 0 or after > end:
                return at
            at = after

    def _line(self, line: bytes) -> None:
        if self.state == "trailer":
            self.done = line in (b"\r\n", b"\n")
            return
        size = _chunk_size(line)
        if size == 0:
            self.state = "trailer"
        else:
            self.state, self.remaining = "data", size + 2  # the data and its CRLF


def _chunk_size(line: bytes) -> int:
    try:
        size = int(line.split(b";", 1)[0].strip(), 16)
    except ValueError:
        size = -1
    if size < 0:
        raise HttpError(f"bad chunk size line {line[:40]!r}")
    return size


KNOWN_SIZES_LIMIT = 4096
KNOWN_LINE_LIMIT = 24
_KNOWN_SIZES: dict[bytes, int] = {}
"""Size lines already read: a stream's lines repeat few lengths, and a lookup costs less."""


async def relay_chunked_response(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bool:
    """Relay one chunked response body as it arrives; False when the engine sent more after it."""
    scanner = ChunkScanner()
    while not scanner.done:
        data = await reader.read(COPY_SIZE)
        if not data:
            raise HttpError("connection closed in the middle of a chunked body")
        used = scanner.feed(data)
        writer.write(data[:used] if used < len(data) else data)
        await writer.drain()
        if used < len(data):
            return False
    return True
