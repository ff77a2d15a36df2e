"""Judging one incoming CloudEvent: accepted (typed) or rejected with an error naming the field."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import re
import urllib.parse
from decimal import Decimal

import msgspec

from events.catalog import CURRENCY_PATTERN, JSON_CONTENT_TYPE_PATTERN, TYPES_BY_NAME, Envelope, GoalSet, decode_event
from events.commands import RULES_SOURCE
from events.upcasting import decode_exact, encode_exact, exact_number

MAX_EVENT_BYTES = 64 * 1024
MAX_BATCH_EVENTS = 1000
MAX_BATCH_BYTES = 4 * 1024 * 1024

WORKSPACE_ID = re.compile(r"[a-z0-9-]{1,64}")  # whole: fullmatch ($ would take "acme\n")

_decode_probe = msgspec.json.Decoder(dict, float_hook=exact_number).decode
_encode = msgspec.json.Encoder(decimal_format="string").encode

# A JSON-escaped NUL (an odd run of backslashes before u0000): PostgreSQL text and jsonb cannot hold it.
_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")

_AT = re.compile(r"^(?P<text>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


class InvalidEvent(ValueError):
    """An event that must be rejected; ``str(err)`` names the field at fault."""


# msgspec's "Expected `str` matching regex '...'" in words.
_PATTERN = re.compile(r"Expected `str` matching regex '(.*)'", re.S)
_PATTERN_WORDS = {
    CURRENCY_PATTERN.replace("\\", "\\\\"): "three upper-case letters (an ISO 4217 code, like EUR)",
    JSON_CONTENT_TYPE_PATTERN.replace("\\", "\\\\"): "application/json, with parameters after ';' if any",
}


def is_workspace_id(value: str) -> bool:
    return bool(WORKSPACE_ID.fullmatch(value))


# msgspec's names of JSON types, in the words of the contract's own errors.
_TYPE_WORDS = {
    "str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
    "decimal": "a decimal (a JSON number or a numeric string)", "object": "a JSON object",
    "array": "a JSON array", "null": "null",
    "datetime": "an RFC 3339 time with an offset, like 2026-05-01T09:30:00Z", "date": "a date, like 2026-05-01",
}
_EXPECTED = re.compile(r"Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`")
_LENGTH = re.compile(r"Expected `(?P<want>str|array)` of length (?P<op>[<>]=) (?P<n>[0-9]+)")
_BOUND = re.compile(r"Expected `(?P<want>int|float)` (?P<bound>[<>]=? \S+)")
_ENUM = re.compile(r"Invalid enum value .*", re.S)
_NO_OFFSET = "Expected `datetime` with a timezone component"
_RFC3339 = re.compile(r"Invalid RFC3339 encoded (?P<what>datetime|date)")
_UNKNOWN = object()


def type_in_words(name: str) -> str:
    """msgspec's name of a type (``str``, ``str | null``) as the API's errors say it."""
    return " or ".join(_TYPE_WORDS.get(part, f"`{part}`") for part in name.split(" | "))


SHOWN_CHARACTERS = 100  # of a value an error shows


def shown(value: object) -> str:
    """A value as an error shows it: its JSON, a long string cut whole-character with its length said
    (never inside an escape, always closed), a long object or array cut with an ellipsis."""
    text = encode_exact(value).decode()
    if len(text) <= SHOWN_CHARACTERS:
        return text
    if isinstance(value, str):
        cut = value[:SHOWN_CHARACTERS]
        while len(encode_exact(cut)) > SHOWN_CHARACTERS:
            cut = cut[: len(cut) * 3 // 4]
        return f"{encode_exact(cut).decode()}… ({len(value)} characters)"
    return text[:SHOWN_CHARACTERS] + "…"


def _in_words(text: str, value: object, allowed: tuple | None) -> str | None:
    """msgspec's error about one field in the contract's words: what was expected, and the value
    that came (as JSON, when the event's JSON could be read), or None for a text not known here."""
    got = "" if value is _UNKNOWN else f", got {shown(value)}"
    if expected := _EXPECTED.fullmatch(text):
        return f"expected {type_in_words(expected['want'])}, got " + (
            type_in_words(expected["got"]) if value is _UNKNOWN else shown(value))
    if length := _LENGTH.fullmatch(text):
        n, unit = int(length["n"]), "characters" if length["want"] == "str" else "items"
        if isinstance(value, (str, list)) and length["op"] == "<=":  # a count says more than the value cut
            got = f", got {len(value)} {unit}"
        if length["op"] == ">=" and n == 1:
            return f"expected a non-empty {'string' if length['want'] == 'str' else 'array'}{got}"
        many = "at least" if length["op"] == ">=" else "at most"
        return f"expected {type_in_words(length['want'])} of {many} {n} {unit}{got}"
    if bound := _BOUND.fullmatch(text):
        return f"expected {type_in_words(bound['want'])} {bound['bound']}{got}"
    if text == "Number out of range":
        return f"expected a number within a double's range{got}"
    if _ENUM.fullmatch(text) and allowed:
        choices = ", ".join(shown(choice) for choice in allowed)
        return f"expected {choices if len(allowed) == 1 else 'one of ' + choices}{got}"
    if text == _NO_OFFSET:
        return f"expected {type_in_words('datetime')}{got}"
    if rfc3339 := _RFC3339.fullmatch(text):
        if rfc3339["what"] == "datetime" and isinstance(value, str) and _LEAP_SECOND.search(value):
            # RFC 3339 allows it; Python's datetime cannot hold it (it was "expected an RFC 3339 time").
            return f"a leap second cannot be kept: write :59.999999 for :60{got}"
        return f"expected {type_in_words(rfc3339['what'])}{got}"
    return None


_LEAP_SECOND = re.compile(r"[Tt ][0-9]{2}:[0-9]{2}:60(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:?[0-9]{2})$")


def _field_error(err: msgspec.ValidationError | msgspec.DecodeError, probe: dict | None = None) -> str:
    """Turn msgspec's "Expected `str`, got `int` - at `$.data.channel`" into "data.channel: expected
    a string, got 5"; ``probe`` is the event's JSON, read without its schema, for the value."""
    match = _AT.match(str(err))
    assert match is not None
    text, path = match["text"], (match["path"] or "").lstrip(".")
    missing = re.match(r"Object missing required field `([^`]+)`", text)
    if missing:
        return f"{path + '.' if path else ''}{missing[1]}: required field missing"
    # Errors raised from __post_init__ already start with the field name.
    own = re.match(r"^([a-z_]+): (.*)$", text, re.S)
    if own:
        field, detail = f"{path + '.' if path else ''}{own[1]}", own[2]
        value = _UNKNOWN if probe is None else _lookup(probe, field, _UNKNOWN)
        if value is not _UNKNOWN and ", got " in detail:  # the value as it came: "-1" a string, -1 a number
            detail = f"{detail.rsplit(', got ', 1)[0]}, got {shown(value)}"
        return f"{field}: {detail}"
    if path == "type" and text.startswith("Invalid value"):
        kind = probe.get("type") if probe is not None else None
        return f"type: unknown event type {shown(kind) if isinstance(kind, str) else text.removeprefix('Invalid value ')}"
    value = _UNKNOWN if probe is None or not path else _lookup(probe, path, _UNKNOWN)
    if (pattern := _PATTERN.fullmatch(text)) and pattern[1] in _PATTERN_WORDS:
        return f"{path}: expected {_PATTERN_WORDS[pattern[1]]}" + ("" if value is _UNKNOWN else f", got {shown(value)}")
    if path and probe is not None:
        if (words := _in_words(text, value, _allowed_values(probe.get("type"), path))) is not None:
            return f"{path}: {words}"
    text = text[0].lower() + text[1:] if text else text
    return f"{path}: {text}" if path else text


def _allowed_values(kind: object, path: str) -> tuple | None:
    """The values a field of a Literal type allows, by the field's path in an event of type ``kind``."""
    if not isinstance(kind, str) or kind not in TYPES_BY_NAME:
        return None
    node: object = msgspec.inspect.type_info(TYPES_BY_NAME[kind])
    for name in path.split("."):
        fields = {field.encode_name: field.type for field in getattr(node, "fields", ())}
        if name not in fields:
            return None
        node = fields[name]
        while isinstance(node, (msgspec.inspect.Metadata, msgspec.inspect.UnionType)):
            if isinstance(node, msgspec.inspect.Metadata):
                node = node.type
            else:
                kinds = [t for t in node.types if not isinstance(t, msgspec.inspect.NoneType)]
                if len(kinds) != 1:
                    return None
                node = kinds[0]
    return node.values if isinstance(node, msgspec.inspect.LiteralType) else None


def parse_event(raw: bytes) -> Envelope:
    """Validate one structured-mode CloudEvent (its JSON bytes) against the catalog."""
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"event: larger than {MAX_EVENT_BYTES} bytes")
    if not raw or raw.isspace():  # not strip(): no copy of every event
        raise InvalidEvent("event: empty (expected a JSON object)")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidEvent(f"event: not valid UTF-8 (byte {err.start})") from None
    # The substring test first: the regex (with its look-behind) costs more than decoding the event.
    if b"\\u0000" in raw and _ESCAPED_NUL.search(raw):
        raise InvalidEvent(string_holding(raw, _NUL, "the NUL character ({}), which is not allowed")
                           or "event: a string holds the NUL character (\\u0000), which is not allowed")
    try:
        event = decode_event(raw)
    except msgspec.ValidationError as err:
        raise InvalidEvent(_explain_envelope(raw, err)) from None
    except msgspec.DecodeError as err:
        if b"\\u" in raw and (error := string_holding(raw, _LONE_SURROGATE, LONE_SURROGATE)):
            raise InvalidEvent(error) from None
        raise InvalidEvent(f"event: not valid JSON ({err})") from None
    except RecursionError:
        raise InvalidEvent("event: nested too deeply") from None
    if event.internal:
        raise InvalidEvent(f"type: {event.__struct_config__.tag} is written by Touchline, never accepted from outside")
    check_subject(event)
    _check_source(event.source)
    if given := trail_fields_given(raw):
        raise InvalidEvent(f"{given[0]}: set by Touchline beside an event's attributes in its audit trail,"
                           " never accepted as one")
    _check_characters(event)
    _check_calendar(event)
    if type(event) in _DECIMAL_FIELDS:
        _check_decimals(event, raw, _DECIMAL_FIELDS[type(event)])
    return event


