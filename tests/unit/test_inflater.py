"""A compressed ingest body is decompressed as it arrives, in whatever pieces the network cuts it
into: gzip members one after another read as one body, a zlib stream as one stream."""

from __future__ import annotations

import gzip
import zlib

import pytest

from services.api.ingest_body import Inflater as _Inflater

TEXT = b'[{"specversion": "1.0", "id": "e1"}, {"specversion": "1.0", "id": "e2"}]' * 50


def inflated(body: bytes, coding: str, piece: int, room: int = 10**9) -> tuple[bytes, _Inflater]:
    inflater, out = _Inflater(coding), []
    for start in range(0, len(body), piece):
        out.append(inflater.decompress(body[start:start + piece], room - sum(map(len, out))))
    return b"".join(out), inflater


@pytest.mark.parametrize("piece", [1, 7, 64, 10**6])
def test_gzip_members_in_any_pieces_are_one_body(piece):
    members = b"".join(gzip.compress(TEXT[start:start + 333]) for start in range(0, len(TEXT), 333))
    body, inflater = inflated(members, "gzip", piece)
    assert body == TEXT and inflater.ended and not inflater.trailing


@pytest.mark.parametrize("piece", [1, 64, 10**6])
def test_a_zlib_stream_is_one_stream(piece):
    body, inflater = inflated(zlib.compress(TEXT) * 2, "deflate", piece)
    assert body == TEXT and inflater.ended and inflater.trailing == zlib.compress(TEXT)


def test_a_member_cut_short_has_not_ended_and_garbage_after_one_is_an_error():
    body, inflater = inflated(gzip.compress(b"[1]") + gzip.compress(b"[2]")[:-4], "gzip", 5)
    assert body.startswith(b"[1]") and not inflater.ended
    with pytest.raises(zlib.error):
        inflated(gzip.compress(b"[1]") + b"not gzip", "gzip", 10**6)


def test_it_gives_no_more_than_the_room_left_however_many_members():
    members = gzip.compress(b" " * 10_000) * 5
    body, _ = inflated(members, "gzip", 10**6, room=25_001)
    assert len(body) == 25_001
