"""An ingest request's body: read within the size limits (decompressing gzip or deflate as it
arrives), and split into events by its content type (CONTRACT.md section 3: structured, batched
and binary modes), each judged; or ``Refused`` whole, its start kept for the rejected list."""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections import Counter

import msgspec
from litestar import Request

from events.upcasting import decode_exact
from events.validation import (
    LENIENT_JSON,
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_EVENT_BYTES,
    binary_to_structured,
    header_error,
    read_leniently,
)
from services.api.common import ApiError
from services.ingest import Judged, judge, kept_start

_decode_batch = msgspec.json.Decoder(list[msgspec.Raw]).decode


class Refused(ApiError):
    """A request refused whole (400, 413, 415): its body (the first 64 KiB) is kept in the rejected
    list like any refused event's, with the answer's error as the reason."""

    def __init__(self, status_code: int, error: str, kept: bytes, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code, error, headers)
        self.kept = kept_start(kept)


def _charset(content_type: str) -> str | None:
    """The media type's charset parameter, lower case, unquoted; None without one."""
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


def split_request(content_type: str, headers: dict[str, str], body: bytes, repeated: tuple[str, ...] = ()) -> list[Judged]:
    kind = content_type.split(";", 1)[0].strip().lower()
    charset = _charset(content_type)
    if charset not in (None, "utf-8", "utf8"):  # JSON is UTF-8 (RFC 8259): another was read as UTF-8 all the same
        raise Refused(415, f"charset {charset[:40]!r} is not supported: send the body in UTF-8", body)
    if kind == "application/cloudevents+json":
        if len(body) > MAX_EVENT_BYTES:
            raise Refused(413, f"an event is at most {MAX_EVENT_BYTES} bytes", body)
        _require_json(body, body)
        return [judge(body)]
    if kind == "application/cloudevents-batch+json":
        try:
            elements = _decode_batch(body)
        except msgspec.ValidationError:
            # msgspec stops at the first character that is not an array's: `{not json` is not JSON.
            _require_json(body, body)
            raise Refused(400, "a batch must be a JSON array of events", body) from None
        except msgspec.DecodeError:
            elements = _elements_leniently(body)
            if elements is None:
                _require_json(body, body)  # JSON (a lone surrogate escape in it), but not an array
                raise Refused(400, "a batch must be a JSON array of events", body) from None
        except RecursionError:
            raise Refused(400, "the body is nested too deeply", body) from None
        if len(elements) > MAX_BATCH_EVENTS:
            raise Refused(413, f"a batch is at most {MAX_BATCH_EVENTS} events", body)
        return [judge(bytes(element)) for element in elements]
    if _binary_mode(kind, headers):
        structured, error = binary_to_structured(headers, body)
        # Two values of one attribute: which one the producer meant cannot be known (the last
        # one was taken, silently: an outside audit).
        error = next((f"{name}: given more than once" for name in repeated), None) or error
        if len(body) > MAX_EVENT_BYTES:
            raise Refused(413, f"an event is at most {MAX_EVENT_BYTES} bytes", structured)
        if body.strip():  # no body: an event without data
            _require_json(body, structured)
        item = Judged(structured, error=error) if error else judge(structured)
        if item.error:
            item.error = header_error(item.error)
        return [item]
    raise Refused(
        415,
        "send application/cloudevents+json, application/cloudevents-batch+json,"
        " or application/json with ce-* headers",
        body,
    )


def _binary_mode(content_type: str, headers: dict[str, str]) -> bool:
    """``application/json`` with ``ce-*`` headers: the CloudEvents HTTP binding's binary mode."""
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" and any(name.startswith("ce-") for name in headers)


