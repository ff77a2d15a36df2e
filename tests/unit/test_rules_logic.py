"""The follow-up and alert rules as pure decisions: each rule's firing and each guard."""

from __future__ import annotations

import datetime as dt
import itertools
import random
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given, settings, strategies as st

from events.commands import RaiseAlert, RequestFollowup, followup_id
from events.log import LoggedEvent
from events.validation import parse_event
from events import catalog as c
from projections import deals, goals
from services.rules import logic
from services.rules.logic import RuleSwitches, RulesState, decide, decide_timer
from tests.histories import arrivals, first_copies, histories

WS = "acme"
T0 = dt.datetime(2026, 11, 1, 10, 0, tzinfo=dt.timezone.utc)
NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.timezone.utc)
_seq = itertools.count(1)


def ev(type_: str, subject: str | None = "dana", at: dt.datetime = T0, *, id: str | None = None, source: str = "/t",
       **data) -> LoggedEvent:
    body = {"specversion": "1.0", "id": id or f"e{next(_seq)}", "source": source, "type": f"touchline.{type_}",
            "time": at.isoformat(), "data": data}
    if subject is not None:
        body["subject"] = subject
    raw = msgspec.json.encode(body)
    return LoggedEvent(next(_seq), WS, NOW, parse_event(raw), raw)


def internal(type_: str, subject: str | None, at: dt.datetime, **data) -> LoggedEvent:
    body = {"specversion": "1.0", "id": data.get("followup_id") or data.get("alert_id"), "source": "/touchline/rules",
            "type": f"touchline.{type_}", "time": at.isoformat(), "data": data, "subject": subject}
    raw = msgspec.json.encode(body)
    return LoggedEvent(next(_seq), WS, NOW, msgspec.json.decode(raw, type=c.AnyEvent), raw)


def run(events: list[LoggedEvent], *, state: RulesState | None = None, settings: RuleSwitches = logic.EVERY_RULE_ON,
        now: dt.datetime = NOW):
    state = state or RulesState()
    effects = logic.Effects()
    for logged in events:
        effects.extend(decide(state, logged, now=now, settings=settings))
    return state, effects


def rules(effects: logic.Effects) -> list[str]:
    return [command.rule for command in effects.commands]


