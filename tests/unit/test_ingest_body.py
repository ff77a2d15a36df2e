"""Splitting an ingest body into events where msgspec refuses the whole text (a lone surrogate
escape), and what the rejected list keeps of a body (services/api/ingest_body.py)."""

from __future__ import annotations

import json

import pytest

from services.api.ingest_body import Refused, split_request
from services.ingest import kept_start
from tests.support import event

BATCH = "application/cloudevents-batch+json"
LONE = "data.channel: holds a lone UTF-16 surrogate (\\ud800), which is no character"


def raw(**data) -> bytes:
    return json.dumps(event("marketing.engaged", "dana", channel="email", action="open", **data)).encode()


def with_lone_surrogate() -> bytes:
    return raw().replace(b'"email"', b'"e\\ud800"')


def errors(body: bytes, kind: str = BATCH) -> list[str | None]:
    return [judged.error for judged in split_request(kind, {}, body)]


def test_a_huge_integer_beside_a_lone_surrogate_keeps_its_event():
    """Python's json makes no int of over 4,300 digits: the batch was refused whole (re-check audit)."""
    huge = raw().replace(b'"open"', b'"open", "x": ' + b"9" * 5000)
    assert errors(b"[" + with_lone_surrogate() + b"," + huge + b"]") == [LONE, None]
    assert errors(huge, "application/cloudevents+json") == [None]  # one event alone: judged, as in a batch


def test_an_attribute_named_event_is_named_as_any_other():
    body = json.loads(raw())
    body["event"] = {"x": "@"}
    assert errors(b"[" + json.dumps(body).encode().replace(b'"@"', b'"\\ud800"') + b"]") == [
        "event.x: holds a lone UTF-16 surrogate (\\ud800), which is no character"]


@pytest.mark.parametrize("body, error", [
    (b'"\\ud800"', "a batch must be a JSON array of events"),
    (b"[" + with_lone_surrogate() + b"] x", "the body is not JSON: Extra data"),
    (b"[" + with_lone_surrogate() + b",]", "the body is not JSON: Expecting value"),
    (b"[" * 5000 + b'"\\ud800"' + b"]" * 5000, "the body is nested too deeply"),
])
def test_a_body_with_a_lone_surrogate_that_is_no_batch_says_why(body, error):
    with pytest.raises(Refused) as refused:
        split_request(BATCH, {}, body)
    assert refused.value.status_code == 400 and refused.value.detail.startswith(error), refused.value.detail


def test_the_rejected_list_keeps_whole_characters():
    body = b'{"a":"' + "€".encode() * 30_000 + b'"}'  # 6 + 3n: the 65,536th byte is inside a €
    kept = kept_start(body)
    assert len(kept) == 65_535 and kept.decode().endswith("€")  # not 65,536 bytes ending in part of one
    assert kept_start(b"\xff" + b"a" * 70_000) == (b"\xff" + b"a" * 70_000)[:65_536]  # not text: cut as it is
    assert kept_start(b"abc") == b"abc"


def test_an_id_too_large_a_number_for_msgspec_is_named_as_any_other():
    """msgspec's probe cannot hold an integer of 5,000 digits: the element was "event: expected a
    JSON object" (the last re-check audit)."""
    body = json.loads(raw())
    huge = json.dumps(body).encode().replace(json.dumps(body["id"]).encode(), b"7" * 5000)
    [error] = errors(b"[" + huge + b"]")
    assert error.startswith("id: expected a string, got 7777") and error.endswith("…")
