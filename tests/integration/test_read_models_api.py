"""Funnel, touches, goals and attribution through the HTTP API on real servers, against the
reference definitions of the same events (CONTRACT.md sections 4 and 5)."""

from __future__ import annotations

import datetime as dt
import json
import random
import time

import msgspec
import pytest

from projections import attribution, funnel, goals, touches
from tests.histories import arrivals, first_copies, history
from tests.integration.test_replay import cli
from tests.support import event, settle, wait_for

_encode = msgspec.json.Encoder(decimal_format="string").encode
AS_OF = "2026-11-09T07:00:00Z"
FROM, TO = "2026-11-03T00:00:00Z", "2026-11-15T00:00:00Z"


def as_json(value) -> dict:
    return json.loads(_encode(value))


def when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def load_in_chunks(stack, ws, auth, bodies: list[dict], chunks: int) -> int:
    """Send in several requests, each applied before the next is sent, so the stored read
    models fold across batches as well as within one."""
    last = 0
    size = max(1, -(-len(bodies) // chunks))
    for start in range(0, len(bodies), size):
        last = max(last, stack.ingest(ws, auth, bodies[start : start + size]))
        assert stack.get(f"/v1/workspaces/{ws}/touches", auth, min_seq=last).status_code == 200
    return last


def read(stack, ws, auth, path: str, last: int, **params) -> dict:
    answer = stack.get(f"/v1/workspaces/{ws}/{path}", auth, min_seq=last, **params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def assert_refused(stack, ws, auth, cases) -> None:
    """Each (path under the workspace, query parameters, error) read is a 400 with exactly that error."""
    for path, params, error in cases:
        answer = stack.get(f"/v1/workspaces/{ws}/{path}", auth, **params)
        assert (answer.status_code, answer.json()) == (400, {"error": error}), (path, params, answer.text)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_http_answers_equal_the_definitions_for_any_arrival_order(stack, seed):
    bodies = history(seed, 150)
    sent = arrivals(bodies, random.Random(seed), duplicates=30)
    events = first_copies(sent)
    ws, auth = stack.new_workspace()
    last = load_in_chunks(stack, ws, auth, sent, chunks=4)

    assert read(stack, ws, auth, "funnel", last) == as_json(funnel.reference(events))
    assert read(stack, ws, auth, "funnel", last, **{"from": FROM, "to": TO}) == as_json(
        funnel.reference(events, when(FROM), when(TO)))
    for campaign in ("spring", "summer"):
        assert read(stack, ws, auth, "funnel", last, campaign=campaign, to=TO) == as_json(
            funnel.reference(events, None, when(TO), campaign))
    assert read(stack, ws, auth, "touches", last) == as_json(touches.reference(events))
    assert read(stack, ws, auth, "goals", last, as_of=AS_OF) == as_json(goals.reference(events, when(AS_OF)))
    for model in attribution.MODELS:
        for lookback in (30, 3):
            assert read(stack, ws, auth, "attribution", last, model=model, lookback_days=lookback) == as_json(
                attribution.reference(events, model, lookback)), (model, lookback)


def test_funnel_medians_over_centuries_are_exact_filtered_or_not(stack):
    """The filtered funnel took its medians in double precision, whose halves end at 2^52 µs (143
    years): two contacts 200 years from view to click read ...004 unfiltered and ...007 with
    `from` (an outside audit's oracle)."""
    ws, auth = stack.new_workspace()
    events = [
        event("marketing.engaged", contact, "1800-01-01T00:00:00Z", channel="web", action="view")
        for contact in ("a", "b")
    ] + [
        event("marketing.engaged", "a", "2000-03-13T01:04:44.859645Z", channel="web", action="click"),
        event("marketing.engaged", "b", "2000-03-14T09:19:02.608038Z", channel="web", action="click"),
    ]
    last = stack.ingest(ws, auth, events)
    expected = as_json(funnel.reference(first_copies(events)))
    assert read(stack, ws, auth, "funnel", last) == expected
    assert read(stack, ws, auth, "funnel", last, **{"from": "1000-01-01"}) == expected
    assert expected["stages"][1]["median_hours_from_previous"] == 1754897.1982594004


def test_attribution_edges_equal_the_definition(stack):
    """Paths of the stored query the random histories rarely reach: a touch too old for any
    time_decay share (2^-age underflows: never listed), conversions with one touch (summed in
    SQL) beside ones with several (weighed in Python), touches tied in time, two currencies,
    and scales per currency that differ between campaigns (3 places) and channels (none)."""
    ws, auth = stack.new_workspace()
    bodies = [
        event("marketing.engaged", "old", "2000-01-03T00:00:00Z", channel="ads", action="click", campaign_id="ancient"),
        event("marketing.engaged", "old", "2026-11-01T09:00:00Z", channel="ads", action="view", campaign_id="recent"),
        event("marketing.lead.captured", "old", "2026-11-02T09:00:00Z", channel="form", campaign_id="recent"),
        event("sales.outreach.sent", "old", "2026-11-02T10:00:00Z", channel="email"),
        event("sales.deal.won", "old", "2026-11-03T10:00:00Z", deal_id="d1", amount="10", currency="EUR"),
        event("marketing.engaged", "solo", "2026-11-05T09:00:00Z", channel="ads", action="view", campaign_id="single"),
        event("sales.deal.won", "solo", "2026-11-06T09:00:00Z", deal_id="d2", amount="3.125", currency="EUR"),
        event("marketing.engaged", "usd", "2026-11-04T09:00:00Z", channel="ads", action="like", campaign_id="recent"),
        event("marketing.engaged", "usd", "2026-11-04T09:00:00Z", channel="ads", action="like", campaign_id="single",
              id="tie-b"),
        event("sales.conversation.held", "usd", "2026-11-05T09:00:00Z", channel="phone"),
        event("sales.deal.won", "usd", "2026-11-07T09:00:00Z", deal_id="d3", amount="7.25", currency="USD"),
    ]
    events = first_copies(bodies)
    last = stack.ingest(ws, auth, bodies)
    for model in attribution.MODELS:
        for lookback in (36_500, 30, 1, 0):
            assert read(stack, ws, auth, "attribution", last, model=model, lookback_days=lookback) == as_json(
                attribution.reference(events, model, lookback)), (model, lookback)
    decayed = read(stack, ws, auth, "attribution", last, model="time_decay", lookback_days=36_500)
    assert [c["campaign_id"] for c in decayed["campaigns"]] == ["recent", "single"]


def test_late_reports_across_batches(stack):
    """A deal reported twice and a goal re-set, the later-in-time copies arriving first."""
    ws, auth = stack.new_workspace()
    later = [
        event("sales.deal.won", "ana", "2026-11-20T10:00:00Z", deal_id="d1", amount="999", currency="EUR"),
        event("goal.set", None, "2026-11-05T00:00:00Z", goal_id="q4", metric="revenue", target="1000",
              currency="EUR", period_start="2026-11-01", period_end="2026-12-01"),
        event("marketing.engaged", "ana", "2026-11-01T09:00:00Z", channel="ads", action="click", campaign_id="fall"),
    ]
    earlier = [
        event("sales.deal.won", "ana", "2026-11-02T10:00:00Z", deal_id="d1", amount="250.50", currency="EUR"),
        event("goal.set", None, "2026-11-01T00:00:00Z", goal_id="q4", metric="revenue", target="5",
              currency="EUR", period_start="2026-11-01", period_end="2026-12-01"),
        event("sales.deal.refunded", "ana", "2026-11-03T10:00:00Z", deal_id="d1", amount="0.50", currency="EUR"),
    ]
    last = load_in_chunks(stack, ws, auth, later + earlier, chunks=2)
    got = read(stack, ws, auth, "goals", last, as_of="2026-11-16T00:00:00Z")["goals"]
    assert len(got) == 1
    q4 = got[0]
    assert (q4["target"], q4["actual"], q4["attainment"], q4["expected_by_now"]) == ("1000", "250.00", 0.25, "500")
    assert q4["derived"]["avg_deal"] == "250.50" and q4["derived"]["deals_needed"] == 3
    credit = read(stack, ws, auth, "attribution", last, model="last")
    assert credit["campaigns"] == [{"campaign_id": "fall", "leads": 1.0, "deals": 1.0, "revenue": {"EUR": "250.50"}}]


def test_a_deal_won_for_two_contacts_is_the_earliest_ones_in_every_read(stack):
    """A deal_id is one deal in a workspace: the contact read counted it for each contact that
    reported it won, while goals and attribution gave it to the earliest report (an outside audit:
    contacts' deals_won summed to 2 where the deals_won goal counted 1). The later report arrives
    first, so the earlier one must take the deal from a contact already stored."""
    ws, auth = stack.new_workspace()
    ben = event("sales.deal.won", "ben", "2026-03-06T00:00:00Z", deal_id="D", amount="200", currency="EUR")
    ann = event("sales.deal.won", "ann", "2026-03-05T00:00:00Z", deal_id="D", amount="100", currency="EUR")
    own = event("sales.deal.won", "ben", "2026-03-07T00:00:00Z", deal_id="E", amount="7", currency="USD")
    goal = event("goal.set", None, "2026-03-01T00:00:00Z", goal_id="g", metric="deals_won", target="2",
                 period_start="2026-03-01", period_end="2026-04-01")
    last = stack.ingest(ws, auth, [ben, own, goal])
    assert read(stack, ws, auth, "contacts/ben", last)["deals_won"] == 2
    stack.ingest(ws, auth, [ann])
    # The won deals make post-sale follow-ups, which change open_followups between two reads: the
    # list and each contact are read once the rules and dispatchers are done (a clean clone's run
    # saw 0 in the list and 2 in the contact).
    last = settle(stack, ws, auth)
    contacts = {c["contact"]: c for c in read(stack, ws, auth, "contacts", last)["contacts"]}
    for name, deals_won, revenue in (("ann", 1, {"EUR": "100"}), ("ben", 1, {"USD": "7"})):
        assert (contacts[name]["deals_won"], contacts[name]["revenue"]) == (deals_won, revenue), name
        assert read(stack, ws, auth, f"contacts/{name}", last) == contacts[name]
    assert contacts["ben"]["stage"] == "customer" and contacts["ben"]["status"] == "won"  # its events still say so
    assert read(stack, ws, auth, "goals", last, as_of="2026-04-01T00:00:00Z")["goals"][0]["actual"] == "2"


def test_currency_and_derived_are_null_for_goals_other_than_revenue(stack):
    ws, auth = stack.new_workspace()
    period = {"period_start": "2026-11-01", "period_end": "2026-12-01"}
    sent = [
        event("sales.deal.won", "ana", "2026-11-02T10:00:00Z", deal_id="d1", amount="250.50", currency="EUR"),
        event("goal.set", None, "2026-11-01T00:00:00Z", goal_id="a-revenue", metric="revenue", target="1000",
              currency="EUR", **period),
        # A currency sent with another metric is accepted, and means nothing there.
        event("goal.set", None, "2026-11-01T00:00:00Z", goal_id="b-deals", metric="deals_won", target="4",
              currency="EUR", **period),
        event("goal.set", None, "2026-11-01T00:00:00Z", goal_id="c-leads", metric="leads", target="9", **period),
    ]
    last = stack.ingest(ws, auth, sent)
    stored = read(stack, ws, auth, "goals", last, as_of="2026-11-16T00:00:00Z")
    expected = as_json(goals.reference(first_copies(sent), when("2026-11-16T00:00:00+00:00")))
    assert stored == expected
    # A date is its UTC midnight.
    assert read(stack, ws, auth, "goals", last, as_of="2026-11-16") == expected
    plain = stack.get(f"/v1/workspaces/{ws}/goals", auth).json()["goals"]  # the hot path beside Litestar
    for answer in (stored["goals"], plain):
        assert [(g["goal_id"], g["currency"]) for g in answer] == [("a-revenue", "EUR"), ("b-deals", None),
                                                                  ("c-leads", None)]
        assert answer[0]["derived"]["avg_deal"] == "250.50"
        assert [g["derived"] for g in answer[1:]] == [None, None]  # present, and null
    assert answer[1]["actual"] == "1"
    # The stored goal keeps what the log says: a rebuild beside the live read models matches it.
    verified = cli(stack, "replay", "--workspace", ws, "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_read_errors(stack):
    ws, auth = stack.new_workspace()
    assert stack.get(f"/v1/workspaces/{ws}/funnel", {}).status_code == 401
    other, other_auth = stack.new_workspace()
    assert stack.get(f"/v1/workspaces/{ws}/goals", other_auth).status_code == 403
    assert stack.get("/v1/workspaces/nope-nope/touches", stack.admin()).status_code == 404
    bad_model = stack.get(f"/v1/workspaces/{ws}/attribution", auth, model="u-shaped")
    assert bad_model.status_code == 400 and "model" in bad_model.json()["error"]
    assert stack.get(f"/v1/workspaces/{ws}/funnel", auth, **{"from": "yesterday"}).json()["error"].startswith("from:")
    stale = stack.get(f"/v1/workspaces/{ws}/funnel", auth, min_seq=10**9, wait_ms=50)
    assert stale.status_code == 503 and stale.json()["error"] == "stale"
    empty = stack.get(f"/v1/workspaces/{ws}/touches", auth).json()
    assert empty == {"before_conversion": {"customers": 0, "histogram": {}, "median": None, "share_5_to_12": None},
                     "by_channel": {}}
    assert stack.get(f"/v1/workspaces/{ws}/goals", auth).json()["goals"] == []


def test_a_time_finer_than_microseconds_is_cut_never_rounded_across_a_bound(stack):
    """msgspec rounded 23:59:59.9999996 to midnight: a January conversation was counted in no
    January goal, reached its stage at a time it did not happen at, and left a funnel ending at
    midnight. It is cut to 23:59:59.999999, before every bound that is a whole microsecond."""
    ws, auth = stack.new_workspace()
    last = stack.ingest(ws, auth, [
        event("goal.set", time="2025-01-01T00:00:00Z", goal_id="jan", metric="conversations", target="1",
              period_start="2025-01-01", period_end="2025-02-01"),
        event("sales.conversation.held", "alice", time="2025-01-31T23:59:59.9999996Z", channel="phone"),
        event("sales.conversation.held", "bob", time="2025-02-01T00:59:59.99999951+01:00", channel="phone"),
    ])
    goal = read(stack, ws, auth, "goals", last, as_of="2025-02-15T00:00:00Z")["goals"][0]
    assert goal["actual"] == "2"
    for contact in ("alice", "bob"):  # bob's time in UTC, with an offset
        assert read(stack, ws, auth, f"contacts/{contact}", last)["reached"]["lead"] == "2025-01-31T23:59:59.999999Z"
    stages = read(stack, ws, auth, "funnel", last, to="2025-02-01T00:00:00Z")["stages"]
    assert [stage["contacts"] for stage in stages[:3]] == [2, 2, 2]
    # The audit trail keeps the event as it was sent.
    trail = read(stack, ws, auth, "contacts/alice/events", last)
    assert "2025-01-31T23:59:59.9999996Z" in json.dumps(trail)


def test_bad_query_parameters_and_bodies_are_answered_naming_the_field(stack):
    """Litestar's own checks (a number that is not one, a body of the wrong shape) answered
    "Validation failed for GET <url>"; every 400 names its field."""
    ws, auth = stack.new_workspace()
    assert_refused(stack, ws, auth, (
        ("attribution", {"lookback_days": "abc"}, "lookback_days: expected an integer, got 'abc'"),
        ("attribution", {"lookback_days": "1.5"}, "lookback_days: expected an integer, got '1.5'"),
        ("contacts", {"limit": "many"}, "limit: expected an integer, got 'many'"),
        ("funnel", {"min_seq": "abc"}, "min_seq: expected an integer, got 'abc'"),
        ("funnel", {"min_seq": "05"}, "min_seq: expected an integer without leading zeros, got '05'"),
        ("contacts", {"limit": "-007"}, "limit: expected an integer without leading zeros, got '-007'"),
        ("funnel", {"min_seq": "-1"}, "min_seq: expected a log sequence, 0 to 9223372036854775807, got -1"),
        ("goals", {"min_seq": "1", "wait_ms": "-1"}, "wait_ms: expected 0 to 60000, got -1"),
        ("touches", {"wait_ms": "soon"}, "wait_ms: expected an integer, got 'soon'"),
        ("rejected", {"limit": "x"}, "limit: expected an integer, got 'x'"),
        ("rejected", {"limit": "0"}, "limit: expected 1 to 1000, got 0"),  # was a full page
        ("alerts", {"limit": "-1"}, "limit: expected 1 to 10000, got -1"),
        ("alerts", {"rule": "bogus"}, "rule: expected one of metric-anomaly, goal-at-risk, got 'bogus'"),  # was []
        ("followups", {"limit": "0"}, "limit: expected 1 to 10000, got 0"),
        ("rules", {"min_seq": "abc"}, "min_seq: expected an integer, got 'abc'"),  # was ignored
    ))
    for path, params in (("followups", {"status": ""}), ("alerts", {"rule": ""}), ("contacts", {"stage": ""}),
                         ("attribution", {"model": ""}), ("contacts", {"limit": "", "after": ""}),
                         ("attribution", {"lookback_days": ""}), ("funnel", {"min_seq": "", "wait_ms": ""}),
                         ("rejected", {"before": ""})):  # but snapshot: see the next test
        assert stack.get(f"/v1/workspaces/{ws}/{path}", auth, **params).status_code == 200, (path, params)
    hooks = f"/v1/workspaces/{ws}/webhooks"
    for body, error in (
        ({}, "url: required field missing"),
        ({"url": "https://hooks.example/x", "max_attempts": "eight"}, "max_attempts: expected an integer, got a string"),
        ([1], "body: expected a JSON object, got a JSON array"),
    ):
        answer = stack.http.post(hooks, json=body, headers=stack.admin())
        assert (answer.status_code, answer.json()) == (400, {"error": error}), body
    # A body that is not JSON named no body at all ("Input data was truncated"), on every admin route.
    for path, raw, error in (
        ("/v1/workspaces", b'{"id":', "body: not valid JSON (Input data was truncated)"),
        (f"/v1/workspaces/{ws}/tokens", b"scopes=read", "body: not valid JSON (JSON is malformed: invalid character (byte 0))"),
        (hooks, b'{"url" "x"}', "body: not valid JSON (JSON is malformed: expected ':' (byte 7))"),
    ):
        answer = stack.http.post(path, content=raw, headers={**stack.admin(), "Content-Type": "application/json"})
        assert (answer.status_code, answer.json()) == (400, {"error": error}), path
    answer = stack.http.put(f"/v1/workspaces/{ws}/rules", content=b"x", headers={**stack.admin(), "Content-Type": "application/json"})
    assert answer.status_code == 400 and answer.json()["error"].startswith("body: not valid JSON ("), answer.text


def test_integers_are_digits_and_a_parameter_is_given_once(stack):
    """Litestar read `1e3` and `5.0` as integers, `min_seq=null` as no min_seq at all (so no wait,
    silently), and kept the last of a repeated parameter: each is a 400 naming the parameter, once
    the token and the workspace are known good."""
    ws, auth = stack.new_workspace()
    assert_refused(stack, ws, auth, (
        ("funnel", {"min_seq": "1e3"}, "min_seq: expected an integer, got '1e3'"),
        ("contacts", {"min_seq": "null"}, "min_seq: expected an integer, got 'null'"),
        ("contacts", {"limit": "5.0"}, "limit: expected an integer, got '5.0'"),
        ("attribution", {"lookback_days": "+7"}, "lookback_days: expected an integer, got '+7'"),
        ("rejected", {"before": "0x10"}, "before: expected an integer, got '0x10'"),
        ("goals", {"min_seq": ["1", "2"]}, "min_seq: given more than once"),
        ("contacts", {"stage": ["lead", "aware"]}, "stage: given more than once"),
        ("funnel", {"from": ["2026-01-01T00:00:00Z"] * 2}, "from: given more than once"),
    ))
    # An empty copy is a parameter left out; a parameter the route does not take is ignored, as before.
    assert stack.get(f"/v1/workspaces/{ws}/contacts", auth, limit=["", "3"], foo=["1", "2"]).status_code == 200
    assert stack.get(f"/v1/workspaces/{ws}/funnel", auth, min_seq="0", wait_ms="10").status_code == 200
    # The token and the workspace are checked first: a parameter Litestar cannot read was a 400
    # before them.
    other, other_auth = stack.new_workspace()
    for path, params in (("contacts", {"limit": "many"}), ("funnel", {"min_seq": ["1", "2"]}),
                         ("contacts/c1/events", {"after": "x"}), ("rules", {"wait_ms": "soon"})):
        assert stack.get(f"/v1/workspaces/{ws}/{path}", {}, **params).status_code == 401, (path, params)
        assert stack.get(f"/v1/workspaces/{ws}/{path}", other_auth, **params).status_code == 403, (path, params)
        assert stack.get(f"/v1/workspaces/no-such-ws/{path}", stack.admin(), **params).status_code == 404, path
    assert stack.get("/v1/status", auth, min_seq="many").status_code == 403


def test_values_postgresql_cannot_take_are_a_400_naming_the_field_never_a_500(stack):
    """An audit found 500s (in Litestar's shape, logged nowhere) for a NUL, a sequence past 64 bits,
    a time that leaves the years 1-9999 in UTC, and webhook URLs urlsplit cannot read."""
    ws, auth = stack.new_workspace()
    big = "99999999999999999999999"
    assert_refused(stack, ws, auth, (
        ("contacts", {"after": "\x00"}, "after: holds the NUL character (%00), which is not allowed"),
        ("funnel", {"campaign": "a\x00b"}, "campaign: holds the NUL character (%00), which is not allowed"),
        ("followups", {"contact": "\x00"}, "contact: holds the NUL character (%00), which is not allowed"),
        ("goals", {"snapshot": "\x00"}, "snapshot: holds the NUL character (%00), which is not allowed"),
        ("contacts/%00", {}, "path: holds the NUL character (%00), which is not allowed"),
        ("contacts/a%00b/events", {}, "path: holds the NUL character (%00), which is not allowed"),
        ("rejected", {"before": big}, f"before: expected a log sequence, 0 to 9223372036854775807, got {big}"),
        ("contacts/c1/events", {"after": big}, f"after: expected a log sequence, 0 to 9223372036854775807, got {big}"),
        ("funnel", {"min_seq": big}, f"min_seq: expected a log sequence, 0 to 9223372036854775807, got {big}"),
        # A date is taken too, and the message says so (it said "an RFC 3339 time" only).
        ("goals", {"as_of": "2026-11-40"},
         "as_of: expected an RFC 3339 time or a date, like 2026-11-15T09:30:00Z or 2026-11-15, got '2026-11-40'"),
        ("goals", {"as_of": "9999-12-31T23:59:59-23:59"},
         "as_of: expected a time in the years 1 to 9999 UTC, got '9999-12-31T23:59:59-23:59'"),
        ("funnel", {"from": "0001-01-01T00:00:00+14:00"},
         "from: expected a time in the years 1 to 9999 UTC, got '0001-01-01T00:00:00+14:00'"),
        # ISO 8601 that is no RFC 3339 was read as some other moment: 21:00, a week's Monday.
        *((path, {name: text}, f"{name}: expected an RFC 3339 time or a date, like 2026-11-15T09:30:00Z or"
                               f" 2026-11-15, got {text!r}")
          for path, name, text in (("funnel", "to", "2026-11-24T21Z"), ("goals", "as_of", "2026-W47-1"),
                                   ("followups", "as_of", "20261124T210315Z"))),
        # An empty snapshot name answered from the live read models.
        *((path, {"snapshot": ""}, "snapshot: expected the name of a snapshot, got an empty one"
                                   " (leave snapshot out to read the live read models)")
          for path in ("funnel", "contacts/c1", "contacts/c1/events", "followups")),
    ))
    # ... once the token is checked: refused before it, it was a 400 where the contract says 401.
    assert stack.get(f"/v1/workspaces/{ws}/funnel", {}, snapshot="").status_code == 401
    # A NUL too (an outside fuzz of the API): 401 without a token, 403 with one of another scope.
    ingest_only = stack.http.post(f"/v1/workspaces/{ws}/tokens", json={"scopes": ["ingest"]},
                                  headers=stack.admin()).json()["token"]
    for path, params in (("touches", {"snapshot": "\x00"}), ("funnel", {"x": "\x00"}), ("contacts/a%00b", {})):
        assert stack.get(f"/v1/workspaces/{ws}/{path}", {}, **params).status_code == 401, path
        assert stack.get(f"/v1/workspaces/{ws}/{path}", {"Authorization": f"Bearer {ingest_only}"},
                         **params).status_code == 403, path
    ingest = stack.http.post(f"/v1/workspaces/{ws}/events?snapshot=", content=b"[]",
                             headers={"Content-Type": "application/cloudevents-batch+json"})
    assert ingest.status_code == 401
    for url in ("http://[::1/", "http://h/\u0000x", "http://h/a\nb"):
        answer = stack.http.post(f"/v1/workspaces/{ws}/webhooks", json={"url": url}, headers=stack.admin())
        assert answer.status_code == 400 and answer.json()["error"].startswith("url: expected an http(s) URL"), url



def test_head_answers_what_get_answers_without_the_body(stack):
    """HEAD was a 405 on every route, /v1/health included (RFC 9110 section 9.3.2)."""
    ws, auth = stack.new_workspace()
    stack.ingest(ws, auth, [event("marketing.lead.captured", "lee", channel="web")])
    deadline = time.monotonic() + 60  # health is 503 until every service has beaten once
    while stack.http.get("/v1/health").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    # the projector may not have folded lee in yet: a GET and a HEAD either side of it would differ
    wait_for(lambda: stack.get(f"/v1/workspaces/{ws}/contacts/lee", auth).status_code == 200, what="lee projected")
    for path, params in (("/v1/health", {}), (f"/v1/workspaces/{ws}/contacts/lee", {}),  # the fast path
                         (f"/v1/workspaces/{ws}/contacts", {"limit": 5}), (f"/v1/workspaces/{ws}/funnel", {})):
        def answers():  # health turns on heartbeats: it may change between the two requests
            get = stack.http.get(path, params=params, headers=auth)
            head = stack.http.head(path, params=params, headers=auth)
            return (get, head) if head.status_code == get.status_code else None

        get, head = wait_for(answers, 10, what=f"a GET and a HEAD of {path} with the same status")
        assert head.content == b"", path
        assert head.headers["content-type"] == get.headers["content-type"], path
    assert stack.http.head(f"/v1/workspaces/{ws}/contacts/nobody", headers=auth).status_code == 404
    assert stack.http.head(f"/v1/workspaces/{ws}/events", headers=auth).status_code == 405  # no GET there