H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        # hot-engagement: like/comment/share/click/reply, not view/open/visit
        ([ev("marketing.engaged", channel="instagram", action="comment")], ["hot-engagement"]),
        ([ev("marketing.engaged", channel="web", action=a) for a in ("view",)], []),
        ([ev("marketing.engaged", channel="web", action=a) for a in ("open",)], []),
        ([ev("marketing.engaged", channel="x", action=a) for a in ("like",)], ["hot-engagement"]),
        ([ev("marketing.engaged", channel="x", action=a) for a in ("reply",)], ["hot-engagement"]),
        # guard: an open follow-up blocks the next one
        ([ev("marketing.engaged", channel="x", action="like"), ev("marketing.engaged", at=T0 + H, channel="x", action="share")],
         ["hot-engagement"]),
        # guard: a sales touch in [t - 7 days, t]
        ([ev("sales.outreach.sent", at=T0 - 6 * D, channel="email"), ev("marketing.engaged", channel="x", action="like")], []),
        ([ev("sales.outreach.sent", at=T0 - 8 * D, channel="email"), ev("marketing.engaged", channel="x", action="like")],
         ["hot-engagement"]),
        # a sales touch later than t is outside [t - 7 days, t]
        ([ev("sales.outreach.sent", at=T0 + D, channel="email"), ev("marketing.engaged", channel="x", action="like")],
         ["hot-engagement"]),
        # guard: do not contact (latest of opted_out / opted_in by time decides)
        ([ev("contact.opted_out"), ev("marketing.engaged", channel="x", action="like")], []),
        ([ev("contact.opted_out"), ev("contact.opted_in", at=T0 + H), ev("marketing.engaged", channel="x", action="like")],
         ["hot-engagement"]),
        ([ev("contact.opted_in", at=T0 + H), ev("contact.opted_out", at=T0), ev("marketing.engaged", channel="x", action="like")],
         ["hot-engagement"]),
        # new-lead
        ([ev("marketing.lead.captured", channel="web", method="form")], ["new-lead"]),
        ([ev("sales.conversation.held", at=T0 - D, channel="phone"), ev("marketing.lead.captured", channel="web")], []),
        # warm-unworked: the 5th marketing touch since the last sales touch (views don't fire hot-engagement)
        ([ev("marketing.engaged", at=T0 + i * H, channel="web", action="view") for i in range(4)], []),
        ([ev("marketing.engaged", at=T0 + i * H, channel="web", action="view") for i in range(5)], ["warm-unworked"]),
        ([ev("marketing.engaged", at=T0 + i * H, channel="web", action="view") for i in range(6)], ["warm-unworked"]),
        ([ev("sales.outreach.sent", at=T0 - 30 * D, channel="email")]
         + [ev("marketing.engaged", at=T0 + i * H, channel="web", action="view") for i in range(5)], ["warm-unworked"]),
        # ... counted from the last applied sales touch: 3 before, a sales touch, then 5 -> fires (touch is old)
        ([ev("marketing.engaged", at=T0 - 20 * D, channel="web", action="view") for _ in range(3)]
         + [ev("sales.outreach.sent", at=T0 - 10 * D, channel="email")]
         + [ev("marketing.engaged", at=T0 + i * H, channel="web", action="view") for i in range(4)], []),
        # one trigger, one follow-up: the first rule's is done at once (a later sales touch was
        # applied before), so it is not open, and warm-unworked must not fire on the same click
        ([ev("sales.outreach.sent", at=T0 + 19 * D, channel="email")]
         + [ev("marketing.engaged", at=T0 + i * D, channel="web", action="view") for i in range(4)]
         + [ev("marketing.engaged", at=T0 + 4 * D, channel="web", action="click")], ["hot-engagement"]),
        ([ev("sales.outreach.sent", at=T0 + 19 * D, channel="email")]
         + [ev("marketing.engaged", at=T0 + i * D, channel="web", action="view") for i in range(4)]
         + [ev("marketing.lead.captured", at=T0 + 4 * D, channel="web")], ["new-lead"]),
        # post-sale: first won of a deal, only the do-not-contact guard
        ([ev("sales.deal.won", deal_id="d1", amount="10", currency="EUR")], ["post-sale"]),
        ([ev("sales.deal.won", deal_id="d1", amount="10", currency="EUR"),
          ev("sales.deal.won", at=T0 + H, deal_id="d1", amount="10", currency="EUR")], ["post-sale"]),
        ([ev("marketing.engaged", channel="x", action="like"), ev("sales.offer.made", at=T0 - D, deal_id="d1", amount="5", currency="EUR"),
          ev("sales.deal.won", deal_id="d1", amount="10", currency="EUR")], ["hot-engagement", "post-sale"]),
        ([ev("contact.opted_out"), ev("sales.deal.won", deal_id="d1", amount="10", currency="EUR")], []),
    ],
)
def test_followup_rules_and_guards(history, expected):
    _, effects = run(history)
    assert rules(effects) == expected


@pytest.mark.parametrize("amount, said", [
    ("123456789012345678901234567890", "123456789012345678901234567890"),
    ("99999999999999999999999999999", "99999999999999999999999999999"),
    ("5.00", "5"), ("5.50", "5.50"), ("0.000000000000000000000000000001", "0.000000000000000000000000000001"),
    ("1E+3", "1000"),
])
def test_a_reason_states_the_amount_with_every_digit(amount, said):
    _, effects = run([ev("sales.deal.won", deal_id="d1", amount=amount, currency="EUR")])
    assert f"(deal d1, {said} EUR)" in effects.commands[0].reason


def test_hot_engagement_reason_due_and_ids():
    state, effects = run([ev("marketing.campaign.launched", None, campaign_id="c1", channel="instagram", name="Spring sale"),
                          ev("marketing.engaged", "Dana", id="x1", channel="instagram", action="comment", campaign_id="c1")],
                         now=T0 + H)
    [command] = effects.commands
    assert isinstance(command, RequestFollowup)
    assert command.reason == "Dana commented on your post 'Spring sale' on instagram: reach out within 24 hours"
    assert command.due_at == T0 + dt.timedelta(hours=24)
    assert command.followup_id == followup_id(WS, "hot-engagement", "/t", "x1")
    # Running the same trigger again (a rerun from the start) gives the same ids.
    _, again = run([ev("marketing.engaged", "Dana", id="x1", channel="instagram", action="comment", campaign_id="c1")])
    assert again.commands[0].followup_id == command.followup_id
    assert again.commands[0].command_id == command.command_id


