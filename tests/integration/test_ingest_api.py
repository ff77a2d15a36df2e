"""Ingest over HTTP against real NATS and PostgreSQL (CONTRACT.md sections 2, 3 and 7)."""

from __future__ import annotations

import asyncio
import base64
import json
import time


from events.log import LOG_STREAM
from tests.support import event
from services.nats_io import connect_client


def test_batch_gets_one_result_per_element(stack):
    ws, auth = stack.new_workspace()
    first = event("marketing.engaged", "dana", channel="instagram", action="comment")
    answer = stack.send(ws, auth, [
        first,
        event("sales.deal.won", "dana", deal_id="d1", amount="ten", currency="EUR"),
        dict(first),
        event("sales.lead.qualified"),
        event("marketing.goal.nope", "dana"),
        17,
        [],
    ])
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["status"] for r in results] == [
        "accepted", "rejected", "duplicate", "rejected", "rejected", "rejected", "rejected",
    ]
    assert results[2]["seq"] == results[0]["seq"] == answer.json()["last_seq"]
    assert results[1]["error"] == 'data.amount: expected a non-negative decimal, got "ten"'
    assert results[3]["error"].startswith("subject:")
    assert results[4]["error"].startswith("type:")
    assert results[5]["error"] == results[6]["error"] == "event: expected a JSON object"


def test_a_lone_surrogate_rejects_its_own_event_not_the_whole_batch(stack):
    """``"\\ud800"`` is grammatical JSON (RFC 8259 section 8.2) that no event can hold: a batch used
    to be refused whole (400) for one such element, and a single event with a 400 naming nothing."""
    ws, auth = stack.new_workspace()
    url = f"/v1/workspaces/{ws}/events"
    good = json.dumps(event("marketing.engaged", "dana", channel="email", action="open")).encode()
    lone = json.dumps(event("marketing.engaged", "dana", channel="email", action="open")).encode()
    lone = lone.replace(b'"email"', b'"e\\udc00"')
    message = "data.channel: holds a lone UTF-16 surrogate (\\udc00), which is no character"
    answer = stack.http.post(url, content=b"[" + good + b", " + lone + b"]",
                             headers={**auth, "Content-Type": "application/cloudevents-batch+json"})
    assert answer.status_code == 200, answer.text
    assert [(r["status"], r.get("error")) for r in answer.json()["results"]] == [("accepted", None), ("rejected", message)]
    answer = stack.http.post(url, content=lone, headers={**auth, "Content-Type": "application/cloudevents+json"})
    assert answer.status_code == 200, answer.text
    assert [(r["status"], r["id"], r["error"]) for r in answer.json()["results"]] == [("rejected", json.loads(lone)["id"], message)]
    in_id = lone.replace(b'"id": "', b'"id": "\\ud800')  # an id an answer cannot carry: left out
    answer = stack.http.post(url, content=in_id, headers={**auth, "Content-Type": "application/cloudevents+json"})
    assert answer.json()["results"] == [{"source": json.loads(lone)["source"], "id": None, "status": "rejected",
                                         "error": "id: holds a lone UTF-16 surrogate (\\ud800), which is no character"}]
    binary = {**auth, "Content-Type": "application/json", "ce-specversion": "1.0", "ce-id": "b1", "ce-source": "/crm",
              "ce-type": "touchline.marketing.engaged", "ce-time": "2026-11-02T09:00:00Z", "ce-subject": "ana"}
    answer = stack.http.post(url, content=b'{"channel": "e\\udc00", "action": "open"}', headers=binary)
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0]["error"] == message
    kept = stack.get(url.replace("/events", "/rejected"), auth).json()["rejected"][2:]
    assert [item["reason"] for item in kept] == [message, message]
    assert kept[0]["body"] == lone.decode()


