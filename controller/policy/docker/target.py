"""A request target read as dockerd's Go stack reads it, or refused when that is ambiguous.

dockerd routes on the *decoded* path (`containers%2Fcreate` is
`containers/create`), accepts any `/v<digits and dots>` version prefix,
answers a path that is not clean (`//`, `/./`, `/../`) with a redirect, and
reads query parameters with Go's `url.ParseQuery` (`+` is a space, a
malformed escape or a `;` makes the request fail, and a handler that reads one
value of a repeated key gets the first). The gateway reads the target the same
way, refuses every spelling that could be read two ways, and forwards only its
own canonical form (`Target.encode`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

_VISIBLE = re.compile(r"^[\x21-\x7e]+$")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_VERSION_SEGMENT = re.compile(r"^v[0-9.]+$")
"""What dockerd's router takes for a version prefix (`/v{version:[0-9.]+}`)."""
_VERSION = re.compile(r"^v([0-9]{1,3})\.([0-9]{1,3})$")
_SEGMENT = re.compile(r"^[A-Za-z0-9_.:@+=-]+$")
"""Characters a path segment may hold (names, IDs, image references); others are refused."""


class TargetError(ValueError):
    """A request target the gateway will not interpret: the message says why."""


@dataclass(frozen=True)
class Target:
    """A request target, decoded: version prefix, path segments and query pairs in order."""

    version: tuple[int, int] | None
    segments: tuple[str, ...]
    query: tuple[tuple[str, str], ...] = ()

    @property
    def path(self) -> str:
        return "/" + "/".join(self.segments)

    def encode(self) -> str:
        """The canonical request target: what the gateway sends to the engine."""
        prefix = f"/v{self.version[0]}.{self.version[1]}" if self.version else ""
        path = prefix + "/" + "/".join(quote(s, safe=":@+=") for s in self.segments)
        if not self.query:
            return path
        return path + "?" + "&".join(f"{_q(k)}={_q(v)}" for k, v in self.query)


def _q(text: str) -> str:
    return quote(text, safe="")


def _unescape(text: str, *, plus_is_space: bool, what: str) -> str:
    """Percent-decoding as Go's net/url does it, strictly: a malformed escape is refused."""
    if "%" in text and len(_ESCAPE.findall(text)) != text.count("%"):
        raise TargetError(f"malformed percent-escape in the {what}")
    if plus_is_space:
        text = text.replace("+", " ")
    raw = bytearray()
    index = 0
    for match in _ESCAPE.finditer(text):
        raw += text[index : match.start()].encode("utf-8")
        raw.append(int(match.group(1), 16))
        index = match.end()
    raw += text[index:].encode("utf-8")
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TargetError(f"the {what} does not decode to UTF-8") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
        raise TargetError(f"the {what} holds a control character")
    return decoded


def parse_query(raw: str) -> tuple[tuple[str, str], ...]:
    """Go's `url.ParseQuery`, refusing what makes it fail (`;`, malformed escapes)."""
    pairs = []
    for part in raw.split("&"):
        if not part:
            continue  # Go skips empty parts
        if ";" in part:
            raise TargetError("a ';' in the query (Go refuses it as a separator)")
        key, _, value = part.partition("=")
        pairs.append(
            (
                _unescape(key, plus_is_space=True, what="query"),
                _unescape(value, plus_is_space=True, what="query"),
            )
        )
    return tuple(pairs)


def parse_target(raw: str) -> Target:
    """The request line's target, decoded and checked; TargetError when ambiguous."""
    if not raw.startswith("/") or raw.startswith("//"):
        raise TargetError(
            f"request target {raw[:80]!r}: only an absolute path is accepted (no absolute "
            "URL, authority or '*' form)"
        )
    if not _VISIBLE.match(raw) or "#" in raw:
        raise TargetError("the request target holds spaces, control characters or '#'")
    raw_path, _, raw_query = raw.partition("?")
    path = _unescape(raw_path, plus_is_space=False, what="path")
    segments = path.split("/")[1:]
    if path == "/" or any(s in ("", ".", "..") for s in segments):
        raise TargetError(
            f"path {path[:80]!r} is not clean (an empty, '.' or '..' segment, or a trailing "
            "'/'); send the path as the docker CLI does"
        )
    for segment in segments:
        if not _SEGMENT.match(segment):
            raise TargetError(f"path segment {segment[:80]!r} holds characters not accepted here")
    version = None
    if _VERSION_SEGMENT.match(segments[0]):
        match = _VERSION.match(segments[0])
        if match is None:
            raise TargetError(
                f"API version {segments[0][1:]!r} is not MAJOR.MINOR; send it as the docker "
                "CLI does (for example /v1.41/...)"
            )
        version = (int(match.group(1)), int(match.group(2)))
        segments = segments[1:]
        if not segments:
            raise TargetError("the path names only an API version")
    return Target(version, tuple(segments), parse_query(raw_query))