@pytest.mark.parametrize("trigger, fresh, late", [
    (("marketing.engaged", {"channel": "email", "action": "click"}),
     "dana clicked your content on email: reach out within 24 hours",
     "dana clicked your content on email 30 days ago: reach out now"),
    (("marketing.lead.captured", {"channel": "web", "method": "form"}),
     "dana became a lead on web (form): reach out within 24 hours",
     "dana became a lead on web (form) 30 days ago: reach out now"),
    (("sales.deal.won", {"deal_id": "d1", "amount": "10", "currency": "EUR"}),
     "dana bought (deal d1, 10 EUR): check in within 7 days that all is well, and ask for a review or a referral",
     "dana bought (deal d1, 10 EUR) 30 days ago: check in now that all is well, and ask for a review or a referral"),
])
def test_a_reason_says_how_long_ago_a_trigger_judged_after_its_due_time_was(trigger, fresh, late):
    """A history loaded late: "reach out within 24 hours" of a click a month old (an outside audit)."""
    type_, data = trigger
    assert run([ev(type_, "dana", **data)], now=T0 + H)[1].commands[0].reason == fresh
    assert run([ev(type_, "dana", **data)], now=T0 + 30 * D)[1].commands[0].reason == late
    warm = [ev("marketing.engaged", "dana", T0 + n * H, channel="email", action="open") for n in range(5)]
    assert run(warm, now=T0 + 30 * D)[1].commands[0].reason == (
        "dana has engaged with your marketing 5 times and no one from sales has reached out yet"
        " (latest on email, 29 days ago): reach out now")


def test_a_stalled_offer_reason_says_how_long_the_offer_has_waited():
    offer = ev("sales.offer.made", "dana", deal_id="d1", amount="900", currency="EUR")
    state, effects = run([offer])
    [timer] = effects.timers
    for now, days in ((T0 + 7 * D + H, 7), (T0 + 60 * D, 60)):
        fired = decide_timer(msgspec.convert(msgspec.to_builtins(state), RulesState), WS, "dana", timer.timer_id, now=now)
        assert f"(deal d1, 900 EUR) has had no answer for {days} days: follow up now" in fired.commands[0].reason


def test_follow_up_closes_on_sales_touch_at_or_after_trigger_and_on_dismissal():
    state, effects = run([ev("marketing.engaged", channel="x", action="like")])
    fid = effects.commands[0].followup_id
    contact = state.contact(WS, "dana")
    assert fid in contact.open
    # A sales touch before the trigger leaves it open... and blocks nothing new (recency guard aside).
    run([ev("sales.outreach.sent", at=T0 - 8 * D, channel="email")], state=state)
    assert fid in contact.open
    run([ev("sales.outreach.sent", at=T0, channel="email")], state=state)
    assert fid not in contact.open
    state2, effects2 = run([ev("marketing.lead.captured", channel="web")])
    fid2 = effects2.commands[0].followup_id
    run([ev("sales.followup.dismissed", followup_id=fid2)], state=state2)
    assert not state2.contact(WS, "dana").open


def test_a_followup_done_when_it_is_emitted_does_not_block_the_next_trigger():
    # A call on the 10th applied first; an older like fires (the call is later than it), and its
    # follow-up is done from the start: the next like fires too.
    call = ev("sales.outreach.sent", at=T0 + 9 * D, channel="phone")
    likes = [ev("marketing.engaged", at=T0 + n * H, channel="ig", action="click") for n in (0, 12)]
    state, effects = run([call, *likes])
    assert rules(effects) == ["hot-engagement", "hot-engagement"]
    assert state.contact(WS, "dana").open == {}
    # The same for a sale whose follow-up a later call made done before it was applied.
    state, effects = run([call, ev("sales.deal.won", at=T0, deal_id="d1", amount="10", currency="EUR"),
                          ev("marketing.lead.captured", at=T0 + 12 * H, channel="web")])
    assert rules(effects) == ["post-sale", "new-lead"]


def test_logged_followup_counts_as_open_when_rules_rerun():
    fid = "fu_from_a_timer"
    history = [internal("followup.requested", "dana", T0, followup_id=fid, rule="stalled-offer", reason="r",
                        due_at=T0.isoformat(), caused_by_source="/t", caused_by_id="o1", trigger_time=T0.isoformat()),
               ev("marketing.engaged", at=T0 + H, channel="x", action="like")]
    _, effects = run(history)
    assert effects.commands == []


def test_a_dismissal_whose_subject_is_another_contact_closes_the_followup_it_names():
    """The followups read model dismisses by id; the rules kept the follow-up open for its contact,
    which then got no new follow-up (an audit's case: dismissed with subject h2, about n1)."""
    fid = "fu_for_n1"
    requested = internal("followup.requested", "n1", T0, followup_id=fid, rule="new-lead", reason="r",
                         due_at=(T0 + D).isoformat(), caused_by_source="/t", caused_by_id="l1")
    state, _ = run([requested])
    assert state.followup_contacts == {(WS, fid): "n1"} and fid in state.contact(WS, "n1").open
    _, effects = run([ev("sales.followup.dismissed", "h2", T0 + H, followup_id=fid),
                      ev("marketing.engaged", "n1", T0 + 2 * H, channel="x", action="like")], state=state)
    assert fid not in state.contact(WS, "n1").open
    assert [(command.rule, command.contact) for command in effects.commands] == [("hot-engagement", "n1")]