def test_single_event_modes(stack):
    ws, auth = stack.new_workspace()
    structured = stack.http.post(
        f"/v1/workspaces/{ws}/events",
        content=json.dumps(event("sales.lead.qualified", "ana")),
        headers={**auth, "Content-Type": "application/cloudevents+json; charset=utf-8"},
    )
    assert structured.status_code == 200 and structured.json()["results"][0]["status"] == "accepted"
    binary = stack.http.post(
        f"/v1/workspaces/{ws}/events",
        content=json.dumps({"channel": "phone"}),
        headers={
            **auth,
            "Content-Type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": "call-1",
            "ce-source": "/crm",
            "ce-type": "touchline.sales.conversation.held",
            "ce-time": "2026-11-02T09:00:00+01:00",
            "ce-subject": "ana",
        },
    )
    assert binary.status_code == 200, binary.text
    result = binary.json()["results"][0]
    assert (result["status"], result["source"], result["id"]) == ("accepted", "/crm", "call-1")
    missing = stack.http.post(
        f"/v1/workspaces/{ws}/events",
        content=json.dumps({"channel": "phone"}),
        headers={**auth, "Content-Type": "application/json", "ce-specversion": "1.0", "ce-id": "x"},
    )
    assert missing.status_code == 200
    assert missing.json()["results"][0]["error"].startswith("ce-source")


def test_request_level_errors(stack):
    ws, auth = stack.new_workspace()
    url = f"/v1/workspaces/{ws}/events"
    batch = {**auth, "Content-Type": "application/cloudevents-batch+json"}
    not_json = stack.http.post(url, content="{nope", headers=batch)
    assert not_json.status_code == 400 and not_json.json()["error"].startswith("the body is not JSON:"), not_json.text
    not_array = stack.http.post(url, content='{"a": 1}', headers=batch)
    assert (not_array.status_code, not_array.json()["error"]) == (400, "a batch must be a JSON array of events")
    single = {**auth, "Content-Type": "application/cloudevents+json"}
    assert stack.http.post(url, content="nope", headers=single).status_code == 400
    assert stack.http.post(url, content="{}", headers={**auth, "Content-Type": "text/plain"}).status_code == 415
    assert stack.http.post(url, content="{}", headers={**auth, "Content-Type": "application/json"}).status_code == 415
    too_many = [event("sales.lead.qualified", f"c{i}") for i in range(1001)]
    assert stack.http.post(url, content=json.dumps(too_many), headers=batch).status_code == 413
    huge = event("sales.lead.disqualified", "c", reason="x" * 70_000)
    assert stack.http.post(url, content=json.dumps(huge), headers=single).status_code == 413
    big_batch = json.dumps([event("sales.lead.qualified", "c", padding="y" * 60_000) for _ in range(80)])
    assert stack.http.post(url, content=big_batch, headers=batch).status_code == 413


def test_refused_requests_are_kept_in_the_rejected_list(stack):
    """A request refused whole (400, 413, 415) loses nothing either: its body, cut at 64 KiB, and
    the answer's error are kept, as every refused event's are."""
    ws, auth = stack.new_workspace()
    url = f"/v1/workspaces/{ws}/events"
    batch = {**auth, "Content-Type": "application/cloudevents-batch+json"}
    single = {**auth, "Content-Type": "application/cloudevents+json"}
    binary = {**auth, "Content-Type": "application/json", "ce-specversion": "1.0", "ce-id": "b1", "ce-source": "/crm",
              "ce-type": "touchline.sales.conversation.held", "ce-time": "2026-11-02T09:00:00Z", "ce-subject": "ana"}
    huge_batch = json.dumps([event("sales.lead.qualified", "c", padding="y" * 60_000) for _ in range(80)])
    sent = [
        (batch, b"{nope R1", 400),
        (single, b'{"a": "\xff R2"}', 400),
        ({**auth, "Content-Type": "text/plain"}, b"hello R3", 415),
        (single, json.dumps(event("sales.lead.disqualified", "c", reason="R4" * 35_000)).encode(), 413),
        (binary, b"{not json R5", 400),
        (batch, huge_batch.encode(), 413),
        (batch, iter([b"[R7" + b" " * 65_533] * 70), 413),  # chunked: no Content-Length to go by
        # Announced too large, its 64 KiB cut inside a character: cut before it (it was kept whole
        # bytes, no UTF-8: the list gave it as body_base64).
        (batch, b"[" + b"a" * 65_534 + "\u00e9".encode() + b" " * (4 * 1024 * 1024), 413),
    ]
    answers = []
    for headers, body, status in sent:
        answer = stack.http.post(url, content=body, headers=headers)
        assert answer.status_code == status, answer.text
        answers.append(answer.json()["error"])
        if "announced" in answer.json()["error"]:  # else the server reads and drops what was announced
            assert answer.headers["connection"] == "close"
    listed = stack.get(f"/v1/workspaces/{ws}/rejected", auth).json()["rejected"][::-1]
    assert [item["reason"] for item in listed] == answers
    assert [item["via"] for item in listed] == ["http"] * len(sent)
    for marker, item in zip(("R1", "R2", "R3", "R4"), listed):
        assert marker in item["body"]
    # A body that is not UTF-8 is also given exactly, in base64 (its text shows U+FFFD); only that one.
    assert base64.b64decode(listed[1]["body_base64"]) == b'{"a": "\xff R2"}' and "\ufffd R2" in listed[1]["body"]
    assert [item for item in listed if "body_base64" in item] == [listed[1]]
    assert len(listed[3]["body"]) == 65_536
    # Announced (Content-Length) over 4 MiB: refused having read only its start (nothing was kept).
    assert listed[5]["body"] == huge_batch[:65_536] and "only its first 65536 were read" in listed[5]["reason"]
    assert listed[6]["body"].startswith("[R7") and len(listed[6]["body"]) == 65_536
    assert listed[7]["body"] == "[" + "a" * 65_534
    # Binary mode is kept as its structured equivalent: a body that is not JSON as data_base64.
    kept = json.loads(listed[4]["body"])
    assert (kept["source"], kept["id"], kept["data_base64"]) == ("/crm", "b1", "e25vdCBqc29uIFI1")


