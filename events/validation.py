"""Judging one incoming CloudEvent: accepted (typed) or rejected with an error naming the field."""

from __future__ import annotations

import re

import msgspec

from events.catalog import TYPES_BY_NAME, AnyEvent, Envelope

MAX_EVENT_BYTES = 64 * 1024
MAX_BATCH_EVENTS = 1000
MAX_BATCH_BYTES = 4 * 1024 * 1024

WORKSPACE_ID = re.compile(r"^[a-z0-9-]{1,64}$")

_decode_event = msgspec.json.Decoder(AnyEvent).decode
_decode_probe = msgspec.json.Decoder(dict).decode
_encode = msgspec.json.Encoder(decimal_format="string").encode

# A JSON-escaped NUL (an odd run of backslashes before u0000): PostgreSQL text and jsonb cannot hold it.
_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")

_AT = re.compile(r"^(?P<text>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


class InvalidEvent(ValueError):
    """An event that must be rejected; ``str(err)`` names the field at fault."""


def is_workspace_id(value: str) -> bool:
    return bool(WORKSPACE_ID.match(value))


def _field_error(err: msgspec.ValidationError | msgspec.DecodeError) -> str:
    """Turn msgspec's "Expected `str`, got `int` - at `$.data.channel`" into "data.channel: expected ..."."""
    match = _AT.match(str(err))
    assert match is not None
    text, path = match["text"], (match["path"] or "").lstrip(".")
    missing = re.match(r"Object missing required field `([^`]+)`", text)
    if missing:
        return f"{path + '.' if path else ''}{missing[1]}: required field missing"
    # Errors raised from __post_init__ already start with the field name.
    own = re.match(r"^([a-z_]+): (.*)$", text, re.S)
    if own:
        return f"{path + '.' if path else ''}{own[1]}: {own[2]}"
    if path == "type" and text.startswith("Invalid value"):
        return f"type: unknown event type {text.removeprefix('Invalid value ')}"
    text = text[0].lower() + text[1:] if text else text
    return f"{path}: {text}" if path else text


def parse_event(raw: bytes) -> Envelope:
    """Validate one structured-mode CloudEvent (its JSON bytes) against the catalog."""
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"event: larger than {MAX_EVENT_BYTES} bytes")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidEvent(f"event: not valid UTF-8 (byte {err.start})") from None
    # The substring test first: the regex (with its look-behind) costs more than decoding the event.
    if b"\\u0000" in raw and _ESCAPED_NUL.search(raw):
        raise InvalidEvent("event: a string holds the NUL character (\\u0000), which is not allowed")
    try:
        event = _decode_event(raw)
    except msgspec.ValidationError as err:
        raise InvalidEvent(_explain_envelope(raw, err)) from None
    except msgspec.DecodeError as err:
        raise InvalidEvent(f"event: not valid JSON ({err})") from None
    except RecursionError:
        raise InvalidEvent("event: nested too deeply") from None
    if event.internal:
        raise InvalidEvent(f"type: {event.__struct_config__.tag} is written by Touchline, never accepted from outside")
    check_subject(event)
    return event


def check_subject(event: Envelope) -> None:
    if event.contact_event and event.subject is None:
        raise InvalidEvent("subject: required for this event type (the contact id)")
    if not event.contact_event and event.subject is not None:
        raise InvalidEvent("subject: not allowed on an event type without a contact")


def _explain_envelope(raw: bytes, err: msgspec.ValidationError) -> str:
    """Prefer the most useful message when the envelope itself is not an object of a known type."""
    message = _field_error(err)
    try:
        probe = _decode_probe(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return "event: expected a JSON object"
    except RecursionError:
        return "event: nested too deeply"
    kind = probe.get("type")
    if isinstance(kind, str) and kind in TYPES_BY_NAME and TYPES_BY_NAME[kind].internal:
        return f"type: {kind} is written by Touchline, never accepted from outside"
    if message.endswith(": invalid decimal string"):
        path = message.removesuffix(": invalid decimal string")
        value = _lookup(probe, path)
        return f"{path}: expected a non-negative decimal, got {msgspec.json.encode(value).decode()[:100]}"
    if message.startswith("type:") or "missing required field `type`" in str(err):
        if kind is None:
            return "type: required field missing"
        if not isinstance(kind, str):
            return f"type: expected a string, got {type(kind).__name__}"
        if kind not in TYPES_BY_NAME:
            return f"type: unknown event type {kind[:200]!r}"
    if message.startswith("expected `object`") or message.startswith("expected object"):
        return "event: expected a JSON object"
    return message


def _lookup(document: object, path: str) -> object:
    for part in path.split("."):
        document = document.get(part) if isinstance(document, dict) else None
    return document


BINARY_HEADERS = ("specversion", "id", "source", "type", "time")


def binary_to_structured(headers: dict[str, str], body: bytes) -> bytes:
    """Binary content mode: ``ce-*`` headers carry the attributes, the body is ``data``.

    Returns the equivalent structured-mode JSON, which is what the log keeps.
    """
    attributes: dict[str, object] = {}
    for name in (*BINARY_HEADERS, "subject"):
        value = headers.get(f"ce-{name}")
        if value is not None:
            attributes[name] = value
    for name in BINARY_HEADERS:
        if name not in attributes:
            raise InvalidEvent(f"ce-{name}: required header missing")
    if len(body) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"event: larger than {MAX_EVENT_BYTES} bytes")
    try:
        attributes["data"] = msgspec.json.decode(body) if body.strip() else {}
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise InvalidEvent("data: the body is not valid JSON") from None
    except RecursionError:
        raise InvalidEvent("data: nested too deeply") from None
    attributes["datacontenttype"] = "application/json"
    return _encode(attributes)


def encode_event(event: Envelope) -> bytes:
    return _encode(event)