def test_a_followup_dismissed_under_another_contact_before_it_is_emitted_is_never_open():
    """An audit's case: the dismissal names a follow-up id before the trigger comes in, filed under
    bob; the follow-up is dana's. In one batch the worker sees it at once; across batches the
    worker learns it when it stores the emission, and decides the batch again (``dismissed_before``)."""
    fid = followup_id(WS, "hot-engagement", "/ig", "x2")
    dismissal = ev("sales.followup.dismissed", "bob", T0, followup_id=fid)
    like = ev("marketing.engaged", "dana", T0 + D, id="x2", source="/ig", channel="ig", action="click")
    again = ev("marketing.engaged", "dana", T0 + 2 * D, id="x3", source="/ig", channel="ig", action="click")
    state, effects = run([dismissal, like, again])
    assert [command.followup_id for command in effects.commands] == [fid, followup_id(WS, "hot-engagement", "/ig", "x3")]
    assert state.followup_contacts[(WS, fid)] == "dana" and fid in state.contact(WS, "dana").dismissed

    # In one batch, the event itself knows before its rules run; a click that is also dana's 5th
    # marketing touch still makes only its hot-engagement follow-up, dismissed already: one trigger,
    # one follow-up (CONTRACT.md section 6).
    views = [ev("marketing.engaged", "dana", T0 + n * H, channel="web", action="view") for n in range(4)]
    fifth = ev("marketing.engaged", "dana", T0 + D, id="x5", source="/ig", channel="ig", action="click")
    early = ev("sales.followup.dismissed", "bob", T0, followup_id=followup_id(WS, "hot-engagement", "/ig", "x5"))
    _, effects = run([early, *views, fifth])
    assert rules(effects) == ["hot-engagement"]

    # Across batches: dana's state knows nothing of it, until the worker tells it before deciding.
    state, _ = run([dismissal])
    assert state.followup_contacts == {(WS, fid): ""}
    fresh = RulesState()
    fresh.dismissed_before([(WS, fid, "dana")])
    _, effects = run([like, again], state=fresh)
    assert len(effects.commands) == 2


def test_a_dismissal_applied_before_its_followup_is_recorded_stays_a_dismissal():
    """A stress audit's cases: dismissed before the dispatcher logged the follow-up (in the trigger's
    batch, under another contact), or even before the trigger. The logged followup.requested
    re-opened it, and the contact got no follow-up again while the read model said dismissed."""
    lead = ev("marketing.lead.captured", "gina", T0, id="g1", channel="web")
    fid = followup_id(WS, "new-lead", "/t", "g1")
    state, effects = run([lead, ev("sales.followup.dismissed", "wrongguy", T0 + H, followup_id=fid)])
    assert [command.followup_id for command in effects.commands] == [fid]
    requested = internal("followup.requested", "gina", T0, followup_id=fid, rule="new-lead", reason="r",
                         due_at=(T0 + D).isoformat(), caused_by_source="/t", caused_by_id="g1")
    _, later = run([requested, ev("marketing.engaged", "gina", T0 + 2 * H, channel="x", action="click")], state=state)
    assert [command.rule for command in later.commands] == ["hot-engagement"]
    # Dismissed before its trigger was even applied: the follow-up it names never opens.
    early = followup_id(WS, "new-lead", "/t", "e1")
    state, effects = run([ev("sales.followup.dismissed", "erin", T0, followup_id=early),
                          ev("marketing.lead.captured", "erin", T0 + H, id="e1", channel="web")])
    assert not state.contact(WS, "erin").open


def test_disabled_rule_does_not_fire():
    _, effects = run([ev("marketing.engaged", channel="x", action="like")], settings=RuleSwitches(frozenset({"hot-engagement"})))
    assert effects.commands == []


def _offer(at=T0, id="o1"):
    return ev("sales.offer.made", at=at, id=id, deal_id="d1", amount="500", currency="EUR")