def test_a_number_no_double_holds_is_judged_alike_in_every_mode(stack):
    """An event with 1e400 in an unknown data field is accepted as a batch element, alone and in
    binary mode (alone it was refused whole, "the body is not JSON"); where the catalog wants a
    number, the answer names the field and keeps the event's identity."""
    ws, auth = stack.new_workspace()
    url = f"/v1/workspaces/{ws}/events"
    big = '{"specversion":"1.0","id":"%s","source":"/audit","type":"touchline.marketing.engaged",' \
          '"time":"2026-11-02T10:00:00Z","subject":"dana","data":{"channel":"ig","action":"like","extra":1e400}}'
    single = stack.http.post(url, content=big % "one", headers={**auth, "Content-Type": "application/cloudevents+json"})
    batch = stack.http.post(url, content="[" + big % "two" + "]",
                            headers={**auth, "Content-Type": "application/cloudevents-batch+json"})
    binary = stack.http.post(url, content='{"channel":"ig","action":"like","extra":1e400}', headers={
        **auth, "Content-Type": "application/json", "ce-specversion": "1.0", "ce-id": "three", "ce-source": "/audit",
        "ce-type": "touchline.marketing.engaged", "ce-time": "2026-11-02T10:00:00Z", "ce-subject": "dana"})
    for answer in (single, batch, binary):
        assert answer.status_code == 200 and answer.json()["results"][0]["status"] == "accepted", answer.text
    metric = '{"specversion":"1.0","id":"mv-0","source":"/audit","type":"touchline.marketing.metrics.reported",' \
             '"time":"2026-11-02T10:00:00Z","data":{"campaign_id":"cX","metric":"impressions","value":1e400}}'
    refused = stack.http.post(url, content="[" + metric + "]",
                              headers={**auth, "Content-Type": "application/cloudevents-batch+json"})
    assert refused.json()["results"] == [{"source": "/audit", "id": "mv-0", "status": "rejected",
                                          "error": "data.value: expected a number within a double's range, got 1E+400"}]