def _elements_leniently(body: bytes) -> list[bytes] | None:
    """A batch msgspec refused, split into its elements' JSON by Python's json, which reads lone
    surrogate escapes (``"\\ud800"``: grammatical JSON, RFC 8259 section 8.2, but no character): each
    element then gets its own result, the one holding it rejected by name. None if the body is not
    a JSON array even so."""
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return None
    elements, at, end = [], _skip_space(text, 0), len(text)
    if text[at:at + 1] != "[":
        return None
    at = _skip_space(text, at + 1)
    while text[at:at + 1] != "]":
        try:
            _, after = LENIENT_JSON.raw_decode(text, at)
        except (ValueError, RecursionError):
            return None
        elements.append(text[at:after].encode())
        at = _skip_space(text, after)
        if text[at:at + 1] == ",":
            at = _skip_space(text, at + 1)
            if text[at:at + 1] == "]":  # a trailing comma
                return None
        elif text[at:at + 1] != "]":
            return None
    return elements if _skip_space(text, at + 1) == end else None


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\n\r":
        at += 1
    return at


def _require_json(body: bytes, kept: bytes) -> None:
    try:
        decode_exact(body)
    except msgspec.DecodeError as err:
        try:  # grammatical JSON msgspec cannot hold (a lone surrogate escape, a huge integer): judged as an event
            read_leniently(body.decode())
            return
        except RecursionError:
            raise Refused(400, "the body is nested too deeply", kept) from None
        except ValueError as lenient:
            # With a lone surrogate escape in it, msgspec names that, not what makes the text no JSON.
            why = lenient if b"\\u" in body and not isinstance(lenient, UnicodeDecodeError) else err
        raise Refused(400, f"the body is not JSON: {why}", kept) from None
    except UnicodeDecodeError:
        # msgspec's offset is within the string it was reading; the body's own is more use.
        try:
            body.decode()
            where = ""
        except UnicodeDecodeError as err:
            where = f" at byte {err.start}"
        raise Refused(400, f"the body is not JSON: invalid UTF-8{where}", kept) from None
    except RecursionError:
        raise Refused(400, "the body is nested too deeply", kept) from None


# Content codings a producer may compress a body with (RFC 9110 section 8.4.1), and the zlib
# window bits that read each: "deflate" is the zlib format, as the RFC says.
_CONTENT_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class Inflater:
    """A compressed body decompressed as it arrives. A gzip body may be several gzip members one
    after another (RFC 1952 section 2.2: what a streaming compressor that starts afresh, or a
    ``cat`` of .gz files, sends); they are read as one. A zlib stream (deflate) is one stream."""

    def __init__(self, coding: str) -> None:
        self.wbits = _CONTENT_CODINGS[coding]
        self.members = coding != "deflate"
        self.stream = zlib.decompressobj(self.wbits)

    def decompress(self, chunk: bytes, room: int) -> bytes:
        """What ``chunk`` adds, at most ``room`` (> 0) bytes; raises zlib.error."""
        data, out = self.stream.unconsumed_tail + chunk, []
        while True:
            piece = self.stream.decompress(data, room)
            out.append(piece)
            room -= len(piece)
            if not (self.members and self.stream.eof and self.stream.unused_data and room > 0):
                return b"".join(out)
            data, self.stream = self.stream.unused_data, zlib.decompressobj(self.wbits)

    @property
    def ended(self) -> bool:
        return self.stream.eof

    @property
    def trailing(self) -> bytes:
        return self.stream.unused_data


# How long a request announced too large is waited for, for the start the rejected list keeps: a
# client may announce a gigabyte and send nothing.
BODY_START_WAIT = 1.0


async def _body_start(request: Request) -> bytes:
    """The first MAX_EVENT_BYTES of the body as sent (and the 3 bytes after, for ``kept_start`` to
    cut before a character the cut would split), or what came of them within BODY_START_WAIT."""
    wanted = MAX_EVENT_BYTES + 3
    start = b""
    # From ASGI's receive itself: Litestar's stream() refuses, unread, a body announced over the
    # route's own limit (a TiB).
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(BODY_START_WAIT):
            while len(start) < wanted:
                message = await request.receive()
                start += message.get("body", b"")[:wanted - len(start)]
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break
    return start