@pytest.mark.parametrize(
    ("after", "fires"),
    [
        ([], True),
        ([ev("sales.outreach.sent", at=T0 + D, channel="email")], False),
        ([ev("sales.deal.lost", at=T0 + 2 * D, deal_id="d1")], False),
        ([ev("sales.deal.won", at=T0 + 2 * D, deal_id="d1", amount="500", currency="EUR")], False),
        # earlier activity is not "later"
        ([ev("sales.outreach.sent", at=T0 - D, channel="email")], True),
        ([ev("contact.opted_out", at=T0 + D)], False),
        ([ev("marketing.engaged", at=T0 + 8 * D, channel="x", action="like")], False),  # an open follow-up
        # a follow-up the offer itself made done (a like older than it) does not block
        ([ev("marketing.engaged", at=T0 - 10 * D, channel="x", action="like")], True),
        ([ev("marketing.engaged", at=T0 + D, channel="x", action="view")], True),
    ],
)
def test_stalled_offer_timer(after, fires):
    state, effects = run([_offer()])
    [timer] = effects.timers
    assert timer.fire_at == T0 + dt.timedelta(days=7)
    run(after, state=state)
    fired = decide_timer(state, WS, "dana", timer.timer_id, now=NOW)
    assert [cmd.rule for cmd in fired.commands] == (["stalled-offer"] if fires else [])
    if fires:
        command = fired.commands[0]
        assert command.due_at == T0 + dt.timedelta(days=7)
        assert command.trigger_time == T0 + dt.timedelta(microseconds=1)  # any later sales touch makes it done
        assert command.followup_id == followup_id(WS, "stalled-offer", "/t", "o1")
        assert "deal d1, 500 EUR" in command.reason
    # A timer fires once: firing it again (redelivery) does nothing.
    assert decide_timer(state, WS, "dana", timer.timer_id, now=NOW).commands == []


def _metric(value, id=None):
    return ev("marketing.metrics.reported", None, id=id, campaign_id="c1", metric="reach", value=value)


@pytest.mark.parametrize(
    ("values", "alerts"),
    [
        ([100, 100, 100, 301], 1),
        ([100, 100, 100, 300], 0),
        ([100, 100, 100, 33], 1),
        ([100, 100, 100, 34], 0),
        ([100, 100, 301], 0),  # fewer than 3 reports before
        ([100, 100, 100, 100, 1000, 100], 1),  # the mean includes the anomaly
        # as written, not as binary floats: 0.7 + 0.1 + 0.1 is 0.9, so 0.9 is exactly 3x the mean
        ([0.7, 0.1, 0.1, 0.9], 0),
        ([0.7, 0.1, 0.1, 0.9000000000000001], 1),
        ([0.3, 0.3, 0.3, 0.1], 0),  # exactly a third
        ([0.3, 0.3, 0.3, 0.09999999999999999], 1),
        ([1e300, 5e-324, 1e300, 1e300], 0),  # sums far apart in scale stay exact
        # a negative mean: the band from 3 times it up to a third of it (a report at the mean was
        # "far above" it, -10 being above 3 x -10: an outside audit)
        ([-10, -10, -10, -10], 0),
        ([-10, -10, -10, -30], 0),
        ([-10, -10, -10, -31], 1),
        ([-9, -9, -9, -3], 0),
        ([-9, -9, -9, -2.9], 1),
        ([0, 0, 0, 1], 1),  # a mean of 0: any other value
    ],
)
def test_metric_anomaly(values, alerts):
    _, effects = run([_metric(v) for v in values])
    assert len(effects.commands) == alerts
    if alerts:
        alert = effects.commands[0]
        assert isinstance(alert, RaiseAlert)
        assert alert.rule == "metric-anomaly" and alert.campaign_id == "c1"
        assert "reach of campaign 'c1'" in alert.reason


@pytest.mark.parametrize(
    "values, words",
    [
        ([1, 2, 3, 100], "is 100, 50.0x above its mean of 2 over 3 reports"),
        ([1.6, 1.6, 1.6, 1e-30], "is 1e-30, over a million times below its mean of 1.6"),
        ([2, 2, 2, 0.005], "is 0.005, 400.0x below its mean of 2"),
        ([1, 1, 1, 25_000], "is 25,000, 25,000x above"),
        # Reports whose sum passes the largest float: the mean was taken as a float, infinite, and
        # writing it failed (OverflowError): the event parked, the alert lost (an outside audit).
        ([1.7e308, 1.7e308, 1.7e308, 1.0], "is 1, over a million times below its mean of 1.7e+308 over 3 reports"),
        ([1.7e308, 1.7e308, 1.7e308, 1e-300], "is 1e-300, over a million times below its mean of 1.7e+308"),
        ([1e20, 1e20, 1e20, 5e20], "is 5e+20, 5.0x above its mean of 1e+20"),  # not 21 digits
        ([123_456_789_012_345, 1, 1, 2], "is 2, over a million times below its mean of 41,152,263,004,115.67"),
        ([-10, -10, -10, -40], "is -40, far below its mean of -10 over 3 reports"),
        ([-9, -9, -9, -1], "is -1, far above its mean of -9 over 3 reports"),
    ],
)
def test_metric_anomaly_reason_reads_at_a_glance(values, words):
    # A tiny value read "is 0, 1599999999999999862930413715456.0x below" (an outside audit).
    _, effects = run([_metric(v) for v in values])
    assert words in effects.commands[0].reason


