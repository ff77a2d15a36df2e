"""Follow-ups and alerts end to end (CONTRACT.md section 6), against real NATS and PostgreSQL.

The rules worker and dispatchers run as real processes (tests/support.py). Nothing here asserts
timings: every wait polls until a condition holds (with a generous deadline), and "nothing more
happens" is checked once the pipeline is settled (the rules worker has applied the whole log and
no command of the workspace is left on the work queue).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


from events.commands import RULES_SOURCE, COMMANDS_STREAM, TIMERS_STREAM, TimerFire, encode_timer, followup_id, timer_fired_subject, timer_id, timer_subject
from events.log import LOG_STREAM, arrival_headers, event_digest, log_headers, log_subject
from events.validation import parse_event
from services.dispatcher.app import IN_FLIGHT_PER_WORKSPACE
from services.rules import worker as rules_worker
from tests.support import event, pipeline_state, settle, wait_for
from services.nats_io import connect_client

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def followups(stack, ws, auth, **params) -> list[dict]:
    answer = stack.get(f"/v1/workspaces/{ws}/followups", auth, **params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def alerts(stack, ws, auth) -> list[dict]:
    answer = stack.get(f"/v1/workspaces/{ws}/alerts", auth)
    assert answer.status_code == 200, answer.text
    return answer.json()


def by_contact(items: list[dict]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        out.setdefault(item["contact"], []).append(item["rule"])
    return {contact: sorted(rules) for contact, rules in out.items()}


async def _count_logged(stack, ws: str, type_: str) -> Counter:
    """How many times each id of ``type_`` is in the workspace's log (duplicates would show > 1)."""
    nc = await connect_client(stack.servers.nats_url)
    counts: Counter = Counter()
    try:
        js = nc.jetstream()
        sub = await js.subscribe(f"touchline.log.{ws}", ordered_consumer=True, stream=LOG_STREAM)
        info = await js.stream_info(LOG_STREAM, subjects_filter=f"touchline.log.{ws}")
        total = (info.state.subjects or {}).get(f"touchline.log.{ws}", 0)
        for _ in range(total):
            msg = await sub.next_msg(timeout=10)
            body = json.loads(msg.data)
            if body["type"] == type_:
                counts[body["id"]] += 1
        await sub.unsubscribe()
    finally:
        await nc.close()
    return counts


# --- rules and guards ------------------------------------------------------------------


def test_each_rule_fires_and_each_guard_holds(stack):
    ws, auth = stack.new_workspace()
    t = NOW - dt.timedelta(hours=2)
    h = dt.timedelta(hours=1)
    period_start = (NOW - dt.timedelta(days=20)).date()
    events = [
        event("marketing.campaign.launched", time=iso(t), campaign_id="c1", channel="instagram", name="Spring sale"),
        # fire
        event("marketing.engaged", "hot", iso(t), channel="instagram", action="comment", campaign_id="c1"),
        event("marketing.lead.captured", "lead", iso(t), channel="web", method="form"),
        *[event("marketing.engaged", "warm", iso(t + i * dt.timedelta(minutes=1)), channel="email", action="open")
          for i in range(5)],
        event("sales.deal.won", "buyer", iso(t), deal_id="d1", amount="100", currency="EUR"),
        # guards
        event("contact.opted_out", "dnc", iso(t - h)),
        event("marketing.engaged", "dnc", iso(t), channel="instagram", action="like"),
        event("sales.outreach.sent", "worked", iso(t - 3 * 24 * h), channel="email"),
        event("marketing.engaged", "worked", iso(t), channel="instagram", action="share"),
        event("marketing.engaged", "twice", iso(t), channel="instagram", action="like"),
        event("marketing.lead.captured", "twice", iso(t + h), channel="web"),
        event("contact.opted_out", "dnc-buyer", iso(t - h)),
        event("sales.deal.won", "dnc-buyer", iso(t), deal_id="d2", amount="100", currency="EUR"),
        # alerts: an anomaly on c1, none on c2; a revenue goal far behind
        *[event("marketing.metrics.reported", time=iso(t), campaign_id="c1", metric="reach", value=100) for _ in range(3)],
        event("marketing.metrics.reported", time=iso(t), campaign_id="c1", metric="reach", value=400),
        *[event("marketing.metrics.reported", time=iso(t), campaign_id="c2", metric="reach", value=v) for v in (100, 100, 100, 250)],
        event("goal.set", time=iso(t), goal_id="q", metric="revenue", target="1000000", currency="EUR",
              period_start=period_start.isoformat(), period_end=(period_start + dt.timedelta(days=30)).isoformat()),
    ]
    stack.ingest(ws, auth, events)
    settle(stack, ws, auth)

    listed = followups(stack, ws, auth)
    assert by_contact(listed) == {
        "hot": ["hot-engagement"],
        "lead": ["new-lead"],
        "warm": ["warm-unworked"],
        "buyer": ["post-sale"],
        "twice": ["hot-engagement"],
    }
    hot = next(item for item in listed if item["contact"] == "hot")
    assert hot["reason"] == "hot commented on your post 'Spring sale' on instagram: reach out within 24 hours"
    assert hot["status"] == "open"
    assert dt.datetime.fromisoformat(hot["due_at"].replace("Z", "+00:00")) == t + dt.timedelta(hours=24)
    assert hot["caused_by"] == {"source": "/test", "id": events[1]["id"]}
    assert hot["followup_id"] == followup_id(ws, "hot-engagement", "/test", events[1]["id"])

    raised = alerts(stack, ws, auth)
    assert sorted(alert["rule"] for alert in raised) == ["goal-at-risk", "metric-anomaly"]
    anomaly = next(alert for alert in raised if alert["rule"] == "metric-anomaly")
    assert anomaly["campaign_id"] == "c1" and "reach of campaign 'Spring sale' is 400" in anomaly["reason"]
    goal = next(alert for alert in raised if alert["rule"] == "goal-at-risk")
    assert goal["goal_id"] == "q" and "at risk" in goal["reason"] and "more deals" in goal["reason"]