def test_binary_mode_identity_headers_and_data(stack):
    """Binary mode takes every attribute from its ce- headers (percent-decoded), never from the body."""
    ws, auth = stack.new_workspace()
    url = f"/v1/workspaces/{ws}/events"
    headers = {**auth, "Content-Type": "application/json", "ce-specversion": "1.0", "ce-id": "h1",
               "ce-source": "/crm", "ce-type": "touchline.sales.conversation.held", "ce-subject": "J%C3%BCrgen"}
    no_time = stack.http.post(url, content=json.dumps({"id": "DATA-ID", "source": "/data", "channel": "x"}),
                              headers=headers)
    assert no_time.json()["results"] == [
        {"source": "/crm", "id": "h1", "status": "rejected", "error": "ce-time: required header missing"}]
    no_subject = {name: value for name, value in headers.items() if name != "ce-subject"}
    answer = stack.http.post(url, content='{"channel": "phone"}', headers={**no_subject, "ce-time": "2026-11-02T09:00:00Z"})
    assert answer.json()["results"][0]["error"].startswith("ce-subject: required")
    accepted = stack.http.post(url, content='{"channel": "phone"}',
                               headers={**headers, "ce-time": "2026-11-02T09:00:00Z", "ce-traceparent": "00-1"})
    assert accepted.json()["results"][0]["status"] == "accepted", accepted.text
    qualified = stack.http.post(url, content=b"", headers={**headers, "ce-id": "h2", "ce-time": "2026-11-02T10:00:00Z",
                                                           "ce-type": "touchline.sales.lead.qualified"})
    assert qualified.json()["results"][0]["status"] == "accepted", qualified.text
    seq = qualified.json()["last_seq"]
    trail = stack.get(f"/v1/workspaces/{ws}/contacts/J%C3%BCrgen/events", auth, min_seq=seq)
    assert trail.status_code == 200, trail.text
    [first, second] = trail.json()["events"]
    assert first["traceparent"] == "00-1" and first["subject"] == "J\u00fcrgen"
    assert second["type"] == "touchline.sales.lead.qualified"


def test_binary_mode_refuses_an_attribute_given_twice(stack):
    """Two ce-subject headers (or ce-id): the last one was taken, silently (an outside audit)."""
    ws, auth = stack.new_workspace()
    headers = [*auth.items(), ("Content-Type", "application/json"), ("ce-specversion", "1.0"), ("ce-id", "twice"),
               ("ce-source", "/crm"), ("ce-type", "touchline.sales.conversation.held"),
               ("ce-time", "2026-11-02T09:00:00Z"), ("ce-subject", "c9"), ("CE-Subject", "c10")]
    answer = stack.http.post(f"/v1/workspaces/{ws}/events", content='{"channel": "phone"}', headers=headers)
    assert answer.status_code == 200, answer.text
    [result] = answer.json()["results"]
    assert (result["status"], result["error"]) == ("rejected", "ce-subject: given more than once")
    rejected = stack.get(f"/v1/workspaces/{ws}/rejected", auth).json()["rejected"]
    assert [item["reason"] for item in rejected] == ["ce-subject: given more than once"]


def test_binary_mode_amounts_written_as_json_numbers_stay_exact(stack):
    ws, auth = stack.new_workspace()
    headers = {**auth, "Content-Type": "application/json", "ce-specversion": "1.0", "ce-id": "won-1",
               "ce-source": "/shop", "ce-type": "touchline.sales.deal.won", "ce-subject": "dana",
               "ce-time": "2026-11-02T09:00:00Z"}
    answer = stack.http.post(f"/v1/workspaces/{ws}/events", headers=headers,
                             content=b'{"deal_id": "o1", "amount": 123456789012345.6789, "currency": "EUR"}')
    assert answer.json()["results"][0]["status"] == "accepted", answer.text
    contact = stack.get(f"/v1/workspaces/{ws}/contacts/dana", auth, min_seq=answer.json()["last_seq"])
    assert contact.json()["revenue"] == {"EUR": "123456789012345.6789"}, contact.text


