"""Bad input, fuzzed (CONTRACT.md sections 3 and 7): garbage over HTTP and NATS gets a result or
a clear 4xx, the API never answers 5xx nor dies, and nothing invalid reaches the log."""

from __future__ import annotations

import asyncio
import json
import os
import time
from urllib.parse import quote

import nats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.log import INBOX_STREAM, LOG_STREAM, decode_logged, inbox_subject
from events.validation import parse_event
from tests.support import event
from services.nats_io import connect_client

# TOUCHLINE_FUZZ_EXAMPLES=1000 for a longer hunt; the suite keeps it short.
FUZZ = settings(max_examples=int(os.environ.get("TOUCHLINE_FUZZ_EXAMPLES", "40")), deadline=None, suppress_health_check=list(HealthCheck), derandomize=not os.environ.get("TOUCHLINE_FUZZ_EXAMPLES"))
CONTENT_TYPES = ("application/cloudevents+json", "application/cloudevents-batch+json", "application/json")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=15,
)
ATTRIBUTES = ("specversion", "id", "source", "type", "time", "subject", "data", "datacontenttype")


def valid_events():
    return st.sampled_from([
        event("marketing.engaged", "fz", channel="ig", action="like"),
        event("sales.deal.won", "fz", deal_id="d1", amount="12.50", currency="EUR"),
        event("marketing.campaign.launched", campaign_id="c1", channel="ads", cost="5"),
        event("goal.set", goal_id="g", metric="revenue", target="100", currency="EUR",
              period_start="2026-11-01", period_end="2026-12-01"),
    ]).map(lambda e: {**e, "data": dict(e["data"])})


@st.composite
def mutated_events(draw):
    """A valid event with one attribute or data field replaced by anything, or removed."""
    body = draw(valid_events())
    body["id"] = f"fz-{draw(st.integers(0, 10**9))}"
    target = body["data"] if draw(st.booleans()) and body["data"] else body
    key = draw(st.sampled_from(sorted(target)) | st.sampled_from(ATTRIBUTES))
    if draw(st.integers(0, 4)) == 0:
        target.pop(key, None)
    else:
        target[key] = draw(json_values | st.text(min_size=100, max_size=3000) | st.sampled_from(["", " ", "\x00", "..", "*", ">", "-1", "1e400", "NaN"]))
    return body


@pytest.fixture(scope="module")
def fuzz_ws(stack):
    return stack.new_workspace()


def assert_ok_answer(answer, sent: int | None = None) -> None:
    assert answer.status_code < 500, (answer.status_code, answer.text[:300])
    if answer.status_code == 200 and sent is not None:
        results = answer.json()["results"]
        assert len(results) == sent
        for result in results:
            assert result["status"] in ("accepted", "duplicate", "rejected")
            assert result["status"] != "rejected" or result["error"]
    elif answer.status_code != 200:
        assert answer.status_code in (400, 413, 415), answer.text[:300]
        assert answer.json()["error"]


@FUZZ
@given(batch=st.lists(mutated_events() | json_values | valid_events(), min_size=1, max_size=8))
def test_fuzzed_batches_get_one_result_each(stack, fuzz_ws, batch):
    ws, auth = fuzz_ws
    answer = stack.send(ws, auth, batch)
    assert_ok_answer(answer, len(batch))


@FUZZ
@given(body=st.binary(max_size=2000) | mutated_events().map(lambda e: json.dumps(e).encode()).flatmap(
    lambda raw: st.integers(0, max(len(raw) - 1, 0)).map(lambda at: raw[:at] + b"\xff\xc3(" + raw[at:])),
       content_type=st.sampled_from(CONTENT_TYPES))
def test_fuzzed_bytes_in_every_content_type(stack, fuzz_ws, body, content_type):
    ws, auth = fuzz_ws
    headers = {**auth, "Content-Type": content_type}
    if content_type == "application/json":
        headers.update({"ce-specversion": "1.0", "ce-id": "bin", "ce-source": "/fz", "ce-time": "2026-11-01T10:00:00Z",
                        "ce-type": "touchline.marketing.engaged", "ce-subject": "fz"})
    answer = stack.http.post(f"/v1/workspaces/{ws}/events", content=body, headers=headers)
    assert_ok_answer(answer, 1 if content_type != "application/cloudevents-batch+json" else None)