def test_alerts_page_by_after_in_their_newest_first_order(stack):
    ws, auth = stack.new_workspace()
    t = NOW - dt.timedelta(days=3)
    # Six anomalies: campaigns a-c reported anomalous at one moment (a tie in `at`), d-f an hour apart.
    anomalous_at = {"a": t, "b": t, "c": t, "d": t + dt.timedelta(hours=1), "e": t + dt.timedelta(hours=2),
                    "f": t - dt.timedelta(hours=1)}
    stack.ingest(ws, auth, [
        report
        for campaign, moment in anomalous_at.items()
        for report in (*[event("marketing.metrics.reported", time=iso(moment - dt.timedelta(days=1)), campaign_id=campaign,
                               metric="reach", value=100) for _ in range(3)],
                       event("marketing.metrics.reported", time=iso(moment), campaign_id=campaign, metric="reach", value=900))
    ])
    settle(stack, ws, auth)
    whole = alerts(stack, ws, auth)
    assert [alert["campaign_id"] for alert in whole][:1] + [alert["campaign_id"] for alert in whole][-1:] == ["e", "f"]
    assert len(whole) == 6

    paged, after = [], None
    while True:
        answer = stack.get(f"/v1/workspaces/{ws}/alerts", auth, limit=2, **({"after": after} if after else {}))
        assert answer.status_code == 200, answer.text
        if not answer.json():
            break
        paged += answer.json()
        after = answer.json()[-1]["alert_id"]
    assert paged == whole

    unknown = stack.get(f"/v1/workspaces/{ws}/alerts", auth, after="no-such-alert")
    assert unknown.status_code == 400 and unknown.json()["error"] == "after: no alert 'no-such-alert' in this workspace"


async def _log_as_received(stack, ws: str, bodies: list[dict], received_at: dt.datetime) -> None:
    """Append events to the log as if received at ``received_at``: the history that `rules reset`,
    or a worker back after a stop, catches up on."""
    nc = await connect_client(stack.servers.nats_url)
    try:
        js = nc.jetstream()
        for body in bodies:
            raw = json.dumps(body).encode()
            parsed = parse_event(raw)
            headers = log_headers(event_digest(ws, parsed.source, parsed.id), arrival_headers(received_at))
            await js.publish(log_subject(ws), raw, stream=LOG_STREAM, headers=headers)
    finally:
        await nc.close()


def test_goals_are_judged_as_they_stand_once_history_is_caught_up(stack):
    """Caught up on history, the rules judged each goal by what the log held at each point but at
    today's share of its period: a goal on track today was alerted "at risk: 0 of 10" at its
    goal.set (an outside audit, after `touchline rules reset`). Now such checks wait until the
    worker has caught up, and then judge every goal as it stands."""
    ws, auth = stack.new_workspace()
    start = (NOW - dt.timedelta(days=15)).date()
    period = {"metric": "leads", "period_start": start.isoformat(), "period_end": (start + dt.timedelta(days=30)).isoformat()}
    history = [event("goal.set", time=iso(NOW - dt.timedelta(days=14)), goal_id="on-track", target="10", **period),
               event("goal.set", time=iso(NOW - dt.timedelta(days=14)), goal_id="behind", target="1000", **period)]
    history += [event("marketing.lead.captured", f"lead-{n}", iso(NOW - dt.timedelta(days=10)), channel="web")
                for n in range(11)]
    # The history arrives while the worker is away (stopped, or before `rules reset`): a worker
    # reading it as it is written is caught up between two events, and judges the goals part-way.
    stack.rules.stop()
    try:
        asyncio.run(_log_as_received(stack, ws, history, NOW - dt.timedelta(hours=1)))
    finally:
        stack.restart_rules(kill=False)
    wait_for(lambda: alerts(stack, ws, auth), what="the goals judged once caught up")
    settle(stack, ws, auth)
    [alert] = alerts(stack, ws, auth)
    assert (alert["rule"], alert["goal_id"], alert["caused_by"]) == ("goal-at-risk", "behind", None)
    assert alert["reason"].startswith("Goal 'behind' (leads) is at risk: 11 of 1000")


async def _goal_tick(stack, *, caught_up: bool) -> None:
    """The goal tick of a rules worker just started (not yet caught up with the log), or not."""
    from services.rules.worker import RulesWorker
    from services.store.db import create_pool

    nc = await connect_client(stack.servers.nats_url)
    pool = await create_pool(stack.servers.database_url, max_size=2)
    try:
        worker = RulesWorker(nc.jetstream(), pool)
        worker.caught_up = caught_up
        await worker._check_goals_now()
    finally:
        await pool.close()
        await nc.close()


def test_a_worker_just_started_judges_no_goal_before_it_has_caught_up(stack):
    """A rules worker back after a stop ran its goal tick at once, on the state saved before it
    stopped, at today's share of the period: a false alert within a second of the restart for a
    goal the events it had not yet read put on track (the re-check audit)."""
    ws, auth = stack.new_workspace()
    assert stack.http.put(f"/v1/workspaces/{ws}/rules", json={"disabled": ["goal-at-risk"]},
                          headers=stack.admin()).status_code == 200
    start = (NOW - dt.timedelta(days=15)).date()
    stack.ingest(ws, auth, [event("goal.set", time=iso(NOW - dt.timedelta(days=14)), goal_id="g", metric="leads",
                                  target="10", period_start=start.isoformat(),
                                  period_end=(start + dt.timedelta(days=30)).isoformat())])
    settle(stack, ws, auth)
    assert stack.http.put(f"/v1/workspaces/{ws}/rules", json={"disabled": []}, headers=stack.admin()).status_code == 200
    asyncio.run(_goal_tick(stack, caught_up=False))
    settle(stack, ws, auth)
    assert alerts(stack, ws, auth) == []
    asyncio.run(_goal_tick(stack, caught_up=True))  # the same state, once caught up: at risk indeed
    wait_for(lambda: alerts(stack, ws, auth), what="the goal judged once caught up")