def test_tokens_scopes_and_isolation(stack):
    ws_a, auth_a = stack.new_workspace()
    ws_b, auth_b = stack.new_workspace()
    one = [event("sales.lead.qualified", "c1")]
    assert stack.send(ws_a, {}, one).status_code == 401
    assert stack.send(ws_a, {"Authorization": "Bearer not-a-token"}, one).status_code == 401
    assert stack.send(ws_b, auth_a, one).status_code == 403
    assert stack.get(f"/v1/workspaces/{ws_b}/rejected", auth_a).status_code == 403
    stack.ingest(ws_a, auth_a, one)
    assert stack.get(f"/v1/workspaces/{ws_b}/contacts/c1", auth_a).status_code == 403
    assert stack.get(f"/v1/workspaces/{ws_a}/contacts/c1", auth_b).status_code == 403
    ws_c, ingest_only = stack.new_workspace(scopes=("ingest",))
    assert stack.get(f"/v1/workspaces/{ws_c}/rejected", ingest_only).status_code == 403
    ws_d, read_only = stack.new_workspace(scopes=("read",))
    assert stack.send(ws_d, read_only, one).status_code == 403
    # workspace admin tokens cannot create workspaces; only the operator's can
    admin_a = stack.http.post(f"/v1/workspaces/{ws_a}/tokens", json={"scopes": ["admin"]}, headers=stack.admin())
    ws_admin = {"Authorization": f"Bearer {admin_a.json()['token']}"}
    assert stack.http.post("/v1/workspaces", json={"id": "other"}, headers=ws_admin).status_code == 403
    assert stack.http.post(f"/v1/workspaces/{ws_b}/tokens", json={"scopes": ["read"]}, headers=ws_admin).status_code == 403
    assert stack.http.post(f"/v1/workspaces/{ws_a}/tokens", json={"scopes": ["read"]}, headers=ws_admin).status_code == 201
    assert stack.http.post("/v1/workspaces", json={"id": ws_a}, headers=stack.admin()).status_code == 409
    assert stack.http.post("/v1/workspaces", json={"id": "Bad.Id"}, headers=stack.admin()).status_code == 400
    assert stack.get("/v1/status", auth_a).status_code == 403


def test_rejected_input_is_kept_newest_first(stack):
    ws, auth = stack.new_workspace()
    stack.send(ws, auth, [event("sales.deal.won", "c", deal_id="d", amount=-1, currency="EUR")])
    stack.send(ws, auth, ["not an event"])
    listed = stack.get(f"/v1/workspaces/{ws}/rejected", auth).json()["rejected"]
    assert [item["body"] for item in listed][0] == '"not an event"'
    assert listed[1]["reason"].startswith("data.amount:")
    assert '"deal_id":"d"' in listed[1]["body"].replace(" ", "")


def test_duplicates_beyond_the_jetstream_window(stack):
    ws, auth = stack.new_workspace()
    original = event("marketing.engaged", "kim", channel="email", action="open", id="mail-1", source="/mailer")
    first = stack.send(ws, auth, [original]).json()["results"][0]
    assert first["status"] == "accepted"

    async def shrink_window(seconds: float) -> None:
        nc = await connect_client(stack.servers.nats_url)
        js = nc.jetstream()
        config = (await js.stream_info(LOG_STREAM)).config
        config.duplicate_window = seconds
        await js.update_stream(config)
        await nc.close()

    asyncio.run(shrink_window(1.0))
    try:
        time.sleep(1.5)
        again = stack.send(ws, auth, [original]).json()["results"][0]
    finally:
        asyncio.run(shrink_window(120.0))
    assert again == {"source": "/mailer", "id": "mail-1", "status": "duplicate", "seq": first["seq"]}
    contact = stack.get(f"/v1/workspaces/{ws}/contacts/kim", auth, min_seq=first["seq"]).json()
    assert contact["touches"]["total"] == 1


