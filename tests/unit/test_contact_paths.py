"""A contact id in a URL (services/api/contact_paths.py): one percent-encoded segment, decoded once
from the raw path, whatever characters the id holds."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from services.api.contact_paths import ContactPath, parse, segment

# Ids the contract allows (any 1-128 characters) that a path would otherwise mangle.
TRICKY = ["x/y", "a/b", "a%2Fb", "a%252Fb", "x/events", "events", "/", "//", "/lead", "trail/", "with space",
          "café ☕", ".", "..", "...", "%", "100%", "%zz", "q?#&=+;", "a\\b", "x" * 128, "/" * 128]


def request(raw_path: bytes) -> dict:
    """The scope uvicorn makes: ``path`` percent-decoded, ``raw_path`` as sent."""
    return {"type": "http", "path": unquote(raw_path.decode("ascii")), "raw_path": raw_path}


@pytest.mark.parametrize("contact", TRICKY)
def test_every_id_comes_back_whole_from_its_segment(contact):
    encoded = segment(contact)
    assert "/" not in encoded and encoded not in (".", "..") and encoded.isascii()
    for suffix, events in (("", False), ("/events", True), ("/", False), ("/events/", True)):
        found = parse(request(f"/v1/workspaces/acme/contacts/{encoded}{suffix}".encode()))
        assert found == ContactPath("acme", contact, events, f"/v1/workspaces/acme/contacts/{encoded}"
                                    + ("/events" if events else "")), suffix
        assert found.routed.count("/") == (6 if events else 5)  # Litestar sees one segment


def test_a_segment_is_decoded_exactly_once():
    assert parse(request(b"/v1/workspaces/w/contacts/a%252Fb")).contact == "a%2Fb"
    assert parse(request(b"/v1/workspaces/w/contacts/a%2Fb")).contact == "a/b"
    assert parse(request(b"/v1/workspaces/w/contacts/caf%C3%A9")).contact == "café"
    assert parse(request(b"/v1/workspaces/w/contacts/%2E%2E")).contact == ".."
    assert parse(request(b"/v1/workspaces/w/contacts/..")).contact == ".."  # sent as is (curl --path-as-is)


def test_the_audit_trail_and_a_contact_named_like_it_stay_apart():
    trail = parse(request(b"/v1/workspaces/w/contacts/x/events"))
    named = parse(request(b"/v1/workspaces/w/contacts/x%2Fevents"))
    assert (trail.contact, trail.events) == ("x", True)
    assert (named.contact, named.events) == ("x/events", False)
    assert named.routed == "/v1/workspaces/w/contacts/x%2Fevents"


def test_other_paths_are_not_contact_paths():
    for raw in (b"/v1/workspaces/w/contacts", b"/v1/workspaces/w/contacts/", b"/v1/workspaces/w/funnel",
                b"/v1/workspaces/w/contacts/a/b", b"/v1/workspaces/w/contacts/x/events/more", b"/v1/status",
                b"/v2/workspaces/w/contacts/x"):
        assert parse(request(raw)) is None, raw


def test_a_segment_that_is_not_utf8_names_no_contact():
    found = parse(request(b"/v1/workspaces/w/contacts/%FF%FE"))
    assert found is not None and found.contact is None and found.routed == "/v1/workspaces/w/contacts/%FF%FE"


def test_without_a_raw_path_the_decoded_path_is_taken_as_is():
    found = parse({"type": "http", "path": "/v1/workspaces/w/contacts/100%25"})
    assert found is not None and found.contact == "100%25"
