"""Raw HTTP for the hostile-client tests: bytes as an attacker writes them, answers as sent.

`http.client` would fix what the tests must send broken, so requests are
built by hand and responses read with a small reader that keeps one buffer
per connection (pipelined answers stay apart).
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def message(self) -> str:
        try:
            return str(json.loads(self.body).get("message", ""))
        except (ValueError, AttributeError):
            return self.body.decode(errors="replace")


class Connection:
    """One connected socket and what was read from it but not yet consumed."""

    def __init__(self, sock: socket.socket, timeout: float = 60) -> None:
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"closed before {marker!r}: {self.buffer[:200]!r}")
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill():
                raise ConnectionError("closed in a body")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def answer(self, method: str = "POST") -> Answer:
        head = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(head[0].split(" ")[1])
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if method == "HEAD" or status in (101, 204, 304):
            return Answer(status, headers, b"")
        if "chunked" in headers.get("transfer-encoding", ""):
            body = b""
            while True:
                size = int(self._until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    self._until(b"\r\n")
                    return Answer(status, headers, body)
                body += self._exactly(size)
                self._exactly(2)
        if "content-length" in headers:
            return Answer(status, headers, self._exactly(int(headers["content-length"])))
        while self._fill():
            pass
        body, self.buffer = self.buffer, b""
        return Answer(status, headers, body)

    def closed(self) -> bool:
        """Whether the peer closed the connection (after what was read)."""
        self.sock.settimeout(10)
        try:
            return not self._fill()
        except (ConnectionError, OSError):
            return True


def request(
    method: str,
    target: str,
    body: bytes | None = None,
    headers: list[tuple[str, str]] | None = None,
    *,
    version: str = "HTTP/1.1",
    eol: bytes = b"\r\n",
) -> bytes:
    """A request's bytes; ``body`` framed with Content-Length unless headers say otherwise."""
    lines = [f"{method} {target} {version}".encode("latin-1"), b"Host: docker"]
    given = [h[0].lower() for h in headers or []]
    for name, value in headers or []:
        lines.append(f"{name}: {value}".encode("latin-1"))
    if body is not None and "content-length" not in given and "transfer-encoding" not in given:
        lines.append(b"Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}".encode())
    return eol.join(lines) + eol + eol + (body or b"")


def obj(*pairs: tuple[str, Any]) -> bytes:
    """A JSON object with these pairs in order (repeated keys kept, which json.dumps cannot)."""
    return ("{" + ",".join(f"{json.dumps(k)}:{_raw(v)}" for k, v in pairs) + "}").encode()


def _raw(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return "[" + ",".join(_raw(v) for v in value) + "]"
    return json.dumps(value)
