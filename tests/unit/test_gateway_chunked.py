"""The gateway's chunked-response scanner finds a body's end however the bytes are split."""

from __future__ import annotations

import random

import pytest

from controller.agent.gateway.chunked import ChunkScanner
from controller.agent.gateway.http import HttpError

BODY = (
    b"5\r\nhello\r\n"
    b"1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n"
    b"2\r\n\r\n\r\n"  # a chunk whose data is itself CRLF
    b"0\r\nTrailer: yes\r\n\r\n"
)


@pytest.mark.parametrize("seed", range(20))
def test_the_end_is_found_in_any_split_and_nothing_after_it_is_taken(seed: int) -> None:
    data = BODY + b"HTTP/1.1 200 OK\r\n"  # what must not be taken as part of the body
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(0, 12)))
    blocks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    scanner = ChunkScanner()
    taken = b""
    for block in blocks:
        if scanner.done:
            break
        taken += block[: scanner.feed(block)]
    assert scanner.done and taken == BODY


def test_an_unfinished_body_is_not_done() -> None:
    scanner = ChunkScanner()
    assert scanner.feed(BODY[:-2]) == len(BODY) - 2
    assert not scanner.done


def test_a_bad_size_line_is_an_error() -> None:
    with pytest.raises(HttpError):
        ChunkScanner().feed(b"zz\r\n")
