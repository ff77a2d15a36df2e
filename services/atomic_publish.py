"""All-or-nothing append of several messages to one stream (JetStream atomic batch, ADR-50).

Checked against nats-server 2.15.1 and nats-py 2.16 (which has the header names and the
``batch``/``count`` PubAck fields, but no batch publisher). The stream needs ``allow_atomic=True``.

Protocol, as the server implements it: every message carries ``Nats-Batch-Id`` and
``Nats-Batch-Sequence`` (1, 2, ...); the last also carries ``Nats-Batch-Commit: 1``. The server
stages the messages and, on the commit, checks them all (``Nats-Msg-Id``, expected-* headers,
limits) and stores them together or not at all. Only the commit answers with a PubAck
(``{"stream", "seq", "batch", "count"}``); other messages answer an empty body if sent as
requests. The batch's messages get contiguous stream sequences ending at the ack's ``seq``.
The batch headers stay on the stored messages. (One hole in "or not at all": on a
single server, a store failure such as a full disk midway through the commit can leave a prefix
stored; the server keeps the staged batch to retry on restart.)
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import uuid

import nats.errors
import nats.js.api
from nats.aio.client import NO_RESPONDERS_STATUS, Client

# Server default (jetstream { limits { batch { max_msgs } } }); the 1001st message is
# refused with err_code 10199, so checking here saves sending a doomed batch.
MAX_ATOMIC_BATCH = 1000

BATCH_ID_HEADER = "Nats-Batch-Id"
_BATCH_SEQ = "Nats-Batch-Sequence"
_BATCH_COMMIT = "Nats-Batch-Commit"
_EXPECTED_STREAM = "Nats-Expected-Stream"


class AtomicBatchError(Exception):
    """The batch was not stored (unless ``maybe_committed``, see below).

    ``err_code`` is the server's JetStream error code when it gave one (10201: a
    ``Nats-Msg-Id`` was already seen in the duplicate window or twice in the batch: the whole
    batch is refused, there is no per-message ``duplicate`` ack; 10176: incomplete, e.g. a lost
    message or a message routed to another stream; 10174: stream lacks ``allow_atomic``; 10060:
    wrong stream). ``maybe_committed`` is True only when the commit was sent but its ack never
    came: then the outcome is unknown, and only a retry with the same ``Nats-Msg-Id`` values
    (refused with 10201 if the first attempt landed) or a read of the stream can tell.
    """

    def __init__(self, message: str, *, err_code: int | None = None, maybe_committed: bool = False,
                 batch_id: str | None = None) -> None:
        super().__init__(message)
        self.err_code = err_code
        self.maybe_committed = maybe_committed
        self.batch_id = batch_id  # the batch's Nats-Batch-Id, which its stored messages keep


def _check_reply(data: bytes, what: str) -> dict | None:
    """Raise on an error reply; an empty body is the server's "staged" answer."""
    if not data:
        return None
    try:
        body = json.loads(data)
    except ValueError as err:
        raise AtomicBatchError(f"{what}: unreadable reply {data[:200]!r}") from err
    if error := body.get("error"):
        raise AtomicBatchError(f"{what}: {error.get('description')}", err_code=error.get("err_code"))
    return body


_VALID_NAMES: set[str] = set()
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NEWLINES = str.maketrans({"\r": " ", "\n": " "})


def _header_lines(headers: dict[str, str]) -> str:
    """``Name: value\r\n`` lines as nats-py writes them (names checked, newlines in values blanked)."""
    lines = []
    for name, value in headers.items():
        if name not in _VALID_NAMES:
            key = name.strip()
            if not key:
                continue
            if key != name or not _HEADER_NAME.fullmatch(key):
                raise AtomicBatchError(f"invalid header name {name!r}")
            _VALID_NAMES.add(name)
        value = value.strip()
        if "\r" in value or "\n" in value:
            value = value.translate(_NEWLINES)
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines)


def _frames(messages, batch_id: str, start: int, reply_to: str = "") -> bytes:
    """The HPUB frames of ``messages`` (batch sequence from ``start``) as one buffer; the first
    asks for its reply on ``reply_to`` when given."""
    out: list[bytes] = []
    append = out.append
    for position, (subject, payload, headers) in enumerate(messages, start=start):
        hdr = f"NATS/1.0\r\n{_header_lines(headers)}{BATCH_ID_HEADER}: {batch_id}\r\n{_BATCH_SEQ}: {position}\r\n\r\n".encode()
        append(f"HPUB {subject} {reply_to} {len(hdr)} {len(hdr) + len(payload)}\r\n".encode())
        append(hdr)
        append(payload)
        append(b"\r\n")
        reply_to = ""
    return b"".join(out)


async def _reply_box(nc: Client) -> tuple[str, asyncio.Future]:
    """An inbox on the connection's request subscription and the future its one reply settles.

    What ``nc.request`` does before it publishes, without the wait: nats-py has no public way to
    send a request and collect its answer later.
    """
    if not nc._resp_sub_prefix:
        await nc._init_request_sub()
    token = nc._nuid.next()
    token.extend(secrets.token_hex(2).encode())
    key = token.decode()
    future = asyncio.get_running_loop().create_future()
    nc._resp_map[key] = future
    future.add_done_callback(lambda _: nc._resp_map.pop(key, None))
    return (nc._resp_sub_prefix[:] + token).decode(), future