def test_statuses_open_overdue_done_dismissed_and_open_followups(stack):
    ws, auth = stack.new_workspace()
    t = NOW - dt.timedelta(hours=30)  # due 6 hours ago: overdue now, open before
    stack.ingest(ws, auth, [
        event("marketing.engaged", "ana", iso(t), channel="instagram", action="comment"),
        event("marketing.engaged", "bo", iso(t), channel="instagram", action="comment"),
        event("marketing.engaged", "cy", iso(t), channel="instagram", action="comment"),
    ])
    settle(stack, ws, auth)
    assert [item["status"] for item in followups(stack, ws, auth)] == ["overdue"] * 3
    assert len(followups(stack, ws, auth, status="open", as_of=iso(t + dt.timedelta(hours=1)))) == 3
    # A date as_of is its UTC midnight, as goals' as_of is; a time without an offset is UTC.
    due = t + dt.timedelta(hours=24)
    day_before, days_after = (due - dt.timedelta(days=1)).date(), (due + dt.timedelta(days=2)).date()
    assert len(followups(stack, ws, auth, status="open", as_of=day_before.isoformat())) == 3
    assert len(followups(stack, ws, auth, status="overdue", as_of=days_after.isoformat())) == 3
    assert len(followups(stack, ws, auth, status="overdue", as_of=f"{days_after.isoformat()}T00:00:00")) == 3
    contact = stack.get(f"/v1/workspaces/{ws}/contacts/ana", auth).json()
    assert contact["open_followups"] == 1

    ids = {item["contact"]: item["followup_id"] for item in followups(stack, ws, auth)}
    last = stack.ingest(ws, auth, [
        event("sales.outreach.sent", "ana", iso(t + dt.timedelta(hours=2)), channel="email", followup_id=ids["ana"]),
        event("sales.followup.dismissed", "bo", iso(NOW), followup_id=ids["bo"]),
        # a sales touch before the trigger does not make it done
        event("sales.conversation.held", "cy", iso(t - dt.timedelta(days=9)), channel="phone"),
    ])
    status = {item["contact"]: item["status"] for item in followups(stack, ws, auth, min_seq=last)}
    assert status == {"ana": "done", "bo": "dismissed", "cy": "overdue"}
    assert [item["contact"] for item in followups(stack, ws, auth, status="done", min_seq=last)] == ["ana"]
    assert stack.get(f"/v1/workspaces/{ws}/contacts/ana", auth, min_seq=last).json()["open_followups"] == 0
    assert stack.get(f"/v1/workspaces/{ws}/contacts/cy", auth, min_seq=last).json()["open_followups"] == 1
    assert stack.get(f"/v1/workspaces/{ws}/followups", auth, status="nope").status_code == 400


def test_a_dismissal_filed_under_another_contact_still_frees_the_contact_it_names(stack):
    """The followups read model dismisses a follow-up by its id; the rules worker now does too, so
    the contact gets follow-ups again (it counted the dismissed one as open for ever)."""
    ws, auth = stack.new_workspace()
    t = NOW - dt.timedelta(hours=3)
    stack.ingest(ws, auth, [event("marketing.lead.captured", "n1", iso(t), channel="web", method="form")])
    settle(stack, ws, auth)
    [lead] = followups(stack, ws, auth)
    stack.ingest(ws, auth, [event("sales.followup.dismissed", "h2", iso(t + dt.timedelta(hours=1)),
                                  followup_id=lead["followup_id"])])
    stack.ingest(ws, auth, [event("marketing.engaged", "n1", iso(t + dt.timedelta(hours=2)), channel="x", action="like")])
    settle(stack, ws, auth)
    assert sorted((item["rule"], item["status"]) for item in followups(stack, ws, auth)) == [
        ("hot-engagement", "open"), ("new-lead", "dismissed")]


def test_an_outside_event_cannot_take_the_identity_of_a_followup_to_come(stack):
    """Follow-up ids are derived, so a producer can compute the next one; stored first under
    Touchline's own source, it made the dispatcher's record a duplicate and the follow-up vanished
    (an outside audit). Touchline's sources are refused from outside, by either way in."""
    ws, auth = stack.new_workspace()
    t = NOW - dt.timedelta(hours=3)
    lead = event("marketing.lead.captured", "lee", iso(t), channel="web", source="/crm")
    spoof = event("marketing.engaged", "zed", iso(t), id=followup_id(ws, "new-lead", "/crm", lead["id"]),
                  source=RULES_SOURCE, channel="web", action="view")
    answer = stack.send(ws, auth, [spoof, {**spoof, "source": "/touchline/other"}])
    assert [r["status"] for r in answer.json()["results"]] == ["rejected", "accepted"]
    assert answer.json()["results"][0]["error"] == (
        'source: "/touchline/rules" is Touchline\'s own (its follow-ups and alerts), never accepted from outside')
    kept = stack.get(f"/v1/workspaces/{ws}/rejected", auth).json()["rejected"]
    assert len(kept) == 1 and "Touchline's own" in kept[0]["reason"]
    stack.ingest(ws, auth, [lead])
    settle(stack, ws, auth)
    assert by_contact(followups(stack, ws, auth)) == {"lee": ["new-lead"]}
    assert stack.get(f"/v1/workspaces/{ws}/contacts/lee", auth).json()["open_followups"] == 1
    trail = stack.get(f"/v1/workspaces/{ws}/contacts/lee/events", auth).json()
    assert "touchline.followup.requested" in json.dumps(trail)