async def read_body(request: Request) -> bytes:
    """The body, up to MAX_BATCH_BYTES; past that, Refused with its start kept. A body announced
    larger is refused with only its start read (``_body_start``).
    A compressed body (``Content-Encoding: gzip`` or ``deflate``) is decompressed as it arrives and
    held to the same limit once decompressed (a small body may expand a thousandfold); as sent it
    may be up to twice that (stored or fixed-code deflate blocks are a little larger than their
    content). A body in another coding is read too, for the rejected list to keep its start."""
    # Two Content-Encoding headers are one list (RFC 9110 section 5.3): "gzip, gzip", not "gzip".
    coding = ", ".join(request.headers.getall("content-encoding", [])).strip().lower()
    compressed = coding in _CONTENT_CODINGS
    unsupported = coding not in ("", "identity") and not compressed
    limit = 2 * MAX_BATCH_BYTES if compressed else MAX_BATCH_BYTES
    announced = request.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > limit:
        # The connection is closed after the answer: kept open, the server would read and drop
        # the rest of what was announced (a client that asked `Expect: 100-continue` is told to
        # send once the start is read).
        raise Refused(413, f"a request is at most {limit} bytes; this one announced {announced}"
                           f" (only its first {MAX_EVENT_BYTES} were read, for the rejected list)",
                      await _body_start(request), headers={"Connection": "close"})
    inflate = Inflater(coding) if compressed else None
    chunks: list[bytes] = []
    size = received = 0
    sent = b""  # the start of the body as sent: what a body that does not decompress is kept as
    async for chunk in request.stream():
        received += len(chunk)
        if compressed or unsupported:
            if len(sent) < MAX_EVENT_BYTES:
                sent += chunk[:MAX_EVENT_BYTES - len(sent)]
            if received > limit:
                raise Refused(413, f"a request is at most {limit} bytes as sent", sent)
        if unsupported:
            continue
        if inflate is not None:
            try:
                # At most one byte past the limit: enough to know the body is over it.
                chunk = inflate.decompress(chunk, MAX_BATCH_BYTES + 1 - size)
            except zlib.error as err:
                raise Refused(400, f"the body is not valid {coding}: {err}", sent) from None
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BATCH_BYTES:
            once = " once decompressed" if inflate is not None else ""
            raise Refused(413, f"a request is at most {MAX_BATCH_BYTES} bytes{once}", b"".join(chunks))
    if unsupported:
        raise Refused(415, f"Content-Encoding {coding[:100]!r} is not supported: send the body as it is,"
                           " or compressed with gzip or deflate", sent)
    if inflate is not None and not inflate.ended:
        raise Refused(400, f"the body is not valid {coding}: it ends before its compressed data does", sent)
    if inflate is not None and inflate.trailing:
        raise Refused(400, f"the body is not valid {coding}: bytes follow the end of its compressed data"
                           " (one compressed stream a request)", sent)
    return b"".join(chunks)


async def read_events(request: Request) -> list[Judged]:
    """The request's events, each judged; Refused whole for a body the limits or its content type
    refuse (a binary-mode event's kept as the structured event it was, ce-* headers and all)."""
    headers = {name.lower(): value for name, value in request.headers.items()}
    content_type = headers.get("content-type", "")
    # The raw ASGI headers, names in lower case: the Headers object above keeps one value a name.
    given = Counter(name for name, _ in request.scope["headers"] if name.startswith(b"ce-"))
    repeated = tuple(sorted(name.decode("latin-1") for name, count in given.items() if count > 1))
    try:
        body = await read_body(request)
    except Refused as refused:
        if _binary_mode(content_type, headers):
            refused.kept = kept_start(binary_to_structured(headers, refused.kept)[0])
        raise
    return split_request(content_type, headers, body, repeated)