def _goal(metric="revenue", target="10000", start="2026-11-01", end="2026-12-01", **extra):
    data = {"goal_id": "g1", "metric": metric, "target": target, "period_start": start, "period_end": end, **extra}
    if metric == "revenue":
        data.setdefault("currency", "EUR")
    return ev("goal.set", None, **data)


def test_goal_at_risk_fires_once_per_day_with_gap_and_needs():
    # Now is 19.5/30 of the way through November: 65 % gone.
    history = [
        _goal(),
        ev("marketing.lead.captured", "a", channel="web"),
        ev("marketing.lead.captured", "b", channel="web"),
        ev("sales.offer.made", "a", deal_id="d1", amount="1000", currency="EUR"),
        ev("sales.offer.made", "b", deal_id="d2", amount="1000", currency="EUR"),
    ]
    state, effects = run(history)
    # No won deal yet: actual 0, projected 0 < 8000 -> at risk on the goal.set already.
    assert [r for r in rules(effects) if r == "goal-at-risk"] == ["goal-at-risk"]
    effects.commands = [cmd for cmd in effects.commands if cmd.rule == "goal-at-risk"]
    # Same day: no second alert, even as actual changes.
    _, more = run([ev("sales.deal.won", "a", deal_id="d1", amount="1000", currency="EUR")], state=state)
    assert rules(more) == ["post-sale"]
    # Next day it may fire again, with the derived numbers.
    refund = ev("sales.deal.refunded", "a", deal_id="d1", amount="0", currency="EUR")
    _, next_day = run([msgspec.structs.replace(refund, received_at=NOW + D)], state=state, now=NOW + D)
    [alert] = next_day.commands
    assert alert.goal_id == "g1" and alert.rule == "goal-at-risk"
    # avg deal 1000, gap 9000 -> 9 deals; 2 opportunities : 1 customer -> 18; 2 leads : 2 opps -> 18 leads
    assert "Gap: 9000 EUR" in alert.reason
    assert "Gap: 9000 EUR. About 9 more deals, 18 more opportunities, 18 more leads needed." in alert.reason
    assert alert.alert_id != effects.commands[0].alert_id


def test_goal_at_risk_is_not_judged_on_history_being_caught_up():
    """Events received long ago (a rules reset, a worker back after a stop) hold what the log held
    then, not now: judged at today's share of the period, a goal on track today was said to be at
    risk with 0 of 10 (an outside audit). The check waits until the worker has caught up."""
    history = [_goal(metric="leads", target="10")] + [ev("marketing.lead.captured", f"c{n}", channel="web") for n in range(11)]
    later = NOW + logic.LIVE_WINDOW + dt.timedelta(seconds=1)
    state, effects = run(history, now=later)
    assert "goal-at-risk" not in rules(effects) and effects.goals_deferred  # new-lead follow-ups, as ever
    assert logic.check_goals(WS, state.workspace(WS), later, caused_by=None) == []  # on track as it stands
    _, live = run(history[:1], now=NOW)  # received just now: the goal, with no lead yet, is at risk
    assert rules(live) == ["goal-at-risk"] and not live.goals_deferred


@pytest.mark.parametrize(
    ("now", "won", "fires"),
    [
        (dt.datetime(2026, 11, 5, tzinfo=dt.timezone.utc), "0", False),  # under a quarter gone
        (dt.datetime(2026, 11, 16, tzinfo=dt.timezone.utc), "4500", False),  # 50 %: projected 9000 >= 8000
        (dt.datetime(2026, 11, 16, tzinfo=dt.timezone.utc), "3900", True),  # projected 7800 < 8000
        (dt.datetime(2026, 12, 2, tzinfo=dt.timezone.utc), "0", False),  # period over
    ],
)
def test_goal_at_risk_thresholds(now, won, fires):
    history = [ev("sales.deal.won", "a", deal_id="d1", amount=won, currency="EUR", at=dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc)),
               _goal()]
    _, effects = run(history, now=now)
    assert ("goal-at-risk" in rules(effects)) == fires