def test_a_dismissal_in_the_triggers_batch_stays_a_dismissal_once_the_followup_is_recorded(stack):
    """Dismissed (under another contact) before the dispatcher recorded the follow-up: the recorded
    followup.requested re-opened it in the rules worker, and gina got no follow-up again."""
    ws, auth = stack.new_workspace()
    t = NOW - dt.timedelta(hours=3)
    fid = followup_id(ws, "new-lead", "/test", "g1")
    stack.ingest(ws, auth, [event("marketing.lead.captured", "gina", iso(t), id="g1", channel="web", method="form"),
                            event("sales.followup.dismissed", "wrongguy", iso(t + dt.timedelta(minutes=5)), followup_id=fid)])
    settle(stack, ws, auth)
    stack.ingest(ws, auth, [event("marketing.engaged", "gina", iso(t + dt.timedelta(hours=2)), channel="x", action="click")])
    settle(stack, ws, auth)
    assert sorted((item["rule"], item["status"]) for item in followups(stack, ws, auth)) == [
        ("hot-engagement", "open"), ("new-lead", "dismissed")]


def test_a_followup_dismissed_under_another_contact_before_it_exists_frees_its_contact(stack):
    """An audit's case: bob's dismissal names dana's follow-up before its trigger arrives (the id
    derives from the trigger). The read model said dismissed; the rules worker kept it open for
    dana, who got no follow-up again. Each request is a batch of its own here."""
    ws, auth = stack.new_workspace()
    t = NOW - dt.timedelta(hours=5)
    fid = followup_id(ws, "hot-engagement", "/ig", "x2")
    stack.ingest(ws, auth, [event("sales.followup.dismissed", "bob", iso(t), id="x1", followup_id=fid)])
    settle(stack, ws, auth)
    stack.ingest(ws, auth, [event("marketing.engaged", "dana", iso(t + dt.timedelta(hours=1)), id="x2", source="/ig",
                                  channel="ig", action="click")])
    settle(stack, ws, auth)
    stack.ingest(ws, auth, [event("marketing.engaged", "dana", iso(t + dt.timedelta(hours=2)), id="x3", source="/ig",
                                  channel="ig", action="click")])
    settle(stack, ws, auth)
    assert sorted((item["caused_by"]["id"], item["status"]) for item in followups(stack, ws, auth)) == [
        ("x2", "dismissed"), ("x3", "open")]


def test_followups_as_of_takes_what_goals_as_of_takes(stack):
    ws, auth = stack.new_workspace()
    for as_of in ("2026-08-03", "2026-08-03T10:00:00", "2026-08-03T10:00:00Z", "2026-08-03T12:00:00+02:00"):
        for view in ("followups", "goals"):
            answer = stack.get(f"/v1/workspaces/{ws}/{view}", auth, as_of=as_of)
            assert answer.status_code == 200, (view, as_of, answer.text)
    for view in ("followups", "goals"):
        bad = stack.get(f"/v1/workspaces/{ws}/{view}", auth, as_of="next tuesday")
        assert bad.status_code == 400 and bad.json()["error"].startswith("as_of:"), (view, bad.text)


def test_rules_can_be_turned_off_per_workspace(stack):
    ws, auth = stack.new_workspace()
    answer = stack.http.put(f"/v1/workspaces/{ws}/rules", json={"disabled": ["hot-engagement"]}, headers=stack.admin())
    assert answer.status_code == 200, answer.text
    stack.ingest(ws, auth, [
        event("marketing.engaged", "ana", iso(NOW), channel="instagram", action="comment"),
        event("marketing.lead.captured", "bo", iso(NOW), channel="web"),
    ])
    settle(stack, ws, auth)
    assert by_contact(followups(stack, ws, auth)) == {"bo": ["new-lead"]}


# --- exactly one follow-up per trigger, through crashes ---------------------------------


def test_no_duplicates_after_killing_rules_worker_and_dispatchers_mid_stream(stack):
    try:
        ws, auth = stack.new_workspace()
        contacts = [f"c{i:04d}" for i in range(600)]
        batches = [
            [event("marketing.engaged", contact, iso(NOW - dt.timedelta(hours=1)), channel="web", action="click")
             for contact in contacts[start:start + 100]]
            for start in range(0, len(contacts), 100)
        ]
        stack.ingest(ws, auth, batches[0] + batches[1])
        wait_for(lambda: len(followups(stack, ws, auth)) > 0, what="the first follow-ups")
        stack.restart_rules(kill=True)
        stack.restart_dispatchers(count=2, kill=True)
        stack.ingest(ws, auth, batches[2] + batches[3])
        wait_for(lambda: len(followups(stack, ws, auth)) > 200, what="more follow-ups")
        stack.restart_dispatchers(count=2, kill=True)
        stack.ingest(ws, auth, batches[4])
        stack.restart_rules(kill=True)
        stack.ingest(ws, auth, batches[5])
        settle(stack, ws, auth)
        listed = followups(stack, ws, auth)
        assert len(listed) == len({item["followup_id"] for item in listed}) == len(contacts)
        assert sorted(item["contact"] for item in listed) == contacts

        # Rerun the rules from the start of the log: the same follow-ups, nothing new.
        subprocess.run([sys.executable, "-m", "services.cli.main", "rules", "reset"], env=stack.env, check=True,
                       capture_output=True)
        settle(stack, ws, auth)
        assert len(followups(stack, ws, auth)) == len(contacts)
        logged = asyncio.run(_count_logged(stack, ws, "touchline.followup.requested"))
        assert len(logged) == len(contacts) and set(logged.values()) == {1}
    finally:  # one dispatcher again, as the tests after this one expect, however this one ends
        stack.restart_dispatchers(count=1, kill=False)