# What Python's json makes of a UTF-16 surrogate escape not in a pair (``"\\ud800"``): grammatical JSON
# (RFC 8259 section 8.2) but no character, so msgspec refuses the text and no event can hold it.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
LONE_SURROGATE = "a lone UTF-16 surrogate ({}), which is no character"
_NUL = re.compile("\x00")


def _not_json(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


# Python's json keeps lone surrogate escapes as they are, where msgspec refuses the whole text;
# told to refuse what JSON has not (NaN, Infinity), it reads exactly the grammar of RFC 8259.
# Numbers are read as decimals: Python makes no int of over 4,300 digits, which refused a whole
# batch for one such number beside a lone surrogate, and an error shows a value as the number it
# is (an id of 5,000 digits was "event: expected a JSON object"; both from the re-check audits).
LENIENT_JSON = json.JSONDecoder(parse_constant=_not_json, parse_int=Decimal, parse_float=exact_number)


def read_leniently(text: str) -> object:
    """A JSON text that msgspec may have refused; ValueError or RecursionError if it is not JSON."""
    return LENIENT_JSON.decode(text)


def string_holding(raw: bytes, pattern: re.Pattern, what: str, root: str = "event") -> str | None:
    """The error for the first string of an event's JSON (a value or a key) with a match of
    ``pattern``, naming it as errors name fields (``id``, ``data.tags[2]``, ``data: a key``):
    "{where}: holds {what}", ``{}`` in ``what`` standing for the match's JSON escape; None if there
    is none, or the JSON cannot be read even leniently. ``root`` names the text itself (binary
    mode's body is ``data``)."""
    try:
        document = read_leniently(raw.decode())
    except (ValueError, RecursionError):
        return None
    pending: list[tuple[str, object]] = [("", document)]  # "": the text itself, called ``root``
    while pending:
        path, node = pending.pop()
        found, where = None, f"{path or root}:"
        if isinstance(node, str):
            found = pattern.search(node)
        elif isinstance(node, dict):
            found = next(filter(None, map(pattern.search, node)), None)
            where = f"{path or root}: a key"
            prefix = f"{path}." if path else ("" if root == "event" else f"{root}.")
            pending.extend((f"{prefix}{key}", value) for key, value in reversed(node.items()))
        elif isinstance(node, list):
            pending.extend((f"{path or root}[{n}]", value) for n, value in reversed(list(enumerate(node))))
        if found:
            return f"{where} holds " + what.format(f"\\u{ord(found[0]):04x}")
    return None


# RFC 3986: the characters of a URI-reference, its parts (appendix B), a scheme, an authority.
_URI_CHARACTERS = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")
_URI_PARTS = re.compile(r"(?:([^:/?#]+):)?(?://([^/?#]*))?([^?#]*)(?:\?([^#]*))?(?:#(.*))?", re.S)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_AUTHORITY = re.compile(r"(?:[^@\[\]]*@)?(?:\[[0-9A-Za-z:.\-_~!$&'()*+,;=]+\]|[^@\[\]:]*)(?::[0-9]*)?")


@functools.lru_cache(maxsize=4096)  # a producer names itself the same way in every event
def is_uri_reference(text: str) -> bool:
    if not _URI_CHARACTERS.fullmatch(text):
        return False
    parts = _URI_PARTS.fullmatch(text)
    assert parts is not None  # every part of appendix B's expression is optional
    scheme, authority, path, query, fragment = parts.groups()
    return (
        (scheme is None or bool(_SCHEME.fullmatch(scheme)))
        and (authority is None or bool(_AUTHORITY.fullmatch(authority)))
        and not any("[" in part or "]" in part for part in (path, query or "", fragment or ""))
        and "#" not in (fragment or "")
    )


class _TrailFields(msgspec.Struct):
    """The fields the audit trail adds beside an event's attributes (CONTRACT.md section 4)."""

    seq: msgspec.Raw = msgspec.Raw(b"")
    received_at: msgspec.Raw = msgspec.Raw(b"")


TRAIL_FIELDS: tuple[str, ...] = _TrailFields.__struct_fields__
_decode_trail_fields = msgspec.json.Decoder(_TrailFields).decode


def trail_fields_given(raw: bytes) -> list[str]:
    """The trail's own fields an event's JSON gives as attributes (any spelling of the name, any
    value). An event with one put two of it in its trail entry, and most readers keep the last: the
    producer's (an outside audit forged an entry's seq as 999999 and its received_at as 1999)."""
    given = _decode_trail_fields(raw)
    if not (given.seq or given.received_at):  # every event but a rare one: no loop over the names
        return []
    return [name for name in TRAIL_FIELDS if getattr(given, name)]


def _check_source(source: str) -> None:
    if not is_uri_reference(source):
        raise InvalidEvent(
            f"source: expected a URI-reference (RFC 3986: no spaces, other characters percent-encoded),"
            f" got {shown(source)}"
        )
    # Follow-up and alert ids are derived, so anyone can compute the next one: an outside event
    # stored first under Touchline's source and that id made the dispatcher's own record a
    # duplicate, and the follow-up vanished from the log and every read model (an outside audit).
    if source == RULES_SOURCE:
        raise InvalidEvent(f"source: {shown(source)} is Touchline's own (its follow-ups and alerts),"
                           " never accepted from outside")


# CloudEvents 1.0 strings ("Type System") exclude the control characters U+0000-U+001F and
# U+007F-U+009F and the noncharacters; surrogates cannot reach here (see _LONE_SURROGATE).
_NOT_IN_CLOUDEVENTS_STRINGS = re.compile(
    "[\x00-\x1f\x7f-\x9f\ufdd0-\ufdef" + "".join(f"{chr(plane << 16 | 0xFFFE)}{chr(plane << 16 | 0xFFFF)}" for plane in range(17)) + "]"
)


def _check_characters(event: Envelope) -> None:
    """``id`` and ``subject`` hold only characters CloudEvents allows: a tab or a newline in a
    contact id made a contact no one could name in a URL or see in a table."""
    for name in ("id", "subject"):
        value = getattr(event, name)
        # isprintable() first: in C, true for nearly every id; the class decides the rest (a
        # zero-width joiner, U+00A0, are not printable and are allowed).
        if value is not None and not value.isprintable() and (found := _NOT_IN_CLOUDEVENTS_STRINGS.search(value)):
            kind = "a noncharacter" if ord(found[0]) > 0x9F else "a control character"
            raise InvalidEvent(f"{name}: holds {kind} (U+{ord(found[0]):04X}), which CloudEvents does not allow")


# Event times and goal periods are kept within years Touchline can count from: a follow-up due a
# week after, an attribution window 100 years back, must stay inside the calendar.
EARLIEST = dt.datetime(1000, 1, 1, tzinfo=dt.timezone.utc)
LATEST = dt.datetime(9000, 1, 1, tzinfo=dt.timezone.utc)  # excluded


def _check_calendar(event: Envelope) -> None:
    # The year alone settles it but at the edges, where the offset can move the time across.
    if not 1000 < event.time.year < 8999 and not EARLIEST <= event.time < LATEST:
        raise InvalidEvent(f"time: expected a time in the years 1000 to 8999, got {event.time.isoformat()}")
    if isinstance(event, GoalSet):
        for name in ("period_start", "period_end"):
            day = getattr(event.data, name)
            if not EARLIEST.date() <= day < LATEST.date():
                raise InvalidEvent(f"data.{name}: expected a date in the years 1000 to 8999, got {day.isoformat()}")


# Amounts (and costs, targets) are kept exact everywhere (CONTRACT.md section 3): in the log as
# sent, and in every read model and sum of them, which projections/numbers.py computes with enough
# digits for amounts within these bounds. PostgreSQL's numeric, and Python's decimal arithmetic,
# could not hold some amounts beyond them (1e1000000), and the projector would park the event.
AMOUNT_INTEGER_DIGITS = 30
AMOUNT_DECIMAL_PLACES = 30

_DECIMAL_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(name for name in ("amount", "cost", "target") if name in data.__struct_fields__)
    for cls in TYPES_BY_NAME.values()
    if (data := cls.__annotations__.get("data")) is not None and isinstance(data, type)
    and any(name in data.__struct_fields__ for name in ("amount", "cost", "target"))
}
# A decimal as a JSON number, or as a string written as a JSON number would be: "12.50", "1e3",
# not " 5 ", "+5", "1_000", ".5" or other scripts' digits, which Python's Decimal would also read.
_DECIMAL_TEXT = re.compile(rb'(?P<quote>"?)-?(?:0|[1-9][0-9]*)(?:\.(?P<fraction>[0-9]+))?(?:[eE](?P<exponent>[+-]?[0-9]+))?(?P=quote)')


