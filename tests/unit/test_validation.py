"""Every catalog type validated, with errors that name the field (CONTRACT.md section 3)."""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal

import msgspec
import pytest

from events.catalog import TYPES_BY_NAME
from events.validation import InvalidEvent, binary_to_structured, header_error, is_workspace_id, parse_event
from tests.support import event

VALID = [
    event("marketing.campaign.launched", campaign_id="spring", channel="instagram", cost="120.00", currency="EUR"),
    event("marketing.metrics.reported", campaign_id="spring", metric="impressions", value=1200),
    event("marketing.engaged", "dana", channel="instagram", action="comment", campaign_id="spring"),
    event("marketing.lead.captured", "dana", channel="web", method="form"),
    event("sales.outreach.sent", "dana", channel="email"),
    event("sales.conversation.held", "dana", channel="phone"),
    event("sales.lead.qualified", "dana"),
    event("sales.lead.disqualified", "dana", reason="no budget"),
    event("sales.offer.made", "dana", deal_id="d1", amount=99.5, currency="EUR"),
    event("sales.deal.won", "dana", deal_id="d1", amount="99.50", currency="EUR"),
    event("sales.deal.lost", "dana", deal_id="d1"),
    event("sales.deal.refunded", "dana", deal_id="d1", amount="10", currency="EUR"),
    event("sales.followup.dismissed", "dana", followup_id="f1"),
    event("contact.opted_out", "dana"),
    event("contact.opted_in", "dana"),
    event("goal.set", goal_id="q4", metric="revenue", target=10000, currency="EUR",
          period_start="2026-10-01", period_end="2027-01-01"),
]


@pytest.mark.parametrize("body", VALID, ids=lambda body: body["type"])
def test_every_catalog_type_is_accepted(body):
    parsed = parse_event(json.dumps(body).encode())
    assert parsed.__struct_config__.tag == body["type"]


def test_catalog_covers_the_contract():
    external = {name for name, cls in TYPES_BY_NAME.items() if not cls.internal}
    assert external == {body["type"] for body in VALID}


def test_amounts_stay_exact_and_unknown_fields_are_ignored():
    raw = (b'{"specversion":"1.0","id":"x","source":"/s","type":"touchline.sales.deal.won",'
           b'"time":"2026-01-01T00:00:00Z","subject":"c","colour":"blue",'
           b'"data":{"deal_id":"d","amount":0.30000000000000004441,"currency":"EUR","note":{"a":[1]}}}')
    assert str(parse_event(raw).data.amount) == "0.30000000000000004441"


def test_offer_channel_defaults_to_direct():
    parsed = parse_event(json.dumps(event("sales.offer.made", "c", deal_id="d", amount=1, currency="EUR")).encode())
    assert parsed.data.channel == "direct"


# goal.set's currency is required with a revenue metric, so it is not simply optional.
@pytest.mark.parametrize("body", [body for body in VALID if body["type"] != "touchline.goal.set"],
                         ids=lambda body: body["type"])
def test_an_optional_field_given_as_null_is_absent(body):
    # Serialisers commonly write an unset optional field as null; an offer's channel was the one
    # optional field that refused it ("data.channel: expected a string, got null").
    nulled = {**body, "data": {**body.get("data", {}), **dict.fromkeys(_optional_data_fields(body["type"]))}}
    parsed = parse_event(json.dumps(nulled).encode())
    if body["type"] == "touchline.sales.offer.made":
        assert parsed.data.channel == "direct"


def _optional_data_fields(type_name: str) -> list[str]:
    data = next(f for f in msgspec.inspect.type_info(TYPES_BY_NAME[type_name]).fields if f.name == "data").type
    return [f.name for f in getattr(data, "fields", ()) if not f.required]


def _with(body: dict, **changes) -> dict:
    changed = json.loads(json.dumps(body))
    for path, value in changes.items():
        target = changed
        *parents, leaf = path.split("__")
        for parent in parents:
            target = target[parent]
        if value is ...:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return changed


