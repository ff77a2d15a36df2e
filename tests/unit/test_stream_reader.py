"""The tapping protocol parser gives nats-py's parser's answers, frame for frame, however the bytes
arrive; the raw header lookup and the reply-subject sequences agree with nats-py's."""

from __future__ import annotations

import asyncio
import random

from hypothesis import given, settings, strategies as st
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.protocol.parser import Parser

from services.stream_reader import RawHeaders, TapParser, _sequences


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    async def _process_msg(self, sid, subject, reply, data, headers):
        self.calls.append(("msg", sid, bytes(subject), bytes(reply), data, headers))

    async def _process_ping(self):
        self.calls.append(("ping",))

    async def _process_pong(self):
        self.calls.append(("pong",))

    async def _process_info(self, info):
        self.calls.append(("info", info))

    async def _process_err(self, message):
        self.calls.append(("err", message))


def frames(rng: random.Random, count: int) -> bytes:
    out = [b'INFO {"server_id":"x","max_payload":1048576}\r\n']
    for n in range(count):
        kind = rng.randrange(8)
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(40))) + b"\r\nMSG x 1 2\r\n"[: rng.randrange(14)]
        reply = rng.choice([b"", b"_INBOX.abc", b"$JS.ACK.S.c.1.%d.%d.1.0" % (n, n)])
        sid = rng.choice([1, 2, 17])
        if kind == 0:
            out.append(b"PING\r\n")
        elif kind == 1:
            out.append(b"PONG\r\n")
        elif kind == 2:
            out.append(b"+OK\r\n")
        elif kind == 3:
            out.append(b"-ERR 'Stale Connection'\r\n")
        elif kind in (4, 5):
            args = b" ".join(x for x in (b"sub.ject", b"%d" % sid, reply, b"%d" % len(payload)) if x)
            out.append(b"MSG " + args + b"\r\n" + payload + b"\r\n")
        else:
            hdr = rng.choice([b"NATS/1.0\r\nA: b\r\nTouchline-Received-At: 2026\r\n\r\n",
                              b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 3\r\n\r\n"])
            args = b" ".join(x for x in (b"t.ws1", b"%d" % sid, reply, b"%d" % len(hdr), b"%d" % (len(hdr) + len(payload))) if x)
            out.append(b"HMSG " + args + b"\r\n" + hdr + payload + b"\r\n")
    return b"".join(out)


async def feed(parser, data: bytes, rng: random.Random) -> None:
    at = 0
    while at < len(data):
        step = rng.choice([1, 2, 7, 64, 1000, 32768])
        await parser.parse(data[at:at + step])
        at += step


def run(parser_class, data: bytes, seed: int, taps=None) -> list[tuple]:
    recorder = Recorder()
    parser = parser_class(recorder)
    if taps is not None:
        parser.taps.update(taps)
    asyncio.run(feed(parser, data, random.Random(seed)))
    return recorder.calls


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 10_000))
def test_same_calls_as_nats_py_whatever_the_chunks(stream_seed: int, chunk_seed: int) -> None:
    data = frames(random.Random(stream_seed), 60)
    assert run(TapParser, data, chunk_seed) == run(Parser, data, chunk_seed + 1)


def test_tapped_subscription_frames_go_to_the_tap_in_order() -> None:
    data = frames(random.Random(5), 400)
    tapped: list[tuple] = []
    calls = run(TapParser, data, 3, taps={17: lambda *frame: tapped.append(("msg", 17, *frame))})
    expected = run(Parser, data, 4)
    assert [c for c in calls] == [c for c in expected if not (c[0] == "msg" and c[1] == 17)]
    assert [(k, sid, s, r, d, h) for k, sid, s, r, h, d in tapped] == [c for c in expected if c[0] == "msg" and c[1] == 17]
    assert tapped


HEADER_BLOCKS = [
    b"NATS/1.0\r\nNats-Msg-Id: abc\r\nTouchline-Workspace: ws\r\nTouchline-Received-At: 2026-01-01T00:00:00+00:00\r\n"
    b"Touchline-Catalog-Version: 1\r\nNats-Batch-Id: x\r\nNats-Batch-Sequence: 2\r\n\r\n",
    b"NATS/1.0\r\nTouchline-Received-At:2026\r\nA-Touchline-Received-At: no\r\n\r\n",
    b"NATS/1.0\r\n\r\n",
]


def test_raw_header_lookup_agrees_with_the_full_parse() -> None:
    for raw in HEADER_BLOCKS:
        parsed = Client._parse_header_lines(raw)  # what nats-py would hand a reader
        for name in ("Nats-Msg-Id", "Touchline-Received-At", "Touchline-Catalog-Version", "Missing"):
            assert RawHeaders(raw).get(name) == parsed.get(name), (raw, name)
    assert RawHeaders(None).get("X", "d") == "d"


def test_sequences_from_both_reply_forms() -> None:
    for reply in ("$JS.ACK.TOUCHLINE_LOG.c1.1.4711.12.1700000000000000000.3",
                  "$JS.ACK.dom.acchash.TOUCHLINE_LOG.c1.1.4711.12.1700000000000000000.3.token"):
        meta = Msg(None, reply=reply).metadata
        assert _sequences(reply.encode()) == (meta.sequence.stream, meta.sequence.consumer) == (4711, 12)


def test_the_private_parts_of_nats_py_touchline_leans_on_are_there() -> None:
    """Health reads the client's read-loop task, and TapClient replaces its PONG handling (a given-up
    ping's late PONG ended the read loop): a nats-py that renamed them would fail here, not in a freeze."""
    from services.stream_reader import TapClient

    client = TapClient()
    assert hasattr(client, "_reading_task") and hasattr(client, "_pongs")
    assert hasattr(Client, "_process_pong") and hasattr(client, "_pongs_received") and hasattr(client, "_pings_outstanding")