def _decimal_in_words(path: str) -> str:
    """What a decimal field takes, as its errors say it: a goal's target is more than 0 (it said
    "non-negative" for a target written wrong, though 0 is refused too: an outside audit)."""
    return "a decimal greater than 0" if path == "data.target" else "a non-negative decimal"


class _RawData(msgspec.Struct):
    data: dict[str, msgspec.Raw]


_decode_raw_data = msgspec.json.Decoder(_RawData).decode


def _check_decimals(event: Envelope, raw: bytes, fields: tuple[str, ...]) -> None:
    texts = _decode_raw_data(raw).data
    for name in fields:
        if name not in texts or getattr(event.data, name) is None:  # absent, or an optional one null
            continue
        text = bytes(texts[name])
        written = _DECIMAL_TEXT.fullmatch(text)
        if written is None:
            # Cut as text, not as bytes: 100 bytes can end inside a character ("١" is two).
            raise InvalidEvent(f"data.{name}: expected {_decimal_in_words(f'data.{name}')}, got {text.decode()[:100]}")
        places = len(written["fraction"] or b"") - int(written["exponent"] or 0)
        if places > AMOUNT_DECIMAL_PLACES or getattr(event.data, name).adjusted() >= AMOUNT_INTEGER_DIGITS:
            raise InvalidEvent(_too_many_digits(f"data.{name}", text))