WON = VALID[9]
GOAL = VALID[-1]
INVALID = [
    (_with(WON, data__amount="ten"), 'data.amount: expected a non-negative decimal, got "ten"'),
    (_with(WON, data__amount=-1), "data.amount: expected a non-negative decimal, got -1"),
    (_with(WON, data__amount="-1"), 'data.amount: expected a non-negative decimal, got "-1"'),  # as it came
    (_with(WON, data__amount="NaN"), "data.amount: expected a non-negative decimal"),
    (_with(WON, data__currency="eur"), "data.currency:"),
    (_with(WON, data__deal_id=...), "data.deal_id: required field missing"),
    (_with(WON, subject=...), "subject: required"),
    (_with(WON, time="2026-01-01T00:00:00"), "time:"),
    (_with(WON, time="yesterday"), "time:"),
    (_with(WON, specversion="0.3"), "specversion:"),
    (_with(WON, id=""), "id:"),
    (_with(WON, id="x" * 129), "id:"),
    (_with(WON, source=...), "source: required field missing"),
    (_with(WON, type="touchline.sales.deal.stolen"), "type: unknown event type"),
    (_with(WON, type=...), "type: required field missing"),
    (_with(WON, type="touchline.followup.requested"), "type: touchline.followup.requested is written by Touchline"),
    (_with(WON, datacontenttype="text/xml"), "datacontenttype:"),
    (_with(VALID[2], data__action="poke"), "data.action:"),
    (_with(VALID[0], subject="dana"), "subject: not allowed"),
    (_with(GOAL, data__currency=...), "data.currency: required when metric is revenue"),
    (_with(GOAL, data__target=0), "data.target: expected a decimal greater than 0"),
    (_with(GOAL, data__period_end="2026-09-01"), "data.period_end: must be after period_start"),
    (_with(GOAL, data__metric="vibes"), "data.metric:"),
    (_with(VALID[1], data__value="12"), "data.value:"),
    # What the read models could not hold exactly, or at all, is refused here, not parked later.
    (_with(WON, data__amount="1e1000000"), "data.amount: expected at most 30 digits before the decimal point and 30 after"),
    (_with(WON, data__amount="1e-1000000"), "data.amount: expected at most 30 digits before the decimal point"),
    (_with(WON, data__amount="1" + "0" * 30), "data.amount: expected at most 30 digits"),
    (_with(WON, data__amount="0." + "0" * 30 + "1"), "data.amount: expected at most 30 digits"),
    (_with(GOAL, data__target="1e40"), "data.target: expected at most 30 digits"),
    (_with(VALID[0], data__cost="1e-31"), "data.cost: expected at most 30 digits"),
    (_with(WON, time="0001-01-01T00:00:00+01:00"), "time: expected a time in the years 1000 to 8999"),
    (_with(WON, time="9999-12-31T23:59:59-01:00"), "time: expected a time in the years 1000 to 8999"),
    (_with(WON, time="0999-12-31T23:59:59Z"), "time: expected a time in the years 1000 to 8999"),
    (_with(GOAL, data__period_end="9999-01-01"), "data.period_end: expected a date in the years 1000 to 8999"),
    # Decimal strings are written as JSON numbers are.
    (_with(WON, data__amount=" 5 "), 'data.amount: expected a non-negative decimal, got " 5 "'),
    (_with(WON, data__amount="+5"), 'data.amount: expected a non-negative decimal, got "+5"'),
    (_with(WON, data__amount="1_000"), 'data.amount: expected a non-negative decimal, got "1_000"'),
    (_with(WON, data__amount="\u0663"), "data.amount: expected a non-negative decimal"),
    (_with(WON, data__amount=".5"), 'data.amount: expected a non-negative decimal, got ".5"'),
    (_with(WON, source="my shop %zz <>"), "source: expected a URI-reference"),
    (_with(WON, source="http://[::1"), "source: expected a URI-reference"),
    (_with(WON, source="/café"), "source: expected a URI-reference"),
    (_with(WON, datacontenttype="application/jsonx"), 'datacontenttype: expected application/json, got "application/jsonx"'),
    (_with(WON, data_base64="e30="), "data_base64: not accepted"),
]


