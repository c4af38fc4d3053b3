"""The gateway's chunked-response scanner finds a body's end however the bytes are split."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.agent.gateway.chunked import ChunkScanner
from controller.agent.gateway.http import HttpError

BODY = (
    b"5\r\nhello\r\n"
    b"1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n"
    b"2\r\n\r\n\r\n"  # a chunk whose data is itself CRLF
    b"0\r\nTrailer: yes\r\n\r\n"
)


def _taken(data: bytes, cuts: list[int]) -> bytes | None:
    """What the scanner takes as the body when ``data`` arrives cut at ``cuts``;
    None if it never found the body's end."""
    blocks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    scanner = ChunkScanner()
    taken = b""
    for block in blocks:
        if scanner.done:
            break
        taken += block[: scanner.feed(block)]
    return taken if scanner.done else None


@pytest.mark.parametrize("seed", range(20))
def test_the_end_is_found_in_any_split_and_nothing_after_it_is_taken(seed: int) -> None:
    data = BODY + b"HTTP/1.1 200 OK\r\n"  # what must not be taken as part of the body
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(0, 12)))
    assert _taken(data, cuts) == BODY


def test_an_unfinished_body_is_not_done() -> None:
    scanner = ChunkScanner()
    assert scanner.feed(BODY[:-2]) == len(BODY) - 2
    assert not scanner.done


def test_a_bad_size_line_is_an_error() -> None:
    with pytest.raises(HttpError):
        ChunkScanner().feed(b"zz\r\n")


def test_a_negative_size_line_is_an_error_not_a_step_back() -> None:
    with pytest.raises(HttpError):
        ChunkScanner().feed(b"5\r\nhello\r\n-3\r\nabc\r\n0\r\n\r\n")


_chunk_data = st.binary(min_size=1, max_size=40) | st.sampled_from(
    [b"0\r\n\r\n", b"\r\n0\r\n\r\n", b"\n", b"5\r\n"]  # data that looks like framing
)


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(_chunk_data, max_size=30),
    extension=st.sampled_from([b"", b";name=value"]),
    cut_seeds=st.lists(st.integers(0, 10**6), max_size=10),
)
def test_many_whole_chunks_in_one_block_end_where_the_body_ends(
    chunks: list[bytes], extension: bytes, cut_seeds: list[int]
) -> None:
    body = b"".join(b"%x%s\r\n%s\r\n" % (len(c), extension, c) for c in chunks) + b"0\r\n\r\n"
    data = body + b"HTTP/1.1 200 OK\r\n"
    cuts = sorted({seed % len(data) for seed in cut_seeds} - {0})
    assert _taken(data, cuts) == body
