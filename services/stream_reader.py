"""Reading a JetStream stream in order, fast: the ordered push consumer the projector, the rules
worker, replay and the inbox reader read with.

nats-py hands every delivered message through a regular expression per frame, a deletion at the
front of its buffer per frame, a ``Msg`` object, a header dictionary and a task-safe queue: about
17 µs of Python a message, half of the projector's CPU (py-spy, docs/performance.md). Here the
client's protocol parser (``TapParser``) reads its buffer by offset and hands the frames of a
*tapped* subscription over raw, as (subject, reply, headers, payload) byte strings; the
``OrderedConsumer`` turns them into ``StreamMessage``s a batch at a time. Every other frame goes
through nats-py as before.

The consumer keeps nats-py's ordered-consumer guarantees, on the same server features: an
ephemeral push consumer (no acks, flow control, idle heartbeats, in memory, one replica) from a
start sequence; a gap in the consumer sequence, a heartbeat that names a later consumer sequence,
a reconnect, or silence longer than three heartbeats recreates it from the last stream sequence
handed out + 1. Flow control is answered once the messages before it have been handed out, so a
reader that stops taking batches stops the server too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Callable

import nats.errors
import structlog
from nats.aio.client import Client
from nats.errors import ProtocolError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.protocol.parser import MAX_CONTROL_LINE_SIZE, Parser

log = structlog.get_logger()

Tap = Callable[[bytes, bytes, "bytes | None", bytes], None]


class TapParser(Parser):
    """nats-py's protocol parser without a regular expression or a buffer deletion per frame;
    frames of a subscription in ``taps`` (by sid) go to its tap instead of to nats-py."""

    def __init__(self, nc=None) -> None:
        self.taps: dict[int, Tap] = {}
        super().__init__(nc)

    async def parse(self, data: bytes = b"") -> None:
        buf = self.buf
        buf.extend(data)
        size = len(buf)
        pos = 0
        taps = self.taps
        view = memoryview(buf)  # one copy a field (a bytearray slice would copy twice)
        try:
            while pos < size:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    if size - pos > MAX_CONTROL_LINE_SIZE:
                        raise ProtocolError("nats: unknown protocol")
                    return
                line = bytes(view[pos:end])
                if line.startswith(b"HMSG") or line.startswith(b"MSG"):
                    args = line.split()
                    try:
                        if args[0] == b"HMSG":
                            hdr_size, total = int(args[-2]), int(args[-1])
                            reply = args[3] if len(args) == 6 else b""
                        else:
                            hdr_size, total = 0, int(args[-1])
                            reply = args[3] if len(args) == 5 else b""
                        sid = int(args[2])
                    except (ValueError, IndexError):
                        raise ProtocolError("nats: malformed MSG") from None
                    start = end + 2
                    if size < start + total + 2:
                        return  # the rest of the frame is still on its way
                    subject = args[1]
                    hdr = bytes(view[start : start + hdr_size]) if hdr_size else None
                    payload = bytes(view[start + hdr_size : start + total])
                    pos = start + total + 2
                    tap = taps.get(sid)
                    if tap is not None:
                        tap(subject, reply, hdr, payload)
                        continue
                    await self.nc._process_msg(sid, subject, reply, payload, hdr)
                elif line.startswith(b"+OK"):
                    pos = end + 2
                    continue
                elif line.startswith(b"PING"):
                    pos = end + 2
                    await self.nc._process_ping()
                elif line.startswith(b"PONG"):
                    pos = end + 2
                    await self.nc._process_pong()
                elif line.startswith(b"-ERR"):
                    message = line[4:].strip().decode(errors="replace").lower()
                    pos = end + 2
                    await self.nc._process_err(message)
                elif line.startswith(b"INFO"):
                    info = json.loads(line[4:].decode())
                    pos = end + 2
                    await self.nc._process_info(info)
                else:
                    raise ProtocolError("nats: unknown protocol")
                if self.buf is not buf:  # reset (a reconnect) while nats-py had the frame
                    return
        finally:
            view.release()  # before the buffer is resized
            del buf[:pos]


class TapClient(Client):
    """A nats-py client whose parser can tap subscriptions (``OrderedConsumer`` needs one)."""

    def __init__(self) -> None:
        super().__init__()
        self._ps = TapParser(self)

    async def _process_pong(self) -> None:
        """nats-py's, but a PONG whose ping was given up on is dropped.

        PONGs answer PINGs in order, each setting the result of the oldest waiting future. A flush
        that times out (health's one-second ping while NATS is frozen) cancels its future and leaves
        it in line; nats-py then set the late PONG's result on it, the InvalidStateError ended the
        client's read loop for good, and the connection took nothing more in while it still looked
        connected: ingest answered 504s for minutes after a five-second freeze, until the ping
        interval found the connection stale (an outside audit; nats-py issue 624)."""
        if self._pongs:
            future = self._pongs.pop(0)
            if not future.done():
                future.set_result(True)
            self._pongs_received += 1
            self._pings_outstanding = 0


class RawHeaders:
    """A message's header block, looked up by name without parsing every line (a logged event
    carries six to eight headers; readers need two)."""

    __slots__ = ("raw",)
    _keys: dict[str, bytes] = {}

    def __init__(self, raw: bytes | None) -> None:
        self.raw = raw or b""

    def get(self, name: str, default: str | None = None) -> str | None:
        key = self._keys.get(name)
        if key is None:
            key = self._keys[name] = b"\r\n" + name.encode() + b":"
        at = self.raw.find(key)
        if at < 0:
            return default
        start = at + len(key)
        end = self.raw.find(b"\r\n", start)
        return self.raw[start : end if end >= 0 else len(self.raw)].strip().decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"RawHeaders({self.raw!r})"


class StreamMessage:
    """One message read from a stream: its stream sequence, subject, headers and body."""

    __slots__ = ("seq", "subject", "raw_headers", "data")

    def __init__(self, seq: int, subject: str, raw_headers: bytes | None, data: bytes) -> None:
        self.seq = seq
        self.subject = subject
        self.raw_headers = raw_headers
        self.data = data

    @property
    def headers(self) -> RawHeaders:
        return RawHeaders(self.raw_headers)

    def __repr__(self) -> str:
        return f"StreamMessage(seq={self.seq}, subject={self.subject!r}, data={self.data[:60]!r})"


def _pending(reply: bytes) -> int:
    """How many messages the stream held for the consumer after this one when it was delivered
    (the reply subject's ``<pending>``)."""
    tokens = reply.split(b".")
    return int(tokens[8] if len(tokens) == 9 else tokens[10])


def _sequences(reply: bytes) -> tuple[int, int]:
    """(stream sequence, consumer sequence) from a JetStream reply subject: ``$JS.ACK.<stream>.
    <consumer>.<delivered>.<sseq>.<cseq>.<time>.<pending>``, or the form with domain and account."""
    tokens = reply.split(b".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[6])
    if len(tokens) >= 11 and tokens[0] == b"$JS" and tokens[1] == b"ACK":
        return int(tokens[7]), int(tokens[8])
    raise ProtocolError(f"not a JetStream delivery: {reply[:120]!r}")


HEARTBEAT_SECONDS = 5.0
# Silence for this many heartbeats means the consumer is gone (a server restart: it was in memory).
SILENT_HEARTBEATS = 3


class OrderedConsumer:
    """A stream's messages on ``subject`` from ``start_seq``, strictly in order, each once."""

    def __init__(self, js: JetStreamContext, stream: str, subject: str, start_seq: int,
                 *, heartbeat: float = HEARTBEAT_SECONDS) -> None:
        nc = js._nc
        if not isinstance(nc._ps, TapParser):
            raise TypeError("OrderedConsumer needs a client made by services.nats_io.connect (a TapClient)")
        self.js = js
        self.nc: Client = nc
        self.stream = stream
        self.subject = subject
        self.heartbeat = heartbeat
        self.last_seq = max(start_seq, 1) - 1  # the last stream sequence handed out
        self.pending = -1  # after the last message handed out, as the server said (-1: none yet)
        self._parser: TapParser = nc._ps
        self._items: list[tuple[bytes, bytes, bytes | None, bytes]] = []
        self._subjects: dict[bytes, str] = {}  # decoded once: a log has one subject a workspace
        self._ready = asyncio.Event()
        self._sub = None
        self._consumer: str | None = None
        self._consumer_seq = 0
        self._broken = False
        self._heard_at = time.monotonic()
        self._reconnects = 0

    async def start(self) -> "OrderedConsumer":
        await self._create()
        return self

    def _tap(self, subject: bytes, reply: bytes, hdr: bytes | None, payload: bytes) -> None:
        self._items.append((subject, reply, hdr, payload))
        self._ready.set()

    async def _create(self) -> None:
        self._items = []
        self._consumer_seq = 0
        self._broken = False
        self._reconnects = self.nc.stats["reconnects"]
        self._heard_at = time.monotonic()
        deliver = self.nc.new_inbox()
        sub = await self.nc.subscribe(deliver)
        self._sub = sub
        self._parser.taps[sub._id] = self._tap
        config = ConsumerConfig(
            deliver_subject=deliver,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.last_seq + 1,
            filter_subject=self.subject,
            ack_policy=AckPolicy.NONE,
            max_deliver=1,
            flow_control=True,
            idle_heartbeat=self.heartbeat,
            num_replicas=1,
            mem_storage=True,
            inactive_threshold=max(30.0, 6 * self.heartbeat),
        )
        try:
            self._consumer = (await self.js.add_consumer(self.stream, config=config)).name
        except BaseException:
            await self._drop_subscription()
            raise

    async def _drop_subscription(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            self._parser.taps.pop(sub._id, None)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _recreate(self) -> bool:
        log.info("stream_reader.recreate", stream=self.stream, subject=self.subject, from_seq=self.last_seq + 1)
        consumer, self._consumer = self._consumer, None
        await self._drop_subscription()
        if consumer is not None:
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(self.stream, consumer)
        try:
            await self._create()
            return True
        except (asyncio.TimeoutError, nats.errors.Error, OSError) as err:
            log.warning("stream_reader.recreate_failed", stream=self.stream, error=str(err) or repr(err))
            self._broken = True
            return False

    @property
    def drained(self) -> bool:
        """Everything the stream held when the last message handed out was delivered has been
        handed out (a reader that has caught up, for now)."""
        return self.pending == 0 and not self._items

    async def next_batch(self, max_messages: int, wait: float) -> list[StreamMessage]:
        """Wait up to ``wait`` seconds for messages, then take at most ``max_messages`` of those here."""
        if self._broken and not await self._recreate():
            await asyncio.sleep(min(wait, 1.0))
            return []
        if not self._items:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), wait)
            except asyncio.TimeoutError:
                silent = time.monotonic() - self._heard_at > SILENT_HEARTBEATS * self.heartbeat
                if silent or self.nc.stats["reconnects"] != self._reconnects:
                    self._broken = True
                return []
        return await self._take(max_messages)

    async def _take(self, max_messages: int) -> list[StreamMessage]:
        self._heard_at = time.monotonic()
        items = self._items
        out: list[StreamMessage] = []
        append = out.append
        expected = self._consumer_seq + 1
        taken = 0
        subjects = self._subjects
        if len(subjects) > 100_000:
            subjects.clear()
        for subject, reply, hdr, payload in items:
            if len(out) >= max_messages:
                break
            taken += 1
            if hdr is not None and hdr[8:9] == b" ":  # "NATS/1.0 100 ...": a status, not a message
                self._consumer_seq = expected - 1
                if out:
                    self.last_seq = out[-1].seq
                if not await self._status(reply, hdr):
                    self._broken = True
                    break
                continue
            stream_seq, consumer_seq = _sequences(reply)
            if consumer_seq != expected:
                log.warning("stream_reader.gap", stream=self.stream, expected=expected, got=consumer_seq)
                self._broken = True
                break
            expected += 1
            name = subjects.get(subject)
            if name is None:
                name = subjects[subject] = subject.decode()
            append(StreamMessage(stream_seq, name, hdr, payload))
            last_reply = reply
        self._consumer_seq = expected - 1
        if out:
            self.last_seq = out[-1].seq
            self.pending = _pending(last_reply)
        if self._broken:
            self._items = []  # read again from last_seq + 1 by a new consumer
        else:
            del items[:taken]
        return out

    async def _status(self, reply: bytes, hdr: bytes) -> bool:
        """Answer flow control and check heartbeats; False when the consumer must be recreated."""
        status = hdr[9:12]
        if status != b"100":  # e.g. 409 Consumer Deleted
            log.warning("stream_reader.status", stream=self.stream, status=hdr[:80])
            return False
        headers = RawHeaders(hdr)
        if b"FlowControl" in hdr[:64] and reply:
            await self.nc.publish(reply.decode(), b"")
            return True
        stalled = headers.get("Nats-Consumer-Stalled")
        if stalled:
            await self.nc.publish(stalled, b"")
        last = headers.get("Nats-Last-Consumer")
        if last is not None and last.isdigit() and int(last) != self._consumer_seq:
            log.warning("stream_reader.heartbeat_gap", stream=self.stream, last_consumer=last, have=self._consumer_seq)
            return False
        return True

    async def unsubscribe(self) -> None:
        consumer, self._consumer = self._consumer, None
        await self._drop_subscription()
        if consumer is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(self.stream, consumer)