def _too_many_digits(path: str, written: bytes) -> str:
    return (f"{path}: expected at most {AMOUNT_INTEGER_DIGITS} digits before the decimal point and"
            f" {AMOUNT_DECIMAL_PLACES} after, got {written.decode()[:60]}")


def check_subject(event: Envelope) -> None:
    if event.contact_event and event.subject is None:
        raise InvalidEvent("subject: required for this event type (the contact id)")
    if not event.contact_event and event.subject is not None:
        raise InvalidEvent("subject: not allowed on an event type without a contact")


# A key given more than once (RFC 8259 leaves its meaning open) is read with its last copy, as
# msgspec does, and every copy must be valid. Finding the copy at fault decodes the event once a copy,
# so only so many are tried: 4,000 copies of a key in a 64 KiB event cost a worker a third of a second
# (an outside audit); past that the error names the key and how often it came.
COPIES_TRIED = 8
COPIES_SHOWN = 3


def _explain_envelope(raw: bytes, err: msgspec.ValidationError) -> str:
    """The error's message; where the field at fault, or an object holding it, is a key given more
    than once, the copy that is wrong: the message showed the last copy's value, often the good one
    ("data.action: expected one of …, got "view""), or blamed a field of a repeated ``data``."""
    message = _explain_fields(raw, err)
    path = message.split(":", 1)[0]
    if all(raw.count(b'"' + name.encode() + b'"') < 2 for name in path.split(".")):  # no key of the path repeated
        return message
    try:
        return _explain_repeated(raw, err, message, path)
    except RecursionError:  # a copy nested deeper than it can be written again: msgspec's own words
        return _field_error(err)