@pytest.mark.parametrize("changes", [
    {"data__amount": "1" * 30 + "." + "1" * 30},
    {"data__amount": "12.50"}, {"data__amount": "1e3"}, {"data__amount": "0"}, {"data__amount": 1e29},
    {"time": "1000-01-01T00:00:00Z"}, {"time": "8999-12-31T23:59:59.999999Z"},
    {"source": "https://shop.example.com/orders?store=7#x"}, {"source": "urn:uuid:6e8bc430-9c3a-11d9-9669"},
    {"source": "/caf%C3%A9"}, {"source": "http://[::1]:8080/hook"},
    {"datacontenttype": "application/json; charset=utf-8"}, {"datacontenttype": "Application/JSON"},
], ids=str)
def test_edges_that_are_accepted(changes):
    body = _with(WON, **changes)
    parsed = parse_event(json.dumps(body).encode())
    assert (parsed.__struct_config__.tag, parsed.source, parsed.time) == (
        body["type"], body["source"], dt.datetime.fromisoformat(body["time"].replace("Z", "+00:00")))
    assert parsed.data.amount == Decimal(str(body["data"]["amount"]))


def test_an_optional_amount_may_be_null_like_any_optional_field():
    """An outside audit: `cost: null` was refused ("expected a non-negative decimal, got null") while
    both API documents, and every other optional field, allow null."""
    for cost in (None, "120.00"):
        parsed = parse_event(json.dumps(_with(VALID[0], data__cost=cost)).encode())
        assert parsed.data.cost == (None if cost is None else Decimal(cost))
    with pytest.raises(InvalidEvent, match="data.amount: expected .*null"):  # a required one may not
        parse_event(json.dumps(_with(WON, data__amount=None)).encode())


@pytest.mark.parametrize("body,message", INVALID, ids=lambda v: v if isinstance(v, str) else None)
def test_invalid_events_name_the_field(body, message):
    with pytest.raises(InvalidEvent) as caught:
        parse_event(json.dumps(body).encode())
    assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.parametrize("raw", [b"[]", b"17", b'"x"', b"null", b"{", b"\xff\xfe"])
def test_non_objects_are_rejected(raw):
    with pytest.raises(InvalidEvent):
        parse_event(raw)


def test_oversized_event_is_rejected():
    with pytest.raises(InvalidEvent, match="larger than"):
        parse_event(json.dumps(_with(VALID[7], data__reason="x" * 70_000)).encode())


BINARY = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/crm", "ce-type": "touchline.sales.conversation.held",
          "ce-time": "2026-01-01T10:00:00+02:00", "ce-subject": "ana"}


def test_binary_mode_becomes_structured():
    raw, error = binary_to_structured(BINARY, b'{"channel": "phone"}')
    parsed = parse_event(raw)
    assert error is None and parsed.subject == "ana" and parsed.data.channel == "phone"
    _, error = binary_to_structured({"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/", "ce-type": "t"}, b"{}")
    assert error == "ce-time: required header missing"


def test_binary_mode_headers_are_percent_decoded_and_extensions_kept():
    raw, error = binary_to_structured({**BINARY, "ce-subject": "J%C3%BCrgen", "ce-traceparent": "00-ab%20cd"},
                                      b'{"channel": "phone"}')
    assert error is None
    assert json.loads(raw)["traceparent"] == "00-ab cd" and parse_event(raw).subject == "J\u00fcrgen"
    _, error = binary_to_structured({**BINARY, "ce-subject": "%ff"}, b"{}")
    assert error == "ce-subject: not UTF-8 (percent-encode other characters, as %C3%BC)"
    # Raw UTF-8 in a header reaches the app as Latin-1 characters, one a byte: read as UTF-8.
    raw, error = binary_to_structured({**BINARY, "ce-subject": "Jürgen".encode().decode("latin-1")}, b"{}")
    assert error is None and json.loads(raw)["subject"] == "Jürgen"
    # A % that starts no escape was kept as it was ("J%ZZ"): whether "%" or something else was
    # meant cannot be known (an outside audit).
    for subject in ("J%ZZ", "100%", "%4"):
        _, error = binary_to_structured({**BINARY, "ce-subject": subject}, b"{}")
        assert error == "ce-subject: a % that starts no percent-escape (write % itself as %25)", subject