def test_min_seq_waits_for_the_read_models(stack):
    ws, auth = stack.new_workspace()
    stack.projector.stop()
    try:
        seq = stack.ingest(ws, auth, [event("marketing.lead.captured", "lee", channel="web")])
        stale = stack.get(f"/v1/workspaces/{ws}/contacts/lee", auth, min_seq=seq, wait_ms=200)
        assert stale.status_code == 503
        assert stale.headers["retry-after"]
        assert stale.json()["error"] == "stale" and stale.json()["applied_seq"] < seq
        # The operator's status waits alike (every endpoint takes min_seq).
        status = stack.get("/v1/status", stack.admin(), min_seq=seq, wait_ms=200)
        assert status.status_code == 503 and status.json()["error"] == "stale", status.text
        # So do the reads that are no read model (the tokens and the webhook ignored min_seq: an audit).
        for path in ("tokens", "webhooks", "rules"):
            answer = stack.get(f"/v1/workspaces/{ws}/{path}", stack.admin(), min_seq=seq, wait_ms=200)
            assert answer.status_code == 503 and answer.json()["error"] == "stale", (path, answer.text)
        # A read whose parameters are wrong is a 400 at once, not a "stale" to be asked again for ever.
        for path, params in ((f"/v1/workspaces/{ws}/contacts", {"status": "garbage"}),
                             (f"/v1/workspaces/{ws}/funnel", {"from": "garbage"}),
                             (f"/v1/workspaces/{ws}/attribution", {"model": "garbage"}),
                             (f"/v1/workspaces/{ws}/followups", {"status": "garbage"})):
            wrong = stack.get(path, auth, min_seq=seq, wait_ms=200, **params)
            assert wrong.status_code == 400 and wrong.json()["error"].startswith(next(iter(params))), wrong.text
        # Nor is a snapshot that does not exist: a 404 at once.
        unknown = stack.get(f"/v1/workspaces/{ws}/contacts", auth, snapshot="nosuch", min_seq=seq, wait_ms=200)
        assert unknown.status_code == 404 and unknown.json()["error"] == "unknown snapshot 'nosuch'", unknown.text
    finally:
        stack.restart_projector(kill=False)
    fresh = stack.get(f"/v1/workspaces/{ws}/contacts/lee", auth, min_seq=seq, wait_ms=20000)
    assert fresh.status_code == 200 and fresh.json()["stage"] == "lead"
    status = stack.get("/v1/status", stack.admin(), min_seq=seq)
    assert status.status_code == 200 and min(p["applied_seq"] for p in status.json()["projectors"]) >= seq
    assert stack.get(f"/v1/workspaces/{ws}/contacts/nobody", auth, min_seq=seq).status_code == 404
    assert stack.get("/v1/workspaces/no-such-ws/contacts/lee", stack.admin()).status_code == 404


def test_a_compressed_body_is_judged_as_what_it_decompresses_to(stack):
    """gzip and deflate bodies are decompressed as they arrive; their limits hold once decompressed,
    and what does not decompress, or another coding, is refused whole and kept like any refusal."""
    import gzip
    import zlib

    ws, auth = stack.new_workspace()
    url = f"/v1/workspaces/{ws}/events"
    batch = {**auth, "Content-Type": "application/cloudevents-batch+json"}
    events = [event("marketing.engaged", f"z{n}", channel="ig", action="view") for n in range(3)]
    gzipped = stack.http.post(url, content=gzip.compress(json.dumps(events).encode()),
                              headers={**batch, "Content-Encoding": "gzip"})
    assert gzipped.status_code == 200, gzipped.text
    assert [result["status"] for result in gzipped.json()["results"]] == ["accepted"] * 3
    # Several gzip members one after another (a streaming compressor's, or .gz files concatenated)
    # are one body, even when the split falls in the middle of an event.
    text = json.dumps([event("marketing.engaged", f"m{n}", channel="ig", action="view") for n in range(3)]).encode()
    members = b"".join(gzip.compress(text[start:start + 100]) for start in range(0, len(text), 100))
    concatenated = stack.http.post(url, content=members, headers={**batch, "Content-Encoding": "gzip"})
    assert concatenated.status_code == 200, concatenated.text
    assert [result["status"] for result in concatenated.json()["results"]] == ["accepted"] * 3
    single = {**auth, "Content-Type": "application/cloudevents+json", "Content-Encoding": "Deflate"}
    deflated = stack.http.post(url, content=zlib.compress(json.dumps(event("sales.lead.qualified", "z0")).encode()),
                               headers=single)
    assert deflated.status_code == 200 and deflated.json()["results"][0]["status"] == "accepted", deflated.text

    # 4 MiB and a bit of spaces around an empty batch: 4 KiB sent, over the limit once decompressed.
    bomb = gzip.compress(b"[" + b" " * (4 * 1024 * 1024) + b"]")
    refusals = [
        (bomb, "gzip", 413, "a request is at most 4194304 bytes once decompressed"),
        (b"[not gzip at all]", "gzip", 400, "the body is not valid gzip: "),
        (gzip.compress(b"[]")[:-6], "gzip", 400, "the body is not valid gzip: it ends before its compressed data does"),
        (zlib.compress(b"[]") * 2, "deflate", 400,
         "the body is not valid deflate: bytes follow the end of its compressed data"),
        (b"[]", "br", 415, "Content-Encoding 'br' is not supported"),
    ]
    for body, coding, status, error in refusals:
        answer = stack.http.post(url, content=body, headers={**batch, "Content-Encoding": coding})
        assert answer.status_code == status and answer.json()["error"].startswith(error), (coding, answer.text)
    # Two Content-Encoding headers name two codings, as one header listing both does.
    twice = stack.http.post(url, content=gzip.compress(gzip.compress(b"[]")),
                            headers=[*batch.items(), ("Content-Encoding", "gzip"), ("Content-Encoding", "gzip")])
    assert twice.status_code == 415 and "'gzip, gzip' is not supported" in twice.json()["error"], twice.text
    listed = stack.get(f"/v1/workspaces/{ws}/rejected", auth).json()["rejected"][::-1]
    assert len(listed) == len(refusals) + 1
    assert all(item["reason"].startswith(error) for item, (*_, error) in zip(listed, refusals))
    assert listed[0]["body"].startswith("[   ") and len(listed[0]["body"]) == 65_536  # kept decompressed
    assert listed[1]["body"] == "[not gzip at all]"  # kept as sent
    assert listed[4]["body"] == "[]"  # another coding: kept as sent too

    # As sent a compressed body may be a little larger than what it holds (stored blocks): a batch
    # of just under 4 MiB at level 0, with its Content-Length, is read (it was refused unread).
    events = json.dumps([event("sales.lead.qualified", f"s{n}", padding="p" * 4000) for n in range(1000)])
    events = events[:-1] + " " * (4 * 1024 * 1024 - len(events) - 1) + "]"
    stored = gzip.compress(events.encode(), compresslevel=0)
    assert len(stored) > 4 * 1024 * 1024 >= len(events)
    answer = stack.http.post(url, content=stored, headers={**batch, "Content-Encoding": "gzip"})
    assert answer.status_code == 200 and len(answer.json()["results"]) == 1000, answer.text[:300]

    # Binary mode whose body does not decompress: kept as its event, identity and all.
    binary = {**auth, "Content-Type": "application/json", "Content-Encoding": "gzip", "ce-specversion": "1.0",
              "ce-id": "gz1", "ce-source": "/crm", "ce-type": "touchline.sales.conversation.held",
              "ce-time": "2026-11-02T09:00:00Z", "ce-subject": "ana"}
    assert stack.http.post(url, content=gzip.compress(b'{"channel": "phone"}')[:-4], headers=binary).status_code == 400
    kept = json.loads(stack.get(f"/v1/workspaces/{ws}/rejected", auth).json()["rejected"][0]["body"])
    assert (kept["source"], kept["id"], kept["subject"]) == ("/crm", "gz1", "ana") and "data_base64" in kept