def test_goal_actual_by_metric():
    state, _ = run([
        ev("marketing.lead.captured", "a", channel="web", at=T0),
        ev("sales.conversation.held", "a", channel="phone", at=T0 + D),
        ev("sales.conversation.held", "b", channel="phone", at=T0 - 3 * D),  # before the period; b a lead too
        ev("sales.deal.won", "a", deal_id="d1", amount="100", currency="EUR", at=T0 + D),
        ev("sales.deal.won", "a", deal_id="d2", amount="50", currency="USD", at=T0 + D),
        ev("sales.deal.refunded", "a", deal_id="d1", amount="30", currency="EUR", at=T0 + 2 * D),
    ], now=T0)
    ws = state.workspace(WS)
    goal = lambda metric, currency=None: logic.Goal(T0, "/t", "g", metric, Decimal(1), T0.date(), (T0 + 30 * D).date(), currency)
    assert logic.goal_actual(ws, goal("revenue", "EUR")) == Decimal(70)
    assert logic.goal_actual(ws, goal("deals_won")) == 2
    assert logic.goal_actual(ws, goal("leads")) == 1
    assert logic.goal_actual(ws, goal("conversations")) == 1
    # b's lead moves into the period when an earlier... later-applied lead event is earlier still: no.
    run([ev("marketing.lead.captured", "b", channel="web", at=T0 - 10 * D)], state=state, now=T0)
    assert logic.goal_actual(ws, goal("leads")) == 1
    run([ev("marketing.lead.captured", "c", channel="web", at=T0 + 3 * D),
         ev("marketing.lead.captured", "c", channel="web", at=T0 - 3 * D)], state=state, now=T0)
    assert logic.goal_actual(ws, goal("leads")) == 1


def test_state_round_trips_through_json():
    state, _ = run([_offer(), ev("marketing.engaged", channel="x", action="like", at=T0 + 8 * D), _goal(), _metric(3)])
    for contact in state.contacts.values():
        assert logic.decode_contact(logic.encode_state(contact)) == contact
    for ws in state.workspaces.values():
        assert logic.decode_workspace(logic.encode_state(ws)) == ws
    won, _ = run([ev("sales.deal.won", deal_id="d1", amount="12.50", currency="EUR")])
    for deal in won.deals.values():
        assert logic.decode_deal(logic.encode_state(deal)) == deal


# --- goal facts follow each deal's earliest report (CONTRACT.md section 5, "Deals") ----------

def day(month: int, day: int) -> dt.datetime:
    return dt.datetime(2026, month, day, tzinfo=dt.timezone.utc)


def _won(id: str, at: dt.datetime, amount: str, subject: str = "dana") -> LoggedEvent:
    """A report of deal dX, source /r1."""
    return ev("sales.deal.won", subject, at, id=id, source="/r1", deal_id="dX", amount=amount, currency="EUR")


def test_an_earlier_report_of_a_won_deal_that_arrives_later_is_the_one_the_goal_counts():
    # The acceptance audit's case: the later-in-time report arrives first, then the earlier one.
    history = [_won("a", day(11, 5), "10"), _won("b", day(11, 2), "1000"), _goal(target="1000")]
    state, effects = run(history)
    ws = state.workspace(WS)
    assert logic.goal_actual(ws, ws.goals["g1"]) == Decimal(1000)  # as /goals: won at 2026-11-02, 1000 EUR
    assert ws.won_sum == {"EUR": Decimal(1000)} and ws.won_count == {"EUR": 1}
    assert ws.days[day(11, 5).date()].revenue["EUR"] == 0 and ws.days[day(11, 5).date()].deals_won == 0
    # post-sale fired on the first report in log order only; no goal-at-risk (projected 1538 >= 800).
    assert rules(effects) == ["post-sale"]
    assert effects.commands[0].caused_by_id == "a"
    # A later-in-time report, applied after, changes nothing.
    _, more = run([_won("c", day(11, 3), "5")], state=state)
    assert more.commands == [] and logic.goal_actual(ws, ws.goals["g1"]) == Decimal(1000)


def test_an_earlier_report_that_takes_the_deal_out_of_the_period_raises_goal_at_risk():
    state, effects = run([_won("a", day(11, 5), "1000"), _goal(target="1000")])
    assert rules(effects) == ["post-sale"]  # 1000 by 65 % of November: on track
    # The same deal reported won on 28 October, before the period: the goal loses it.
    _, later = run([_won("b", day(10, 28), "1000")], state=state)
    [alert] = later.commands
    assert alert.rule == "goal-at-risk" and alert.caused_by_id == "b"
    assert "is at risk: 0 EUR of 1000 EUR" in alert.reason
    ws = state.workspace(WS)
    assert ws.won_count == {"EUR": 1} and ws.days[dt.date(2026, 10, 28)].deals_won == 1


def test_a_revenue_goal_at_risk_before_any_won_deal_says_the_deals_needed_are_not_known():
    _, effects = run([_goal(target="1000")])
    [alert] = effects.commands
    assert alert.reason.endswith(". The deals needed are not known until a deal in EUR is won.")