def test_binary_mode_without_data_and_with_a_body_that_is_not_json():
    raw, error = binary_to_structured({**BINARY, "ce-type": "touchline.sales.lead.qualified"}, b"")
    assert error is None and parse_event(raw).data is not None
    raw, error = binary_to_structured(BINARY, b"{nope")
    assert error == "data: the body is not valid JSON"
    kept = json.loads(raw)
    assert (kept["id"], kept["source"], kept["data_base64"]) == ("1", "/crm", "e25vcGU=")


def test_binary_mode_keeps_the_data_as_sent_so_amounts_stay_exact():
    deal = {**BINARY, "ce-type": "touchline.sales.deal.won"}
    body = b'{"deal_id": "d1", "amount": 123456789012345.6789, "currency": "EUR"}'
    raw, error = binary_to_structured(deal, body)
    assert error is None and body in raw
    assert str(parse_event(raw).data.amount) == "123456789012345.6789"
    raw, _ = binary_to_structured(deal, b'{"deal_id": "d1", "amount": 120.50, "currency": "EUR"}\n')
    assert str(parse_event(raw).data.amount) == "120.50"


def test_numbers_no_double_holds_are_judged_like_any_other_value():
    """1e400 is JSON. In an unknown field it is kept and ignored; where the catalog wants a number
    of its own, the error names that field (it was "event: expected a JSON object", no identity)."""
    raw = json.dumps(VALID[2]).replace('"spring"}', '"spring", "extra": 1e400}').encode()
    assert b"1e400" in raw and parse_event(raw).data.channel == "instagram"
    raw = json.dumps(VALID[1]).replace("1200", "1e400").encode()
    with pytest.raises(InvalidEvent, match=r"^data\.value: expected a number within a double's range, got 1E\+400$"):
        parse_event(raw)
    structured, error = binary_to_structured({**BINARY, "ce-type": "touchline.marketing.engaged"},
                                             b'{"channel": "ig", "action": "like", "extra": 1e400}')
    assert error is None and parse_event(structured).data.action == "like"


def test_numbers_no_decimal_holds_are_judged_and_kept_as_written():
    """An exponent past Decimal's (about 10^18) raised InvalidOperation in every reader that takes
    numbers as Decimals: the NATS inbox read the event again for ever, HTTP answered 500 (an outside
    audit). In an unknown field such a number is kept as written; in an amount the error names it."""
    from events.upcasting import decode_exact, encode_exact
    from events.validation import read_leniently
    from services.ingest import judge

    huge = "1e-99999999999999999999"
    raw = json.dumps(VALID[2], separators=(",", ":")).replace('"spring"}', '"spring","extra":%s}' % huge).encode()
    assert huge.encode() in raw and parse_event(raw).data.channel == "instagram"
    assert encode_exact(decode_exact(raw)) == raw
    assert encode_exact(read_leniently(raw.decode())) == raw
    deal = json.dumps(WON).replace('"99.50"', huge).encode()
    assert huge.encode() in deal
    assert judge(deal).error == f"data.amount: expected at most 30 digits before the decimal point and 30 after, got {huge}"


def test_binary_mode_errors_name_the_header():
    assert header_error("subject: required for this event type") == "ce-subject: required for this event type"
    assert header_error("time: expected a time in the years 1000 to 8999").startswith("ce-time:")
    assert header_error("data.channel: required field missing") == "data.channel: required field missing"


@pytest.mark.parametrize("workspace,ok", [("acme", True), ("a-1", True), ("a" * 64, True), ("", False),
                                          ("a" * 65, False), ("Acme", False), ("a.b", False), ("a*", False),
                                          ("a>", False), ("a b", False), ("acme\n", False)])
def test_workspace_ids(workspace, ok):
    assert is_workspace_id(workspace) is ok


