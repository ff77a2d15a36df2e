"""Golden JSON of every event type and catalog version: round trips, and old shapes read as today's."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from events.catalog import ALL_TYPES, AnyEvent, type_name
from events.log import HEADER_CATALOG_VERSION, arrival_headers, decode_logged
from events.upcasting import CATALOG_VERSION, UPCASTERS, upcast_json
from events.validation import encode_event, parse_event

GOLDEN = Path(__file__).parent.parent / "golden"
CURRENT = sorted((GOLDEN / f"v{CATALOG_VERSION}").glob("*.json"))
OLD = sorted(path for version in range(CATALOG_VERSION) for path in (GOLDEN / f"v{version}").glob("*.json"))
decode = msgspec.json.Decoder(AnyEvent).decode


def test_every_type_has_a_golden_fixture_of_the_current_version():
    assert {path.stem for path in CURRENT} == {type_name(cls) for cls in ALL_TYPES}


def test_every_upcaster_has_a_golden_fixture_of_its_version():
    assert {(path.stem, int(path.parent.name[1:])) for path in OLD} == set(UPCASTERS)


@pytest.mark.parametrize("path", CURRENT, ids=lambda p: p.stem)
def test_golden_events_round_trip_exactly(path: Path):
    raw = path.read_bytes()
    event = decode(raw)
    assert type_name(event) == path.stem
    assert json.loads(encode_event(event)) == json.loads(raw)
    assert decode(encode_event(event)) == event
    if not event.internal:
        assert parse_event(raw) == event


@pytest.mark.parametrize("path", OLD, ids=lambda p: f"{p.parent.name}-{p.stem}")
def test_old_shapes_are_read_as_todays(path: Path):
    version = int(path.parent.name[1:])
    today = decode((GOLDEN / f"v{CATALOG_VERSION}" / path.name).read_bytes())
    logged = decode_logged(9, "touchline.log.acme", {HEADER_CATALOG_VERSION: str(version)}, path.read_bytes())
    assert logged.event == today
    assert decode(logged.raw) == today
    with pytest.raises(msgspec.ValidationError):
        decode(path.read_bytes())  # today's catalog alone cannot read it


def test_current_and_unstamped_events_are_not_touched():
    raw = (GOLDEN / f"v{CATALOG_VERSION}" / "touchline.sales.deal.won.json").read_bytes()
    assert upcast_json(raw, CATALOG_VERSION) is raw
    assert decode_logged(1, "touchline.log.acme", {}, raw).raw == raw
    assert arrival_headers(decode_logged(1, "touchline.log.acme", {}, raw).received_at)[
        HEADER_CATALOG_VERSION
    ] == str(CATALOG_VERSION)


def test_upcasting_keeps_unknown_fields_and_exact_decimals():
    old = (b'{"specversion":"1.0","id":"x","source":"/s","type":"touchline.sales.deal.won",'
           b'"time":"2026-01-01T00:00:00Z","subject":"c","extension":"kept",'
           b'"data":{"deal_id":"d","amount_cents":1,"currency":"EUR","rate":1.10}}')
    raw = upcast_json(old, 0)
    assert b'"extension":"kept"' in raw and b'"rate":1.10' in raw
    assert decode(raw).data.amount == Decimal("0.01")


def test_an_event_from_a_newer_catalog_is_refused_not_guessed():
    raw = (GOLDEN / f"v{CATALOG_VERSION}" / "touchline.sales.deal.won.json").read_bytes()
    with pytest.raises(ValueError, match="newer"):
        decode_logged(1, "touchline.log.acme", {HEADER_CATALOG_VERSION: str(CATALOG_VERSION + 1)}, raw)