# --- the stalled-offer timer --------------------------------------------------------------


async def _timer_consumer_idle(stack) -> bool:
    nc = await connect_client(stack.servers.nats_url)
    try:
        info = await nc.jetstream().consumer_info(TIMERS_STREAM, "rules-timers")
        return info.num_pending == 0 and info.num_ack_pending == 0
    finally:
        await nc.close()


def test_stalled_offer_timer_fires_after_a_restart_and_not_after_a_touch(stack):
    ws, auth = stack.new_workspace()
    week = dt.timedelta(days=7)
    soon = NOW.replace(microsecond=0) + dt.timedelta(seconds=1)
    while soon <= dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=6):
        soon += dt.timedelta(seconds=1)
    offer = lambda contact, at, id: event("sales.offer.made", contact, iso(at - week), id=id, deal_id=f"d-{contact}",
                                          amount="1200", currency="EUR")
    last = stack.ingest(ws, auth, [
        offer("quiet", soon, "o-quiet"),
        offer("answered", soon - dt.timedelta(seconds=1), "o-answered"),
        # the contact answered within the 7 days: no follow-up
        event("sales.conversation.held", "answered", iso(soon - week + dt.timedelta(hours=1)), channel="phone"),
        # an offer already 7 days old when it arrives fires at once
        offer("late", NOW - dt.timedelta(days=1), "o-late"),
    ])
    # Kill the rules worker once it has scheduled the timers and handled the one due at once (killed
    # holding that one, it comes back only after the timer consumer's 60 s ack wait), and keep it
    # down past the others' time.
    wait_for(lambda: asyncio.run(pipeline_state(stack, ws))[1] >= last, what="the rules to apply the offers")
    wait_for(lambda: "late" in {item["contact"] for item in followups(stack, ws, auth)}, what="the late offer's follow-up")
    wait_for(lambda: asyncio.run(_timer_consumer_idle(stack)), what="the fired timer handled")
    stack.rules.kill()
    try:
        wait_for(lambda: dt.datetime.now(dt.timezone.utc) > soon + dt.timedelta(seconds=1), what="the timers' time")
    finally:  # the tests after this one need a rules worker
        stack.restart_rules(kill=True)

    wait_for(lambda: {item["contact"] for item in followups(stack, ws, auth)} >= {"quiet", "late"},
             what="the stalled-offer follow-ups")
    wait_for(lambda: asyncio.run(_timer_consumer_idle(stack)), what="every fired timer handled")
    settle(stack, ws, auth)
    listed = followups(stack, ws, auth)
    assert by_contact(listed) == {"quiet": ["stalled-offer"], "late": ["stalled-offer"]}
    quiet = next(item for item in listed if item["contact"] == "quiet")
    assert quiet["due_at"].replace("Z", "+00:00") == soon.isoformat()
    assert quiet["caused_by"] == {"source": "/test", "id": "o-quiet"}
    assert "Your offer to quiet (deal d-quiet, 1200 EUR) has had no answer for 7 days" in quiet["reason"]