@pytest.mark.parametrize("currency", ["eur", "EUR\n", "EURO", "E1R"])
def test_a_currency_is_three_upper_case_letters_and_nothing_after_them(currency):
    """$ matched before a final newline: "EUR\n" was stored, a currency of its own in revenue."""
    body = event("sales.deal.won", "dana", deal_id="d1", amount="10", currency=currency)
    expected = "data.currency: expected three upper-case letters (an ISO 4217 code, like EUR), got " + json.dumps(currency)
    with pytest.raises(InvalidEvent, match="^" + re.escape(expected) + "$"):
        parse_event(json.dumps(body).encode())


@pytest.mark.parametrize("kind,change,message", [
    ("sales.deal.won", {"amount": None}, "data.amount: expected a decimal (a JSON number or a numeric string), got null"),
    ("sales.deal.won", {"deal_id": 5}, "data.deal_id: expected a string, got 5"),
    ("sales.deal.won", {"deal_id": ""}, 'data.deal_id: expected a non-empty string, got ""'),
    ("sales.deal.won", {"deal_id": "d" * 129}, "data.deal_id: expected a string of at most 128 characters, got 129 characters"),
    ("marketing.engaged", {"action": "poke"},
     'data.action: expected one of "click", "comment", "like", "open", "reply", "share", "view", "visit", got "poke"'),
    ("marketing.engaged", {"action": ["like"]}, 'data.action: expected a string, got ["like"]'),
    ("sales.lead.disqualified", {"reason": {"a": 1}}, 'data.reason: expected a string or null, got {"a":1}'),
    ("envelope", {"time": "2026-05-01T09:30:00"},
     'time: expected an RFC 3339 time with an offset, like 2026-05-01T09:30:00Z, got "2026-05-01T09:30:00"'),
    ("envelope", {"time": 5}, "time: expected an RFC 3339 time with an offset, like 2026-05-01T09:30:00Z, got 5"),
    ("envelope", {"specversion": "0.3"}, 'specversion: expected "1.0", got "0.3"'),
    ("envelope", {"id": 1.5}, "id: expected a string, got 1.5"),
    ("envelope", {"data": [1]}, "data: expected a JSON object, got [1]"),
])
def test_errors_say_what_was_expected_and_what_came_in_words(kind, change, message):
    """msgspec's own wording (expected `str`, got `int`; invalid enum value) told a producer's
    developer the type's Python name, not the value at fault nor the values allowed."""
    if kind == "envelope":
        body = {**event("sales.lead.qualified", "dana"), **change}
    else:
        body = event(kind, "dana", **{"deal_id": "d1", "amount": "10", "currency": "EUR", "channel": "web",
                                      "action": "like"} | change)
    with pytest.raises(InvalidEvent) as raised:
        parse_event(json.dumps(body).encode())
    assert str(raised.value) == message


def test_a_snapshot_name_is_whole():
    from services.replay import SNAPSHOT_NAME

    assert SNAPSHOT_NAME.fullmatch("seq-12") and not SNAPSHOT_NAME.fullmatch("seq-12\n")


def test_a_fault_of_the_checks_rejects_the_event_instead_of_failing_the_request(monkeypatch):
    """Raised, it was a 500 over HTTP and a NATS inbox message read again for ever."""
    from services import ingest

    def trip(raw: bytes):
        raise UnicodeDecodeError("utf-8", b"\xd9", 0, 1, "unexpected end of data")

    monkeypatch.setattr(ingest, "parse_event", trip)
    judged = ingest.judge(b'{"id": "x"}')
    assert judged.event is None
    assert judged.error == "event: could not be checked (UnicodeDecodeError); kept in the rejected list"


def test_a_decimal_error_cuts_its_text_by_characters_not_bytes():
    body = event("sales.deal.won", "dana", deal_id="d1", amount="١" * 60, currency="EUR")
    with pytest.raises(InvalidEvent, match=r'^data\.amount: expected a non-negative decimal, got "١{60}"$'):
        parse_event(json.dumps(body, ensure_ascii=False).encode())