def test_a_body_in_another_charset_than_utf8_is_refused_naming_it(stack):
    """JSON is UTF-8 (RFC 8259); a body announced as latin-1 was read as UTF-8 all the same."""
    ws, auth = stack.new_workspace()
    url = f"/v1/workspaces/{ws}/events"
    body = json.dumps(event("sales.lead.qualified", "zoë")).encode()
    for charset, status in (("UTF-8", 200), ('"utf-8"', 200), ("latin-1", 415)):
        answer = stack.http.post(url, content=body,
                                 headers={**auth, "Content-Type": f"application/cloudevents+json; charset={charset}"})
        assert answer.status_code == status, (charset, answer.text)
    assert answer.json()["error"] == "charset 'latin-1' is not supported: send the body in UTF-8"
    assert stack.get(f"/v1/workspaces/{ws}/rejected", auth).json()["rejected"][0]["reason"].startswith("charset 'latin-1'")


def test_a_nul_in_an_ingest_query_parameter_is_ignored_like_any_query_parameter(stack):
    """Ingest reads no query parameter. A NUL in one was a 400 before the token was checked (no
    token, or another workspace's, got a 400 instead of 401 or 403) and the body was not kept."""
    ws, auth = stack.new_workspace()
    _, other_auth = stack.new_workspace()
    body = json.dumps(event("marketing.engaged", "nul", channel="web", action="view"))

    def post(headers):
        return stack.http.post(f"/v1/workspaces/{ws}/events", params={"x": "\x00"}, content=body,
                               headers={**headers, "Content-Type": "application/cloudevents+json"})

    assert post({}).status_code == 401
    assert post(other_auth).status_code == 403
    answer = post(auth)
    assert answer.status_code == 200 and answer.json()["results"][0]["status"] == "accepted", answer.text