def test_an_offer_past_2262_is_scheduled_100_years_ahead_and_does_not_fire_now(stack):
    """nats-server keeps a schedule's time in int64 nanoseconds, which end in April 2262: the timer
    of an offer dated 2300 fired at once (an outside audit)."""
    ws, auth = stack.new_workspace()
    far = dt.datetime(2300, 1, 1, tzinfo=dt.timezone.utc)
    stack.ingest(ws, auth, [
        event("sales.offer.made", "future", iso(far), id="o-future", deal_id="d-f", amount="10", currency="EUR"),
        event("sales.offer.made", "late", iso(NOW - dt.timedelta(days=9)), id="o-late", deal_id="d-l", amount="10",
              currency="EUR"),
    ])
    wait_for(lambda: "late" in {item["contact"] for item in followups(stack, ws, auth)}, what="the late offer's follow-up")
    wait_for(lambda: asyncio.run(_timer_consumer_idle(stack)), what="every fired timer handled")
    settle(stack, ws, auth)

    async def schedule() -> str:
        nc = await connect_client(stack.servers.nats_url)
        try:
            pending = await nc.jetstream().get_last_msg(TIMERS_STREAM, timer_subject(ws, timer_id(ws, "/test", "o-future")))
            return pending.headers["Nats-Schedule"]
        finally:
            await nc.close()

    at = dt.datetime.strptime(asyncio.run(schedule()), "@at %Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    horizon = dt.datetime.now(dt.timezone.utc) + rules_worker.SCHEDULE_AHEAD_AT_MOST
    assert horizon - dt.timedelta(hours=1) < at <= horizon + dt.timedelta(seconds=1)  # 100 years ahead, whole seconds
    assert by_contact(followups(stack, ws, auth)) == {"late": ["stalled-offer"]}


def test_a_call_after_the_offer_sent_after_its_stalled_offer_fired_makes_that_done(stack):
    """A history loaded in two requests (an outside audit): the offer, long stale, first; the call
    two days after it next. The timer fired in between, and its follow-up stayed overdue for ever,
    as only a sales touch from offer time + 7 days on made it done."""
    ws, auth = stack.new_workspace()
    offered = NOW - dt.timedelta(days=30)
    stack.ingest(ws, auth, [event("sales.offer.made", "dana", iso(offered), id="o1", deal_id="d1", amount="900",
                                  currency="EUR")])
    wait_for(lambda: [item["rule"] for item in followups(stack, ws, auth)] == ["stalled-offer"],
             what="the stalled-offer follow-up")
    last = stack.ingest(ws, auth, [event("sales.conversation.held", "dana", iso(offered + dt.timedelta(days=2)),
                                         channel="phone")])
    [item] = followups(stack, ws, auth, min_seq=last)
    assert (item["rule"], item["status"]) == ("stalled-offer", "done")
    assert stack.get(f"/v1/workspaces/{ws}/contacts/dana", auth, min_seq=last).json()["open_followups"] == 0


async def _fire_timer_again(stack, ws: str, contact: str, source: str, offer_id: str) -> None:
    """The fired-timer message a rerun of the rules publishes for an offer already due, as it goes
    out once the stream's duplicate window (2 minutes) is past."""
    nc = await connect_client(stack.servers.nats_url)
    try:
        tid = timer_id(ws, source, offer_id)
        body = encode_timer(TimerFire(timer_id=tid, workspace=ws, contact=contact, fire_at=NOW))
        await nc.jetstream().publish(timer_fired_subject(ws), body, stream=TIMERS_STREAM,
                                     headers={"Nats-Msg-Id": f"again-{tid}"})
    finally:
        await nc.close()


def test_a_rerun_of_the_rules_keeps_a_timer_decided_as_the_live_run_decided_it(stack):
    """The live run decided a due offer's timer while a hot-engagement follow-up was open: no
    stalled-offer. That follow-up dismissed, `rules reset` reran the rules, and the timer fired again
    with the whole log applied: a stalled-offer follow-up the live run had decided against."""
    ws, auth = stack.new_workspace()
    stack.ingest(ws, auth, [event("marketing.engaged", "dana", iso(NOW - dt.timedelta(days=1)), id="like",
                                  channel="ig", action="click")])
    stack.ingest(ws, auth, [event("sales.offer.made", "dana", iso(NOW - dt.timedelta(days=9)), id="offer",
                                  deal_id="d9", amount="900", currency="EUR")])
    settle(stack, ws, auth)
    wait_for(lambda: asyncio.run(_timer_consumer_idle(stack)), what="the offer's timer decided")
    [engaged] = followups(stack, ws, auth)
    assert engaged["rule"] == "hot-engagement"
    stack.ingest(ws, auth, [event("sales.followup.dismissed", "dana", iso(NOW), followup_id=engaged["followup_id"])])
    subprocess.run([sys.executable, "-m", "services.cli.main", "rules", "reset"], env=stack.env, check=True,
                   capture_output=True)
    settle(stack, ws, auth)
    asyncio.run(_fire_timer_again(stack, ws, "dana", "/test", "offer"))
    wait_for(lambda: asyncio.run(_timer_consumer_idle(stack)), what="the timer fired again")
    settle(stack, ws, auth)
    assert [(item["rule"], item["status"]) for item in followups(stack, ws, auth)] == [("hot-engagement", "dismissed")]


# --- webhooks ---------------------------------------------------------------------------


class Receiver:
    """A webhook receiver on loopback: answers each POST with the next status of ``plan`` (the last
    repeats), checks the signature with the secret, and keeps every request."""

    def __init__(self, plan: list[int], hold: threading.Event | None = None) -> None:
        self.plan = plan
        self.hold = hold  # when given, every answer waits until it is set
        self.arrived = 0  # requests begun, answered or not
        self.secret = ""
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.arrived += 1
                if receiver.hold is not None:
                    receiver.hold.wait(60)
                status = receiver.plan[min(len(receiver.requests), len(receiver.plan) - 1)]
                receiver.requests.append({
                    "body": body,
                    "headers": dict(self.headers),
                    "signature_ok": receiver.verify(self.headers.get("Touchline-Signature", ""), body),
                    "status": status,
                    "at": time.monotonic(),
                })
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def verify(self, header: str, body: bytes) -> bool:
        """The documented scheme, written independently: t=<unix>,v1=hex(HMAC-SHA256(secret, "t.body"))."""
        fields = dict(part.split("=", 1) for part in header.split(","))
        expected = hmac.new(self.secret.encode(), fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) < 300

    def close(self) -> None:
        self.server.shutdown()


def register(stack, ws: str, receiver: Receiver, **settings) -> dict:
    answer = stack.http.post(f"/v1/workspaces/{ws}/webhooks", json={"url": receiver.url, **settings}, headers=stack.admin())
    assert answer.status_code == 201, answer.text
    receiver.secret = answer.json()["secret"]
    return answer.json()


def test_a_webhook_needs_an_http_or_https_url_and_settings_in_range(stack):
    ws, _auth = stack.new_workspace()
    for body, field in (
        ({"url": "ftp://hooks.example/x"}, "url"),
        ({"url": "https:///no-host"}, "url"),
        ({"url": "https://hooks.example/x", "max_attempts": 0}, "max_attempts"),
        ({"url": "https://hooks.example/x", "backoff_seconds": []}, "backoff_seconds"),
        ({"url": "https://hooks.example/x", "timeout_seconds": 60}, "timeout_seconds"),
    ):
        answer = stack.http.post(f"/v1/workspaces/{ws}/webhooks", json=body, headers=stack.admin())
        assert answer.status_code == 400, (body, answer.text)
        assert field in answer.text, (body, answer.text)
    assert stack.http.get(f"/v1/workspaces/{ws}/webhooks", headers=stack.admin()).status_code == 404
    for url in ("http://127.0.0.1:9/hook", "https://hooks.example/x"):
        answer = stack.http.post(f"/v1/workspaces/{ws}/webhooks", json={"url": url}, headers=stack.admin())
        assert answer.status_code == 201 and answer.json()["url"] == url, answer.text
    # The answer shows the settings as stored, as a GET does: the default backoff [5.0, 30.0, …],
    # not [5, 30, …].
    created = stack.http.post(f"/v1/workspaces/{ws}/webhooks", json={"url": "https://hooks.example/y"},
                              headers=stack.admin())
    read = stack.http.get(f"/v1/workspaces/{ws}/webhooks", headers=stack.admin())
    assert created.text.replace(f',"secret":"{created.json()["secret"]}"', "") == read.text.replace(
        ',"deliveries":{"delivered":0,"failing":0,"parked":0}', "")
    assert read.json()["backoff_seconds"][:2] == [5.0, 30.0] and '"backoff_seconds":[5.0,30.0,' in read.text


def test_a_webhooks_settings_change_with_keep_secret_keeps_its_secret(stack):
    """Every POST made a new secret, so tuning a retry setting broke every receiver's signature check
    until it was told the new one (an outside audit)."""
    ws, auth = stack.new_workspace()
    receiver = Receiver([200])
    try:
        first = register(stack, ws, receiver)
        tuned = stack.http.post(f"/v1/workspaces/{ws}/webhooks", headers=stack.admin(),
                                json={"url": receiver.url, "timeout_seconds": 5, "keep_secret": True})
        assert tuned.status_code == 201 and "secret" not in tuned.json() and tuned.json()["timeout_seconds"] == 5.0
        stack.ingest(ws, auth, [event("marketing.engaged", "kim", iso(NOW), channel="instagram", action="reply")])
        wait_for(lambda: receiver.requests, what="a delivery")
        assert receiver.secret == first["secret"] and receiver.requests[0]["signature_ok"]
        rotated = stack.http.post(f"/v1/workspaces/{ws}/webhooks", json={"url": receiver.url}, headers=stack.admin())
        assert rotated.json()["secret"] not in (None, first["secret"])
        fresh_ws, _ = stack.new_workspace()  # nothing to keep: a new secret, shown
        made = stack.http.post(f"/v1/workspaces/{fresh_ws}/webhooks", headers=stack.admin(),
                               json={"url": receiver.url, "keep_secret": True})
        assert made.json()["secret"].startswith("whsec_")
    finally:
        receiver.close()


def test_webhook_fails_twice_then_succeeds_signed(stack):
    ws, auth = stack.new_workspace()
    receiver = Receiver([500, 503, 200])
    try:
        hook = register(stack, ws, receiver, backoff_seconds=[0.2, 0.5], max_attempts=5)
        assert hook["url"] == receiver.url and hook["secret"].startswith("whsec_")
        stack.ingest(ws, auth, [event("marketing.engaged", "dana", iso(NOW), channel="instagram", action="reply")])
        wait_for(lambda: any(r["status"] == 200 for r in receiver.requests), what="a successful delivery")
        settle(stack, ws, auth)
        assert [r["status"] for r in receiver.requests] == [500, 503, 200]
        assert all(r["signature_ok"] for r in receiver.requests)
        [item] = followups(stack, ws, auth)
        bodies = {r["body"] for r in receiver.requests}
        assert len(bodies) == 1  # every attempt carries the same body; only the signature's time changes
        body = json.loads(bodies.pop())
        assert body["type"] == "touchline.followup.requested"
        assert body["followup"]["followup_id"] == item["followup_id"]
        assert body["followup"]["reason"] == item["reason"]
        assert {r["headers"]["Touchline-Delivery"] for r in receiver.requests} == {item["followup_id"]}
        # A tampered body does not verify.
        assert not receiver.verify(receiver.requests[0]["headers"]["Touchline-Signature"], b"{}")
    finally:
        receiver.close()


def test_a_webhook_that_does_not_answer_holds_up_no_other_workspace(stack):
    """The dispatcher took a batch of commands and the next only once all of that batch was done:
    one workspace's receiver that kept its request open held every other workspace's follow-ups
    (an outside audit: 19 s). Here it keeps its requests open until the other workspace's follow-up
    is listed, longer than the stack's ack wait (2 s), for more commands than a workspace may have
    carried out at once: the ones waiting their turn are kept too, and each is posted once (waiting
    out the ack wait, some were posted twice: the re-check audit)."""
    slow_ws, slow_auth = stack.new_workspace()
    ws, auth = stack.new_workspace()
    hold = threading.Event()
    receiver = Receiver([200], hold=hold)
    triggers = IN_FLIGHT_PER_WORKSPACE + 4
    try:
        register(stack, slow_ws, receiver, timeout_seconds=20, max_attempts=1)
        stack.ingest(slow_ws, slow_auth, [event("marketing.engaged", f"sam-{n}", iso(NOW), channel="instagram", action="like")
                                          for n in range(triggers)])
        wait_for(lambda: receiver.arrived >= IN_FLIGHT_PER_WORKSPACE, what="the slow deliveries begun")
        stack.ingest(ws, auth, [event("marketing.engaged", "dana", iso(NOW), channel="instagram", action="like")])
        wait_for(lambda: followups(stack, ws, auth), timeout=20, what="the other workspace's follow-up, meanwhile")
        time.sleep(2.5)  # past the ack wait, while the slow requests are still open
        assert receiver.arrived == IN_FLIGHT_PER_WORKSPACE  # the rest wait their workspace's turn
        hold.set()
        wait_for(lambda: len(receiver.requests) >= triggers, what="the slow deliveries answered")
        settle(stack, slow_ws, slow_auth)
        time.sleep(1)
        delivered = [r["headers"]["Touchline-Delivery"] for r in receiver.requests]
        assert receiver.arrived == len(delivered) == len(set(delivered)) == triggers
        assert len(followups(stack, slow_ws, slow_auth)) == triggers
    finally:
        hold.set()
        receiver.close()


def test_webhook_retries_wait_the_workspace_backoff_not_more(stack):
    """Each retry comes after the webhook's own backoff step. The dispatcher's consumer once had a
    JetStream BackOff, which a delayed nak counts against: the waits were delay - ack_wait +
    backoff[n], here 0.3, 2.3 and 6.3 s instead of 0.3 s each (the stack's ack wait is 2 s)."""
    ws, auth = stack.new_workspace()
    receiver = Receiver([500, 500, 500, 200])
    try:
        register(stack, ws, receiver, backoff_seconds=[0.3], max_attempts=5)
        stack.ingest(ws, auth, [event("marketing.engaged", "gail", iso(NOW), channel="instagram", action="reply")])
        wait_for(lambda: any(r["status"] == 200 for r in receiver.requests), what="a successful delivery")
        times = [r["at"] for r in receiver.requests]
        gaps = [round(later - earlier, 2) for earlier, later in zip(times, times[1:])]
        assert len(gaps) == 3 and all(0.25 <= gap < 1.8 for gap in gaps), gaps
    finally:
        receiver.close()


async def test_a_consumer_made_with_a_backoff_is_updated_without_it(stack):
    from services.dispatcher.app import CONSUMER, update_consumer

    nc = await connect_client(stack.servers.nats_url)
    try:
        js = nc.jetstream()
        config = (await js.consumer_info(COMMANDS_STREAM, CONSUMER)).config
        config.backoff = [2.0, 4.0, 8.0]  # as versions before this one made it
        await js.add_consumer(COMMANDS_STREAM, config=config)
        assert (await js.consumer_info(COMMANDS_STREAM, CONSUMER)).config.backoff
        await update_consumer(js)
        updated = (await js.consumer_info(COMMANDS_STREAM, CONSUMER)).config
        assert not updated.backoff
        assert (updated.filter_subject, updated.ack_wait, updated.max_deliver) == (
            config.filter_subject, config.ack_wait, config.max_deliver)
    finally:
        await nc.close()


def test_webhook_that_always_fails_is_parked_then_redriven(stack):
    ws, auth = stack.new_workspace()
    receiver = Receiver([500])
    cli = [sys.executable, "-m", "services.cli.main"]
    try:
        register(stack, ws, receiver, backoff_seconds=[0.1], max_attempts=3)
        stack.ingest(ws, auth, [event("marketing.lead.captured", "eve", iso(NOW), channel="web")])

        def parked():
            out = subprocess.run(cli + ["deadletter", "list", "--workspace", ws, "--json"], env=stack.env,
                                 capture_output=True, text=True, check=True).stdout
            return [json.loads(line) for line in out.splitlines()]

        [item] = wait_for(parked, what="the command to be parked")
        assert item["stage"] == "webhook" and item["attempts"] == 3 and "answered 500" in item["error"]
        assert len(receiver.requests) == 3
        hook = f"/v1/workspaces/{ws}/webhooks"
        assert stack.http.get(hook, headers=stack.admin()).json()["deliveries"] == {"delivered": 0, "failing": 0, "parked": 1}
        # Nothing lost: the follow-up is in the log and the read model.
        settle(stack, ws, auth)
        [listed] = followups(stack, ws, auth)
        assert listed["followup_id"] == item["id"] and listed["rule"] == "new-lead"

        # The receiver is fixed; re-drive from the CLI.
        receiver.plan = [200]
        subprocess.run(cli + ["deadletter", "redrive", "--workspace", ws], env=stack.env, check=True, capture_output=True)
        wait_for(lambda: any(r["status"] == 200 for r in receiver.requests), what="the re-driven delivery")
        assert parked() == []
        settle(stack, ws, auth)
        assert stack.http.get(hook, headers=stack.admin()).json()["deliveries"] == {"delivered": 1, "failing": 0, "parked": 0}
        assert len(followups(stack, ws, auth)) == 1
        logged = asyncio.run(_count_logged(stack, ws, "touchline.followup.requested"))
        assert list(logged.values()) == [1]
    finally:
        receiver.close()


def test_a_delivery_whose_webhook_is_removed_between_attempts_is_parked_not_dropped(stack):
    """Removed while a retry waited, the webhook's delivery was marked done without a word, and one
    re-driven with no webhook registered was taken and dropped (an outside audit)."""
    ws, auth = stack.new_workspace()
    receiver = Receiver([500])
    cli = [sys.executable, "-m", "services.cli.main"]

    def parked():
        out = subprocess.run(cli + ["deadletter", "list", "--workspace", ws, "--json"], env=stack.env,
                             capture_output=True, text=True, check=True).stdout
        return [json.loads(line) for line in out.splitlines()]

    try:
        register(stack, ws, receiver, backoff_seconds=[2], max_attempts=5)
        stack.ingest(ws, auth, [event("marketing.lead.captured", "eve", iso(NOW), channel="web")])
        wait_for(lambda: receiver.requests, what="the first, failed, attempt")
        assert stack.http.delete(f"/v1/workspaces/{ws}/webhooks", headers=stack.admin()).status_code == 204
        [item] = wait_for(parked, what="the delivery to be parked")
        assert item["stage"] == "webhook" and "webhook was removed" in item["error"]

        refused = subprocess.run(cli + ["deadletter", "redrive", "--workspace", ws], env=stack.env,
                                 capture_output=True, text=True)
        assert refused.returncode == 1 and "no webhook is registered" in refused.stderr + refused.stdout, refused
        assert [again["seq"] for again in parked()] == [item["seq"]]

        receiver.plan = [200]
        register(stack, ws, receiver)
        subprocess.run(cli + ["deadletter", "redrive", "--workspace", ws], env=stack.env, check=True, capture_output=True)
        wait_for(lambda: any(r["status"] == 200 for r in receiver.requests), what="the re-driven delivery")
        assert parked() == [] and len(receiver.requests) == 2
    finally:
        receiver.close()


def test_asyncapi_description_of_the_nats_side(stack):
    out = subprocess.run([sys.executable, "-m", "services.cli.main", "asyncapi"], env=stack.env, capture_output=True,
                         text=True, check=True).stdout
    spec = json.loads(out)
    addresses = {channel["address"] for channel in spec["channels"].values()}
    assert {"touchline.cmd.>", "touchline.deadletter.{workspace}", "touchline.in.{workspace}",
            "touchline.log.{workspace}"} <= addresses