@pytest.mark.parametrize("sent, kept", [
    ("2025-01-31T23:59:59.9999996Z", "2025-01-31T23:59:59.999999+00:00"),  # msgspec made it midnight
    ("2025-01-31T23:59:59.1234565Z", "2025-01-31T23:59:59.123456+00:00"),
    ("2025-01-31T23:59:59.999999999999+01:00", "2025-01-31T23:59:59.999999+01:00"),
    ("2025-01-31t23:59:59.9999999z", "2025-01-31T23:59:59.999999+00:00"),
    ("2025-01-31T23:59:59.999999Z", "2025-01-31T23:59:59.999999+00:00"),
    ("2025-01-31T23:59:59.5Z", "2025-01-31T23:59:59.500000+00:00"),
    ("2025-01-31T23:59:59Z", "2025-01-31T23:59:59+00:00"),
])
def test_a_time_finer_than_microseconds_is_cut_not_rounded(sent, kept):
    """By ingest and by every reader of the log alike (both decode with events.catalog.decode_event)."""
    from events.log import decode_logged

    raw = json.dumps(event("sales.conversation.held", "dana", time=sent, channel="phone")).encode()
    assert parse_event(raw).time.isoformat() == kept
    assert decode_logged(1, "touchline.log.w", {}, raw).event.time.isoformat() == kept


@pytest.mark.parametrize("spelled", [r"59.999999\u0039", r"5\u0039\u002e9999999", r"59\u002E9999996"])
def test_a_finer_time_spelled_with_escaped_digits_is_cut_too(spelled):
    # The same JSON string as 59.9999999: it was rounded to the next day (an outside audit).
    from events.log import decode_logged

    raw = json.dumps(event("sales.conversation.held", "dana", time="2025-01-31T23:59:SSZ", channel="phone"))
    raw = raw.replace("SS", spelled).encode()
    assert parse_event(raw).time.isoformat() == "2025-01-31T23:59:59.999999+00:00"
    assert decode_logged(1, "touchline.log.w", {}, raw).event.time.isoformat() == "2025-01-31T23:59:59.999999+00:00"


def test_seven_decimals_elsewhere_leave_the_time_alone():
    raw = json.dumps(event("sales.deal.won", "dana", time="2025-01-31T23:59:59.25Z", deal_id="d.1234567",
                           amount="1.1234567", currency="EUR")).encode()
    parsed = parse_event(raw)
    assert parsed.time == dt.datetime(2025, 1, 31, 23, 59, 59, 250000, tzinfo=dt.timezone.utc)
    assert parsed.data.amount == Decimal("1.1234567")


def test_a_long_value_is_shown_cut_whole_and_closed():
    """Cut at 100 characters of its JSON, a value lost its closing quote, or ended inside an escape
    (`got "aaa…aaa\\u`: an outside audit)."""
    from events.validation import shown

    text = shown("a" * 97 + "\u0007" * 5)
    assert text.startswith('"aaa') and text.endswith('"… (102 characters)')
    assert "\\u000" not in text.split('"… (')[0][-5:]  # no escape cut in two
    assert shown([1] * 300).endswith("…") and len(shown([1] * 300)) == 101
    assert shown("short") == '"short"'


@pytest.mark.parametrize("change,message", [
    ({"type": "touchline.nope"}, 'type: unknown event type "touchline.nope"'),
    ({"type": {"a": 1}}, 'type: expected a string, got {"a":1}'),
    ({"source": "not a uri"}, 'source: expected a URI-reference (RFC 3986: no spaces, other characters'
                              ' percent-encoded), got "not a uri"'),
])
def test_values_in_errors_are_json_not_python(change, message):
    """Python's repr and type names (`got 'x'`, `got dict`) stood where the rest show JSON."""
    with pytest.raises(InvalidEvent) as raised:
        parse_event(json.dumps({**event("sales.lead.qualified", "dana"), **change}).encode())
    assert str(raised.value) == message


def test_an_empty_message_and_a_number_out_of_range_say_so():
    with pytest.raises(InvalidEvent, match=r"^event: empty \(expected a JSON object\)$"):
        parse_event(b" ")
    body = json.dumps(event("marketing.metrics.reported", None, campaign_id="c", metric="m", value=1)).encode()
    with pytest.raises(InvalidEvent, match=r"^data\.value: expected a number within a double's range, got 1E\+400$"):
        parse_event(body.replace(b'"value": 1', b'"value": 1e400'))