@pytest.mark.parametrize("name,body,content_type", [
    ("deep array", b"[" * 50_000 + b"]" * 50_000, "application/cloudevents-batch+json"),
    ("deep element", b"[" + b"[" * 5_000 + b"]" * 5_000 + b"]", "application/cloudevents-batch+json"),
    ("deep object", b'{"data":' * 20_000 + b"1" + b"}" * 20_000, "application/cloudevents+json"),
    ("deep data", json.dumps(event("marketing.engaged", "x", channel="a", action="like"))[:-2].encode()
     + b', "x": ' + b"[" * 3000 + b"]" * 3000 + b"}}", "application/cloudevents+json"),
    ("huge string", json.dumps([event("sales.lead.disqualified", "x", reason="r" * 3_000_000)]).encode(),
     "application/cloudevents-batch+json"),
    ("over the cap", b"[" + b'"' + b"z" * (5 * 1024 * 1024) + b'"]', "application/cloudevents-batch+json"),
    ("invalid utf-8", json.dumps(event("marketing.engaged", "x", channel="a", action="like")).encode()
     .replace(b'"a"', b'"\xff\xfe"'), "application/cloudevents+json"),
    ("escaped nul", json.dumps(event("marketing.engaged", "x\x00y", channel="a", action="like")).encode(),
     "application/cloudevents+json"),
    ("lone surrogate", json.dumps(event("marketing.engaged", "x", channel="a", action="like")).encode()
     .replace(b'"a"', b'"\\ud800"'), "application/cloudevents+json"),
])
def test_hostile_bodies(stack, fuzz_ws, name, body, content_type):
    ws, auth = fuzz_ws
    answer = stack.http.post(f"/v1/workspaces/{ws}/events", content=body, headers={**auth, "Content-Type": content_type})
    assert_ok_answer(answer)
    if answer.status_code == 200:
        assert all(r["status"] == "rejected" for r in answer.json()["results"]), (name, answer.text[:300])


odd_workspaces = st.text(alphabet=st.sampled_from(list("ab-.*> /%\\é_AZ09?#\t")), min_size=0, max_size=70) | st.sampled_from(
    [".", "*", ">", "a.b", "a b", "a*", "ws.>", "..", "A", "x" * 65, "%00", "\u0000"])


@FUZZ
@given(workspace=odd_workspaces)
def test_odd_workspace_ids_in_urls(stack, fuzz_ws, workspace):
    ws, auth = fuzz_ws
    path = quote(workspace, safe="")
    one = json.dumps(event("sales.lead.qualified", "c")).encode()
    for headers in (auth, stack.admin()):
        answer = stack.http.post(f"/v1/workspaces/{path}/events", content=one,
                                 headers={**headers, "Content-Type": "application/cloudevents+json"})
        refused = (400, 403, 404, 405) if "\x00" in workspace else (403, 404, 405)  # 400: a NUL in the path
        assert answer.status_code in ((200,) if workspace == ws else refused), (workspace, answer.status_code)
        for route in ("contacts/c", "funnel", "rejected"):
            status = stack.http.get(f"/v1/workspaces/{path}/{route}", headers=headers).status_code
            assert 400 <= status < 500, (workspace, route, status)


def test_garbage_on_nats_is_judged_and_the_log_stays_valid(stack, fuzz_ws):
    ws, auth = fuzz_ws
    bodies = [b"", b"\xff\xfe\xfd", b"[" * 100_000, b"{" * 10, b"null", b"[]", b'"x"', b"1e99999",
              json.dumps(event("marketing.engaged", "n\x00ul", channel="a", action="like")).encode(),
              json.dumps(event("touchline.followup.requested", "x", followup_id="f")).encode(),
              b'{"specversion": "1.0", "id": "\xc3(", "source": "/s"}', b"x" * 70_000]
    # NATS tokens that are not workspace ids: judged as an unknown workspace, kept as rejected.
    subjects = [inbox_subject(ws)] + [f"touchline.in.{odd}" for odd in ("UPPER", "a_b", "é", "x" * 70, "-")]

    async def publish_all() -> None:
        nc = await connect_client(stack.servers.nats_url)
        js = nc.jetstream()
        for subject in subjects:
            for body in bodies:
                await js.publish(subject, body)
        # Subjects no stream holds (wildcards cannot even be published): no ack, nothing stored.
        for subject in ("touchline.in.a.b", "touchline.in"):
            with pytest.raises(nats.js.errors.NoStreamResponseError):
                await js.publish(subject, b"{}", timeout=2)
        await nc.close()

    asyncio.run(publish_all())

    async def inbox_left() -> int:
        nc = await connect_client(stack.servers.nats_url)
        info = await nc.jetstream().stream_info(INBOX_STREAM)
        await nc.close()
        return info.state.messages

    deadline = time.monotonic() + 120  # the inbox can sit ~20 s on a message (docs/reliability.md)
    while asyncio.run(inbox_left()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert asyncio.run(inbox_left()) == 0
    rejected = stack.get(f"/v1/workspaces/{ws}/rejected", auth, limit=1000).json()["rejected"]
    assert sum(1 for r in rejected if r["via"] == "nats") >= len(bodies)
    assert stack.api.process.poll() is None, "the API process died"


def test_afterwards_every_logged_event_parses(stack):
    """Runs after the fuzzing above: the whole log, every workspace, still holds only valid events."""
    assert stack.api.process.poll() is None, "the API process died"

    async def check() -> int:
        nc = await connect_client(stack.servers.nats_url)
        js = nc.jetstream()
        last = (await js.stream_info(LOG_STREAM)).state.last_seq
        sub = await js.subscribe("touchline.log.>", ordered_consumer=True, stream=LOG_STREAM)
        seen = 0
        while seen < last:
            msg = await sub.next_msg(timeout=10)
            logged = decode_logged(msg.metadata.sequence.stream, msg.subject, msg.headers, msg.data)
            if not logged.event.internal:  # follow-ups and alerts are written by Touchline itself
                parse_event(logged.raw)
            seen = msg.metadata.sequence.stream
        await nc.close()
        return seen

    assert asyncio.run(check()) >= 1