def _explain_repeated(raw: bytes, err: msgspec.ValidationError, message: str, path: str) -> str:
    try:
        document = json.loads(raw, object_pairs_hook=_KeyCopies, parse_constant=_not_json,
                              parse_int=Decimal, parse_float=exact_number)
    except ValueError:
        return message
    names = path.split(".")
    # The outermost key along the path that is given more than once: the copies differ there.
    repeated = next((".".join(names[:n]) for n in range(1, len(names) + 1)
                     if isinstance(_lookup(document, ".".join(names[:n]), _UNKNOWN), _Copies)), None)
    if repeated is None:
        return message
    copies = [_with_copy(value, None, None) for value in _lookup(document, repeated).values]  # each as read
    listed = " (" + ", ".join(shown(v) for v in copies[:COPIES_SHOWN]) + (", …" if len(copies) > COPIES_SHOWN else "") + ")"
    if repeated == "type":
        if len({encode_exact(v) for v in copies}) == 1:  # alike: the message is about each
            return message
        # The type picks the event's fields: two of them cannot both be read.
        return f"type: given {len(copies)} times{listed}; an event has one"
    for value in copies[:COPIES_TRIED]:
        alone = encode_exact(_with_copy(document, repeated.split("."), value))
        try:
            decode_event(alone)
        except msgspec.ValidationError as wrong:
            if (said := _explain_fields(alone, wrong)).split(":", 1)[0] == path:
                message = said
                break
        except msgspec.DecodeError:
            break
    else:  # the copy at fault is further on: msgspec's own words, not the last copy's value
        message = _field_error(err)
    if repeated != path:  # an object holding the field: its copies are not worth listing
        return f"{repeated}: given {len(copies)} times, and every copy must be valid: {message}"
    return f"{path}: given {len(copies)} times{listed}, and every copy must be valid: {message.split(': ', 1)[1]}"