ENGAGED = json.dumps(event("marketing.engaged", "dana", channel="email", action="open", tags=["a", "b"])).encode()


@pytest.mark.parametrize("old,new,message", [
    (b'"email"', b'"em\\udc00ail"', "data.channel: holds a lone UTF-16 surrogate (\\udc00), which is no character"),
    (b'"b"', b'"\\ud800"', "data.tags[1]: holds a lone UTF-16 surrogate (\\ud800), which is no character"),
    (b'"action"', b'"act\\ud800ion"', "data: a key holds a lone UTF-16 surrogate (\\ud800), which is no character"),
    (b'"dana"', b'"da\\u0000na"', "subject: holds the NUL character (\\u0000), which is not allowed"),
    (b'"subject"', b'"sub\\u0000ject"', "event: a key holds the NUL character (\\u0000), which is not allowed"),
])
def test_a_string_no_event_can_hold_is_named_by_its_field(old, new, message):
    """A lone surrogate escape is grammatical JSON (RFC 8259 section 8.2) that msgspec refuses whole;
    it and NUL used to be reported for the event ("event: not valid JSON"), not for the field."""
    assert old in ENGAGED
    with pytest.raises(InvalidEvent) as err:
        parse_event(ENGAGED.replace(old, new))
    assert str(err.value) == message


def test_a_surrogate_pair_is_a_character_and_accepted():
    assert parse_event(ENGAGED.replace(b'"email"', b'"\\ud83d\\ude00"')).data.channel == "\U0001F600"


@pytest.mark.parametrize("attribute,value,message", [
    ("id", "order\t1", "id: holds a control character (U+0009), which CloudEvents does not allow"),
    ("subject", "dana\n", "subject: holds a control character (U+000A), which CloudEvents does not allow"),
    ("id", "a\u0085", "id: holds a control character (U+0085), which CloudEvents does not allow"),
    ("subject", "d\ufdd0", "subject: holds a noncharacter (U+FDD0), which CloudEvents does not allow"),
    ("id", "a\U0010ffff", "id: holds a noncharacter (U+10FFFF), which CloudEvents does not allow"),
    ("id", "a\u200db\u00a0\u00e9\U0001F600", None),  # not printable, but characters CloudEvents allows
])
def test_ids_and_contacts_hold_only_characters_cloudevents_allows(attribute, value, message):
    body = {**json.loads(ENGAGED), attribute: value}
    if message is None:
        assert getattr(parse_event(json.dumps(body).encode()), attribute) == value
        return
    with pytest.raises(InvalidEvent) as err:
        parse_event(json.dumps(body).encode())
    assert str(err.value) == message


ENGAGED_WITH = ('{"specversion":"1.0","id":"rk","source":"/rk","type":"touchline.marketing.engaged",'
           '"time":"2026-11-20T10:00:00Z","subject":"dana","data":{"channel":"web",%s}}')


@pytest.mark.parametrize("pairs, message", [
    ('"action":"poke","action":"view"', 'data.action: given 2 times ("poke", "view"), and every copy must be valid:'
                                        ' expected one of "click", "comment", "like", "open", "reply", "share", "view",'
                                        ' "visit", got "poke"'),
    ('"action":"view","action":5', 'data.action: given 2 times ("view", 5), and every copy must be valid: expected'
                                   ' a string, got 5'),
    # past the copies tried, msgspec's own words: the last copy's value would be a good one
    ('"action":"open",' * 20 + '"action":"poke","action":"view"',
     'data.action: given 22 times ("open", "open", "open", …), and every copy must be valid: invalid enum value'
     " 'poke'"),
])
def test_a_key_given_more_than_once_names_the_copy_that_is_wrong(pairs, message):
    """msgspec checks every copy of a repeated key and keeps the last: a bad first copy refused the
    event with an error showing the good last one (`got "view"`), which an outside audit found."""
    with pytest.raises(InvalidEvent) as refused:
        parse_event((ENGAGED_WITH % pairs).encode())
    assert str(refused.value) == message
    assert parse_event((ENGAGED_WITH % '"action":"view","action":"like"').encode()).data.action == "like"  # the last