def test_a_deal_id_is_one_deal_across_contacts_in_the_goal_facts_as_in_the_deals_read_model():
    state, effects = run([_won("a", day(11, 5), "10", subject="ann"), _won("b", day(11, 2), "30", subject="ben")])
    ws = state.workspace(WS)
    assert ws.won_sum == {"EUR": Decimal(30)} and ws.won_count == {"EUR": 1}
    assert state.deals[(WS, "dX")].contact == "ben"
    # post-sale: the first deal.won of the deal in log order, whichever contact reports it after
    assert rules(effects) == ["post-sale"] and effects.commands[0].contact == "ann"


def test_a_deal_won_under_a_rules_state_without_stored_reports_keeps_its_first_report():
    # Rules states stored before ``rules_deals`` existed: the contact knows the deal, no report is
    # kept, so an earlier report cannot be moved to; it must not be counted a second time either.
    state, _ = run([_won("a", day(11, 5), "10")])
    state.deals.clear()
    _, effects = run([_won("b", day(11, 2), "1000")], state=state)
    ws = state.workspace(WS)
    assert effects.commands == [] and ws.won_sum == {"EUR": Decimal(10)} and ws.won_count == {"EUR": 1}


@settings(max_examples=80, deadline=None)
@given(histories, st.randoms(use_true_random=False))
def test_goal_facts_after_any_arrival_order_equal_the_goals_read_model(history, rng):
    events = first_copies(arrivals(history, random.Random(rng.random()), 0))
    state = RulesState()
    for n, event in enumerate(events):
        raw = msgspec.json.encode(event)
        decide(state, LoggedEvent(n + 1, WS, NOW, event, raw), now=NOW,
               settings=RuleSwitches(frozenset({"goal-at-risk"})))
    ws = state.workspace(WS)
    expected = {view.goal_id: Decimal(view.actual) for view in goals.reference(events, NOW).goals}
    assert {gid: logic.goal_actual(ws, goal) for gid, goal in ws.goals.items()} == expected
    won, _ = deals.fold(events)
    totals: dict[str, tuple[Decimal, int]] = {}
    for deal in won.values():
        total, count = totals.get(deal.currency, (Decimal(0), 0))
        totals[deal.currency] = (total + deal.amount, count + 1)
    assert {cur: (ws.won_sum[cur], n) for cur, n in ws.won_count.items()} == totals
    assert {key[1]: deal for key, deal in state.deals.items()} == won


def test_a_sales_touch_after_the_offer_that_arrives_after_its_stalled_offer_makes_that_done():
    """A history sent in two requests: the offer, stale at once, in the first; a call two days after
    it in the second. The timer fired in between: its follow-up was open for ever (its trigger time
    was offer time + 7 days, and the call is earlier). Sent in one request, the call stops the timer."""
    state, effects = run([_offer()])
    [timer] = effects.timers
    [command] = decide_timer(state, WS, "dana", timer.timer_id, now=NOW).commands
    assert command.followup_id in state.contact(WS, "dana").open
    run([ev("sales.conversation.held", at=T0 + 2 * D, channel="phone")], state=state)
    assert command.followup_id not in state.contact(WS, "dana").open


def test_goal_at_risk_states_the_numbers_the_goals_view_derives():
    """The rule worked the reverse funnel out again in 28-digit decimals: with an average deal of
    1/3 EUR, 2 EUR still to win took "7 more deals" there and 6 in GET /goals."""
    history = [
        ev("sales.deal.won", "ann", day(10, 10), deal_id="d1", amount="0.33", currency="EUR"),
        ev("sales.deal.won", "bob", day(10, 11), deal_id="d2", amount="0.33", currency="EUR"),
        ev("sales.deal.won", "cy", day(10, 12), deal_id="d3", amount="0.34", currency="EUR"),
        ev("sales.offer.made", "dee", day(10, 13), deal_id="d4", amount="50", currency="EUR"),
        ev("marketing.lead.captured", "eve", day(10, 14), channel="web"),
        ev("marketing.lead.captured", "fay", day(10, 15), channel="web"),
        _goal(target="2"),
    ]
    _, effects = run(history)
    [alert] = [command for command in effects.commands if command.rule == "goal-at-risk"]
    [view] = goals.reference([logged.event for logged in history], NOW).goals
    derived = view.derived
    assert (derived.deals_needed, derived.opportunities_needed, derived.leads_needed) == (6, 8, 12)
    assert alert.reason.endswith(". About 6 more deals, 8 more opportunities, 12 more leads needed.")