class _Copies:
    """A key's values, in order, in an object that gives the key more than once."""

    def __init__(self, values: list) -> None:
        self.values = values


class _KeyCopies(dict):
    """An object as Python's json reads it, except that a repeated key's value is all its copies."""

    def __init__(self, pairs: list[tuple[str, object]]) -> None:
        grouped: dict[str, list] = {}
        for key, value in pairs:
            grouped.setdefault(key, []).append(value)
        super().__init__((key, values[0] if len(values) == 1 else _Copies(values)) for key, values in grouped.items())


def _with_copy(node: object, path: list[str] | None, value: object) -> object:
    """A ``_KeyCopies`` document as msgspec reads it (each repeated key's last copy), but with
    ``value`` at ``path`` (none: the document as read)."""
    if isinstance(node, _Copies):
        node = node.values[-1]
    if isinstance(node, dict):
        return {key: value if path == [key] else _with_copy(item, path[1:] if path and path[0] == key else None, value)
                for key, item in node.items()}
    if isinstance(node, list):
        return [_with_copy(item, None, value) for item in node]
    return node


def _explain_fields(raw: bytes, err: msgspec.ValidationError) -> str:
    """Prefer the most useful message when the envelope itself is not an object of a known type."""
    try:
        probe = _decode_probe(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        # Not an object, or an integer msgspec cannot hold (5,000 digits): read as a decimal.
        try:
            probe = read_leniently(raw.decode())
        except (ValueError, RecursionError):
            return "event: expected a JSON object"
        if not isinstance(probe, dict):
            return "event: expected a JSON object"
    except RecursionError:
        return "event: nested too deeply"
    message = _field_error(err, probe)
    attribute = message.split(":", 1)[0]
    value = _lookup(probe, attribute, _UNKNOWN)
    if attribute in ("id", "source", "subject") and value is not _UNKNOWN and not isinstance(value, str | None):
        # A number too large for msgspec is a range error before it is a type error.
        return f"{attribute}: expected a string, got {shown(value)}"
    kind = probe.get("type")
    if isinstance(kind, str) and kind in TYPES_BY_NAME and TYPES_BY_NAME[kind].internal:
        return f"type: {kind} is written by Touchline, never accepted from outside"
    if message.endswith(": invalid decimal string"):
        path = message.removesuffix(": invalid decimal string")
        value = _lookup(probe, path)
        if isinstance(value, msgspec.Raw | str) and _DECIMAL_TEXT.fullmatch(written := encode_exact(value)):
            return _too_many_digits(path, written)  # a decimal, with an exponent no Decimal holds
        return f"{path}: expected {_decimal_in_words(path)}, got {shown(value)}"
    if message.startswith("type:") or "missing required field `type`" in str(err):
        if kind is None:
            return "type: required field missing"
        if not isinstance(kind, str):
            return f"type: expected a string, got {shown(kind)}"
        if kind not in TYPES_BY_NAME:
            return f"type: unknown event type {shown(kind)}"
    if message.startswith("data_base64:"):
        return "data_base64: not accepted: an event's data is a JSON object, sent as data"
    if message.startswith("datacontenttype:"):
        return f"datacontenttype: expected application/json, got {shown(probe.get('datacontenttype'))}"
    if message.startswith("expected `object`") or message.startswith("expected object"):
        return "event: expected a JSON object"
    return message


def _lookup(document: object, path: str, absent: object = None) -> object:
    for part in path.split("."):
        if not isinstance(document, dict) or part not in document:
            return absent
        document = document[part]
    return document


_NO_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
BINARY_HEADERS = ("specversion", "id", "source", "type", "time")
# Attributes binary mode carries otherwise: datacontenttype is the Content-Type, data the body.
_NOT_HEADERS = frozenset(("datacontenttype", "data", "data_base64"))


def binary_to_structured(headers: dict[str, str], body: bytes) -> tuple[bytes, str | None]:
    """Binary content mode: every ``ce-*`` header is an attribute, its value percent-decoded (the
    CloudEvents HTTP binding), and the body is ``data``.

    Returns the equivalent structured-mode JSON, which is what the log keeps (or, for an event
    refused here, the rejected list: a body that is not JSON is kept as ``data_base64``), and the
    reason it is refused, if it is. Errors name the header at fault (``ce-time``)."""
    document: dict[str, object] = {}
    error = None
    for name, value in headers.items():
        if name.startswith("ce-") and name[3:] not in _NOT_HEADERS:
            try:
                # The server hands header bytes over as Latin-1: raw UTF-8 is taken as UTF-8 too.
                value = value.encode("latin-1").decode()
                document[name[3:]] = urllib.parse.unquote(value, errors="strict")
            except UnicodeError:
                document[name[3:]] = value
                error = error or f"{name}: not UTF-8 (percent-encode other characters, as %C3%BC)"
            else:
                if _NO_ESCAPE.search(value):  # unquote keeps "%ZZ" as it is: which text was meant is unknown
                    error = error or f"{name}: a % that starts no percent-escape (write % itself as %25)"
    error = error or next((f"ce-{name}: required header missing" for name in BINARY_HEADERS if name not in document), None)
    document["datacontenttype"] = "application/json"
    if body.strip():
        try:
            decode_exact(body)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as err:
            document["data_base64"] = base64.b64encode(body).decode()
            error = error or ("data: nested too deeply" if isinstance(err, RecursionError) else
                              string_holding(body, _LONE_SURROGATE, LONE_SURROGATE, root="data")
                              or "data: the body is not valid JSON")
        else:
            # As sent, not decoded and encoded again: an amount written as a JSON number would
            # pass through a binary float and lose digits (123456789012345.6789 came out .67).
            document["data"] = msgspec.Raw(body.strip())
    return _encode(document), error


def header_error(message: str) -> str:
    """An error about an attribute, as binary mode names it: the header that carried it."""
    name = message.split(":", 1)[0]
    return f"ce-{message}" if name in BINARY_HEADERS or name == "subject" else message


def encode_event(event: Envelope) -> bytes:
    """An event as the log stores it: amounts as decimal strings, as the catalog writes them."""
    return _encode(event)
