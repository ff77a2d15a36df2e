"""The projector and the contact read model across real processes: exactly once, in any order."""

from __future__ import annotations

import json
import random
import threading
import time

import msgspec

from events.validation import parse_event
from projections.contacts import views
from services.api.contact_paths import segment
from tests.support import event, without_followups

_encode = msgspec.json.Encoder(decimal_format="string").encode


def sample_history(contacts: int, per_contact: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    bodies = []
    for n in range(contacts):
        contact = f"c{n:05d}"
        for k in range(per_contact):
            day, hour = rng.randint(1, 28), rng.randint(0, 23)
            when = f"2026-10-{day:02d}T{hour:02d}:{rng.randint(0, 59):02d}:00Z"
            kind = rng.random()
            if kind < 0.55:
                body = event("marketing.engaged", contact, when, channel=rng.choice(["ig", "mail", "web"]),
                             action=rng.choice(["view", "open", "like", "click"]))
            elif kind < 0.7:
                body = event("sales.outreach.sent", contact, when, channel=rng.choice(["email", "phone"]))
            elif kind < 0.8:
                body = event("marketing.lead.captured", contact, when, channel="web")
            elif kind < 0.9:
                body = event("sales.offer.made", contact, when, deal_id=f"{contact}-d", amount="80", currency="EUR")
            else:
                body = event("sales.deal.won", contact, when, deal_id=f"{contact}-d{k % 2}",
                             amount=rng.choice(["80", "120.40"]), currency="EUR")
            bodies.append(body)
    return bodies


def expected_contacts(bodies: list[dict]) -> dict[str, dict]:
    unique = {(b["source"], b["id"]): b for b in reversed(bodies)}  # the first copy wins
    events = [parse_event(json.dumps(b).encode()) for b in unique.values()]
    return {c: without_followups(json.loads(_encode(view))) for c, view in views(events).items()}


def all_contacts(stack, ws, auth, min_seq) -> dict[str, dict]:
    found, after = {}, None
    while True:
        params = {"limit": 500, "min_seq": min_seq, "wait_ms": 60000}
        if after:
            params["after"] = after
        page = stack.get(f"/v1/workspaces/{ws}/contacts", auth, **params)
        assert page.status_code == 200, page.text
        body = page.json()
        found.update({c["contact"]: without_followups(c) for c in body["contacts"]})
        after = body["next"]
        if after is None:
            return found


def test_late_and_shuffled_arrival_gives_the_oracle_answer(stack):
    ws, auth = stack.new_workspace()
    bodies = sample_history(contacts=40, per_contact=8, seed=3)
    shuffled = list(bodies)
    random.Random(9).shuffle(shuffled)
    # Duplicates, some in the same batch, some far apart.
    shuffled += random.Random(4).sample(bodies, 30)
    last = stack.ingest(ws, auth, shuffled)
    assert all_contacts(stack, ws, auth, last) == expected_contacts(bodies)


def test_contact_list_pages_and_filters(stack):
    ws, auth = stack.new_workspace()
    last = stack.ingest(ws, auth, [
        event("marketing.engaged", f"p{n}", channel="ig", action="view") for n in range(5)
    ] + [event("sales.deal.won", "p3", deal_id="d", amount=1, currency="EUR")])
    first = stack.get(f"/v1/workspaces/{ws}/contacts", auth, limit=2, min_seq=last).json()
    assert [c["contact"] for c in first["contacts"]] == ["p0", "p1"] and first["next"] == "p1"
    rest = stack.get(f"/v1/workspaces/{ws}/contacts", auth, limit=10, after="p1").json()
    assert [c["contact"] for c in rest["contacts"]] == ["p2", "p3", "p4"] and rest["next"] is None
    customers = stack.get(f"/v1/workspaces/{ws}/contacts", auth, stage="customer").json()["contacts"]
    assert [c["contact"] for c in customers] == ["p3"]
    won = stack.get(f"/v1/workspaces/{ws}/contacts", auth, status="won").json()["contacts"]
    assert [c["contact"] for c in won] == ["p3"]
    # The contract's own spelling, ?stage=&status=&after=: empty means no filter.
    unfiltered = stack.get(f"/v1/workspaces/{ws}/contacts", auth, stage="", status="", after="").json()["contacts"]
    assert [c["contact"] for c in unfiltered] == ["p0", "p1", "p2", "p3", "p4"]


def test_contact_list_refuses_an_unknown_stage_or_status(stack):
    ws, auth = stack.new_workspace()
    for name, value, allowed in (
        ("stage", "bogus", "aware, interested, lead, qualified, opportunity, customer"),
        ("stage", "Customer", "aware, interested, lead, qualified, opportunity, customer"),
        ("status", "closed", "open, won, lost, disqualified"),
        ("status", "overdue", "open, won, lost, disqualified"),  # a follow-up's status, not a contact's
    ):
        answer = stack.get(f"/v1/workspaces/{ws}/contacts", auth, **{name: value})
        assert answer.status_code == 400, (name, value, answer.text)
        assert answer.json()["error"] == f"{name}: expected one of {allowed}, got {value!r}"
    for name, value in (("stage", "customer"), ("status", "disqualified")):
        assert stack.get(f"/v1/workspaces/{ws}/contacts", auth, **{name: value}).json() == {"contacts": [], "next": None}


# Contact ids (any 1-128 characters, CONTRACT.md section 3) that a URL path would mangle unencoded.
TRICKY_IDS = ["x/y", "a/b", "a%2Fb", "a%252Fb", "x", "x/events", "events", "/lead", "trail/", "with space",
              "café ☕", ".", "..", "100%", "q?#&=+;", "/" * 128]


def test_any_contact_id_is_read_through_its_percent_encoded_segment(stack):
    ws, auth = stack.new_workspace()
    # Contact n has n + 1 touches: no answer can be another contact's.
    last = stack.ingest(ws, auth, [
        event("marketing.engaged", contact, channel=f"ch{n}", action="view")
        for n, contact in enumerate(TRICKY_IDS) for _ in range(n + 1)
    ])
    base = f"/v1/workspaces/{ws}/contacts"
    for n, contact in enumerate(TRICKY_IDS):
        path = f"{base}/{segment(contact)}"
        # With min_seq through Litestar; without a query string, the hot path beside it.
        for params in ({"min_seq": last}, {}):
            view = stack.get(path, auth, **params)
            assert view.status_code == 200, (contact, params, view.text)
            assert view.json()["contact"] == contact and view.json()["touches"]["total"] == n + 1, contact
        trail = stack.get(f"{path}/events", auth, min_seq=last)
        assert trail.status_code == 200, (contact, trail.text)
        assert trail.json()["contact"] == contact
        trail_events = trail.json()["events"]  # a rules worker's follow-up for the contact may be in it too
        assert {e["subject"] for e in trail_events} == {contact}
        assert sum(e["type"] == "touchline.marketing.engaged" for e in trail_events) == n + 1

    # The audit trail of `x` is not the contact `x/events`, and the reverse.
    assert stack.get(f"{base}/x/events", auth).json()["contact"] == "x"
    assert stack.get(f"{base}/x%2Fevents", auth).json()["contact"] == "x/events"
    # Decoded once: `a%252Fb` is the contact `a%2Fb`, never `a/b`.
    assert stack.get(f"{base}/a%252Fb", auth).json()["touches"]["total"] == TRICKY_IDS.index("a%2Fb") + 1
    # An unencoded `/` splits the id; a segment that is not UTF-8 names no contact.
    assert stack.get(f"{base}/a/b", auth).status_code == 404
    bad = stack.get(f"{base}/%FF", auth)
    assert bad.status_code == 400 and bad.json()["error"].startswith("contact:")
    assert stack.get(f"{base}/nobody%2Fhere", auth).status_code == 404
    assert stack.get(f"{base}/nobody%2Fhere/events", auth).status_code == 404
    # The list's `after` is a query value like any other.
    page = stack.get(base, auth, after="x/events", limit=1000).json()["contacts"]
    assert [c["contact"] for c in page] == sorted(c for c in TRICKY_IDS if c > "x/events")


def test_concurrent_retries_of_one_request_store_it_once(stack):
    ws, auth = stack.new_workspace()
    batch = [event("marketing.engaged", f"r{n}", channel="ig", action="open") for n in range(200)]
    answers: list = []

    def send() -> None:
        answers.append(stack.send(ws, auth, batch).json())

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for position in range(len(batch)):
        outcomes = [answer["results"][position] for answer in answers]
        assert len({o["seq"] for o in outcomes}) == 1, outcomes
        assert sum(o["status"] == "accepted" for o in outcomes) <= 1
    last = max(a["last_seq"] for a in answers)
    contacts = all_contacts(stack, ws, auth, last)
    assert sum(c["touches"]["total"] for c in contacts.values()) == 200


def test_projector_killed_mid_stream_loses_and_doubles_nothing(stack):
    ws, auth = stack.new_workspace()
    bodies = sample_history(contacts=1500, per_contact=10, seed=5)
    stack.projector.stop()
    last = stack.ingest(ws, auth, bodies)
    # Restart it and kill -9 it as soon as it has committed a batch of the backlog, a few times.
    kills_mid_way = 0
    for _ in range(3):
        start = applied(stack)
        stack.restart_projector(kill=True, wait=False)  # killed as soon as it has committed a batch
        deadline = time.monotonic() + 30
        while applied(stack) == start and time.monotonic() < deadline:
            time.sleep(0.01)
        stack.projector.kill()
        reached = applied(stack)
        if reached >= last:
            break
        kills_mid_way += 1
    stack.restart_projector(kill=True)
    assert kills_mid_way > 0
    assert all_contacts(stack, ws, auth, last) == expected_contacts(bodies)


def applied(stack) -> int:
    status = stack.get("/v1/status", stack.admin()).json()
    return min(p["applied_seq"] for p in status["projectors"])


def test_two_projectors_never_double_apply(stack):
    from tests.support import Service

    ws, auth = stack.new_workspace()
    second = Service("projector", stack.env, stack.log_dir).start()
    try:
        bodies = sample_history(contacts=100, per_contact=6, seed=8)
        last = 0
        for start in range(0, len(bodies), 50):
            last = stack.ingest(ws, auth, bodies[start:start + 50])
        assert all_contacts(stack, ws, auth, last) == expected_contacts(bodies)
    finally:
        second.stop()
