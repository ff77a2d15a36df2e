"""The NATS way in: producers publish to touchline.in.{ws} with JetStream acks (CONTRACT.md section 3)."""

from __future__ import annotations

import asyncio
import json


from events.log import inbox_subject
from tests.support import event, wait_for
from services.nats_io import connect_client


async def publish(url: str, subject: str, bodies: list, msg_ids: bool = False) -> list:
    nc = await connect_client(url)
    js = nc.jetstream()
    acks = []
    for n, body in enumerate(bodies):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        acks.append(await js.publish(subject, raw))
    await nc.close()
    return acks


def test_events_published_on_nats_reach_the_log_once(stack):
    ws, auth = stack.new_workspace()
    engaged = event("marketing.engaged", "nia", channel="instagram", action="like")
    bad = event("sales.deal.won", "nia", deal_id="d", amount="lots", currency="EUR")
    acks = asyncio.run(publish(stack.servers.nats_url, inbox_subject(ws), [engaged, engaged, bad, b"{not json"]))
    assert all(ack.stream == "TOUCHLINE_INBOX" for ack in acks)

    contact = wait_for(lambda: stack.get(f"/v1/workspaces/{ws}/contacts/nia", auth).json().get("touches"))
    assert contact["total"] == 1
    rejected = wait_for(lambda: len(stack.get(f"/v1/workspaces/{ws}/rejected", auth).json()["rejected"]) >= 2 and
                        stack.get(f"/v1/workspaces/{ws}/rejected", auth).json()["rejected"])
    assert {r["via"] for r in rejected} == {"nats"}
    reasons = sorted(r["reason"] for r in rejected)
    assert reasons[0].startswith("data.amount:") and reasons[1].startswith("event: not valid JSON")
    # A later HTTP copy of the same event is a duplicate of the NATS one.
    again = stack.send(ws, auth, [engaged]).json()["results"][0]
    assert again["status"] == "duplicate"


def test_unknown_workspace_on_nats_is_rejected_not_lost(stack):
    ws, auth = stack.new_workspace()
    asyncio.run(publish(stack.servers.nats_url, inbox_subject("no-such-workspace"),
                        [event("sales.lead.qualified", "x")]))
    # Nothing reaches any workspace's read models; the inbox is drained, nothing left pending.
    async def pending() -> int:
        nc = await connect_client(stack.servers.nats_url)
        info = await nc.jetstream().stream_info("TOUCHLINE_INBOX")
        await nc.close()
        return info.state.messages

    assert wait_for(lambda: asyncio.run(pending()) == 0)


def test_an_event_the_checks_trip_over_is_rejected_not_stuck_in_the_inbox(stack):
    """An amount of 60 Arabic-Indic digits: the error message cut its bytes inside a character, and
    the UnicodeDecodeError escaped the checks: a 500 over HTTP, and the NATS inbox read that message
    again for ever, every workspace's events waiting behind it."""
    ws, auth = stack.new_workspace()
    other, other_auth = stack.new_workspace()
    poison = json.dumps(event("sales.deal.won", "nia", deal_id="d", amount="١" * 60, currency="EUR"),
                        ensure_ascii=False).encode()
    answer = stack.http.post(f"/v1/workspaces/{ws}/events", content=poison,
                             headers={**auth, "Content-Type": "application/cloudevents+json"})
    assert answer.status_code == 200 and answer.json()["results"][0]["status"] == "rejected", answer.text
    asyncio.run(publish(stack.servers.nats_url, inbox_subject(ws), [poison]))
    asyncio.run(publish(stack.servers.nats_url, inbox_subject(other), [event("sales.lead.qualified", "after")]))
    assert wait_for(lambda: stack.get(f"/v1/workspaces/{other}/contacts/after", other_auth).status_code == 200, 60)
    # The inbox reader may commit a batch's rejections a moment after the next batch's events are in the log.
    rejected = wait_for(lambda: (listed := stack.get(f"/v1/workspaces/{ws}/rejected", auth).json()["rejected"])[1:]
                        and listed, what="both rejections listed")
    assert [r["via"] for r in rejected] == ["nats", "http"]
    assert all(r["reason"].startswith("data.amount: expected a non-negative decimal") for r in rejected)


def test_a_number_no_decimal_holds_is_rejected_not_stuck_in_the_inbox(stack):
    """An amount written 1e-99999999999999999999: reading the rejected event's identity raised
    Decimal's InvalidOperation, and the inbox read that message again for ever, a restart too, every
    workspace's events behind it (an outside audit); over HTTP it was a 500, nothing kept."""
    ws, auth = stack.new_workspace()
    other, other_auth = stack.new_workspace()
    body = json.dumps(event("sales.deal.won", "nia", id="huge", deal_id="d", amount="AMOUNT", currency="EUR"))
    poison = body.replace('"AMOUNT"', "1e-99999999999999999999").encode()
    answer = stack.http.post(f"/v1/workspaces/{ws}/events", content=poison,
                             headers={**auth, "Content-Type": "application/cloudevents+json"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0] == {
        "source": "/test", "id": "huge", "status": "rejected",
        "error": "data.amount: expected at most 30 digits before the decimal point and 30 after, got 1e-99999999999999999999"}
    asyncio.run(publish(stack.servers.nats_url, inbox_subject(ws), [poison]))
    asyncio.run(publish(stack.servers.nats_url, inbox_subject(other), [event("sales.lead.qualified", "after")]))
    assert wait_for(lambda: stack.get(f"/v1/workspaces/{other}/contacts/after", other_auth).status_code == 200, 60)
    rejected = wait_for(lambda: (listed := stack.get(f"/v1/workspaces/{ws}/rejected", auth).json()["rejected"])[1:]
                        and listed, what="both rejections listed")
    assert [(r["via"], r["body"]) for r in rejected] == [("nats", poison.decode()), ("http", poison.decode())]