@pytest.mark.parametrize("attributes, message", [
    # a repeated object: the error named a field of it with the good copy's value ("got "web"")
    ('"data":{"channel":5},"data":{"channel":"web","action":"view"}',
     "data: given 2 times, and every copy must be valid: data.channel: expected a string, got 5"),
    # two types of the catalog: the error called one of them unknown
    ('"type":"touchline.goal.set","data":{"channel":"web","action":"view"}',
     'type: given 2 times ("touchline.marketing.engaged", "touchline.goal.set"); an event has one'),
    # a copy holding a repeated key of its own, or a deep sibling: "could not be checked (TypeError)",
    # "(RecursionError)" (a review of the change that named repeated objects)
    ('"data":{"channel":"web","action":"view","x":1,"x":2},"data":{"channel":5,"action":"view"}',
     "data: given 2 times, and every copy must be valid: data.channel: expected a string, got 5"),
    ('"data":{"channel":"web","action":"poke","action":"view"},"data":{"channel":"web","action":"view"}',
     "data: given 2 times, and every copy must be valid: data.action: invalid enum value 'poke'"),
    ('"ext":' + "[" * 500 + "]" * 500 + ',"data":{"channel":5,"action":"view"},"data":{"channel":"web","action":"view"}',
     "data.channel: expected `str`, got `int`"),
])
def test_a_repeated_object_or_type_is_named_as_such(attributes, message):
    raw = ('{"specversion":"1.0","id":"rk","source":"/rk","type":"touchline.marketing.engaged",'
           f'"time":"2026-11-20T10:00:00Z","subject":"dana",{attributes}}}')
    with pytest.raises(InvalidEvent) as refused:
        parse_event(raw.encode())
    assert str(refused.value) == message


def test_two_types_alike_are_refused_for_what_the_type_is():
    raw = ('{"specversion":"1.0","id":"rk","source":"/rk","type":"touchline.followup.requested",'
           '"type":"touchline.followup.requested","time":"2026-11-20T10:00:00Z","subject":"dana","data":{}}')
    with pytest.raises(InvalidEvent) as refused:
        parse_event(raw.encode())
    assert str(refused.value) == "type: touchline.followup.requested is written by Touchline, never accepted from outside"


def test_explaining_a_bad_copy_among_thousands_is_bounded():
    """An outside audit: 4,050 copies of a key in a 64 KiB event took a third of a second of a
    worker's CPU to explain (the event decoded once a copy), and the error listed every copy."""
    pairs = '"action":"open",' * 4050 + '"action":"poke"'
    with pytest.raises(InvalidEvent) as refused:
        parse_event((ENGAGED_WITH % pairs).encode())
    assert str(refused.value).startswith('data.action: given 4051 times ("open", "open", "open", …), and every copy')
    assert len(str(refused.value)) < 300


@pytest.mark.parametrize("target", ['"+5"', '"abc"', '"1_000"'])
def test_a_target_written_wrong_says_what_a_target_takes(target):
    """It said "expected a non-negative decimal", though a target of 0 is refused too (an outside audit)."""
    raw = ('{"specversion":"1.0","id":"g","source":"/s","type":"touchline.goal.set","time":"2026-11-20T10:00:00Z",'
           '"data":{"goal_id":"g1","metric":"leads","target":%s,"period_start":"2026-11-01","period_end":"2026-12-01"}}')
    with pytest.raises(InvalidEvent) as refused:
        parse_event((raw % target).encode())
    assert str(refused.value) == f"data.target: expected a decimal greater than 0, got {target}"


def test_a_leap_second_is_refused_as_one():
    """RFC 3339 allows 23:59:60, which Python's datetime cannot hold: the error called it no RFC
    3339 time at all (an outside audit)."""
    raw = ('{"specversion":"1.0","id":"e","source":"/s","type":"touchline.marketing.engaged",'
           '"time":"2016-12-31T23:59:60Z","subject":"d","data":{"channel":"web","action":"view"}}')
    with pytest.raises(InvalidEvent) as refused:
        parse_event(raw.encode())
    assert str(refused.value) == 'time: a leap second cannot be kept: write :59.999999 for :60, got "2016-12-31T23:59:60Z"'