async def _send_frames(nc: Client, frames: bytes) -> None:
    """Queue pre-built frames on the connection, in order after what is already queued."""
    if not frames:
        return
    if nc.is_closed:
        raise AtomicBatchError("the connection is closed")
    try:
        await nc._send_command(frames)
        await nc._flush_pending()
    except nats.errors.Error as err:
        raise AtomicBatchError(f"sending the batch: {err!r}") from err


async def publish_atomic(
    nc: Client,
    subject_and_payloads: list[tuple[str, bytes, dict[str, str]]],
    *,
    stream: str,
    timeout: float = 5.0,
) -> list[int]:
    """Store all the messages in ``stream`` or none; return each one's stream sequence, in order.

    Raises AtomicBatchError on any failure. The connection must stay the same for the whole
    call: the server relies on in-order arrival and treats any gap as an abandoned batch.
    """
    count = len(subject_and_payloads)
    if not 0 < count <= MAX_ATOMIC_BATCH:
        raise AtomicBatchError(f"an atomic batch holds 1..{MAX_ATOMIC_BATCH} messages, not {count}")
    if not nc.is_connected:
        # While reconnecting, nats-py would keep the messages and send them on the next connection,
        # long after the caller was told the batch failed: refused here, nothing is stored.
        raise AtomicBatchError("not connected to NATS")
    # At most 64 characters; a uuid is unique without coordinating with other publishers.
    batch_id = uuid.uuid4().hex

    for position, (subject, payload, headers) in enumerate(subject_and_payloads, start=1):
        if any(name.lower().startswith("nats-batch-") for name in headers):
            raise AtomicBatchError(f"message {position}: the Nats-Batch-* headers are set here, not by callers")
        if len(payload) > nc.max_payload:
            raise AtomicBatchError(f"message {position}: {len(payload)} bytes, over the server's max_payload")

    async def request(position: int) -> dict | None:
        subject, payload, headers = subject_and_payloads[position - 1]
        # Copy: the caller's dicts must not carry our batch headers into a later publish.
        hdr = {**headers, BATCH_ID_HEADER: batch_id, _BATCH_SEQ: str(position)}
        last = position == count
        if last:
            hdr[_BATCH_COMMIT] = "1"
            # Checked at commit for the whole batch: without it, a batch whose subjects all
            # belong to another atomic-enabled stream would be committed there.
            hdr[_EXPECTED_STREAM] = stream
        try:
            reply = await nc.request(subject, payload, timeout=timeout, headers=hdr)
        except nats.errors.NoRespondersError as err:
            raise AtomicBatchError(_no_stream(position, subject)) from err
        except nats.errors.TimeoutError as err:
            # Before the commit nothing can be stored (the server drops the staged batch after
            # 10 s of silence); on the commit itself we cannot know.
            raise AtomicBatchError(
                f"message {position}: no reply within {timeout}s", maybe_committed=last, batch_id=batch_id
            ) from err
        except nats.errors.Error as err:
            raise AtomicBatchError(f"message {position}: {err!r}", maybe_committed=last, batch_id=batch_id) from err
        return _check_reply(reply.data, f"message {position}")

    if count == 1:
        return _sequences(await request(1), batch_id, count, stream)

    # The first message asks for a reply, so a refusal (stream missing, atomic disabled, too many
    # batches in flight) comes back with its real reason rather than as "incomplete" on the
    # commit; but that reply is read after the commit's, not waited for before the rest is sent:
    # the server queues a stream's batches one after another, and waiting there made every
    # request queue twice (measured: docs/performance.md, twentieth session). The middle ones are
    # fire-and-forget, written with it as one buffer of HPUB frames (a Python publish call each
    # cost more than the server's work for them): the server reports any loss as a gap on the
    # commit.
    reply_to, first_reply = await _reply_box(nc)
    try:
        await _send_frames(nc, _frames(subject_and_payloads[:-1], batch_id, start=1, reply_to=reply_to))
        try:
            ack = await request(count)
        except AtomicBatchError as err:
            if not err.maybe_committed:
                # The server answered the first before the commit; a moment covers its delivery.
                await asyncio.wait({first_reply}, timeout=1.0)
            _raise_first_refusal(first_reply, subject_and_payloads[0][0])
            raise
    finally:
        first_reply.cancel()
    return _sequences(ack, batch_id, count, stream)


def _raise_first_refusal(first_reply: asyncio.Future, subject: str) -> None:
    """Raise the server's reason if it refused the batch's first message: then nothing was stored."""
    if not first_reply.done() or first_reply.cancelled():
        return
    msg = first_reply.result()
    if msg.headers and msg.headers.get(nats.js.api.Header.STATUS) == NO_RESPONDERS_STATUS:
        raise AtomicBatchError(_no_stream(1, subject))
    _check_reply(msg.data, "message 1")


def _no_stream(position: int, subject: str) -> str:
    # No responder: no stream takes the subject, or its stream has no leader right now (a node of
    # a cluster died and its replicas are electing one).
    return (f"message {position}: no stream answered on {subject!r}"
            " (none listens on it, or its stream is electing a leader)")


def _sequences(ack: dict | None, batch_id: str, count: int, stream: str) -> list[int]:
    """Each message's stream sequence, once the commit ack is known to be this batch's, whole."""
    if not ack or ack.get("batch") != batch_id or ack.get("count") != count or ack.get("stream") != stream:
        raise AtomicBatchError(f"unexpected commit ack {ack!r}", maybe_committed=True, batch_id=batch_id)
    last_seq: int = ack["seq"]
    return list(range(last_seq - count + 1, last_seq + 1))
