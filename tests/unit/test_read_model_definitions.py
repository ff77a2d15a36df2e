"""The definitions of funnel, touches, goals and attribution (CONTRACT.md section 5), table by table,
and their independence from the order events arrived in."""

from __future__ import annotations

import datetime as dt
import json
import random
from decimal import Decimal
from fractions import Fraction

import msgspec
import pytest
from hypothesis import given, settings, strategies as st

from events.validation import parse_event
from projections import attribution, funnel, goals, touches
from projections.numbers import exact_decimal, median, median_of_histogram
from tests.histories import arrivals, first_copies, histories
from tests.support import event

_encode = msgspec.json.Encoder(decimal_format="string").encode
UTC = dt.timezone.utc


def parse(*bodies: dict) -> list:
    return [parse_event(json.dumps(body).encode()) for body in bodies]


def as_json(value) -> dict:
    return json.loads(_encode(value))


def at(day: int, hour: int = 10, minute: int = 0) -> str:
    return f"2026-11-{day:02d}T{hour:02d}:{minute:02d}:00Z"


def when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def engaged(contact, time, action="view", channel="instagram", campaign=None, **ids):
    extra = {"campaign_id": campaign} if campaign else {}
    return event("marketing.engaged", contact, time, channel=channel, action=action, **extra, **ids)


def won(contact, time, deal="d1", amount="100", currency="EUR", **ids):
    return event("sales.deal.won", contact, time, deal_id=deal, amount=amount, currency=currency, **ids)


def stages(view) -> dict:
    return {s["stage"]: (s["contacts"], s["conversion"], s["median_hours_from_previous"])
            for s in as_json(view)["stages"]}


# --- numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize("values, expected", [
    ([], None), ([3], Fraction(3)), ([4, 1], Fraction(5, 2)), ([5, 1, 3], Fraction(3)), ([1, 2, 2, 9], Fraction(2)),
])
def test_median_is_the_middle_or_the_mean_of_the_middle_two(values, expected):
    assert median(values) == expected
    histogram: dict[int, int] = {}
    for v in values:
        histogram[v] = histogram.get(v, 0) + 1
    assert median_of_histogram(histogram) == expected


@pytest.mark.parametrize("value, min_scale, text", [
    (Fraction(40), 2, "40.00"), (Fraction(100, 3), 2, "33.333333"), (Fraction(81, 8), 0, "10.125"),
    (Fraction(1, 2), 0, "0.5"), (Fraction(2, 3), 0, "0.666667"), (Fraction(5, 10**7), 0, "0.000000"),
    (Decimal("12.50"), 0, "12.5"), (Decimal("12.50"), 3, "12.500"), (Fraction(-7, 4), 0, "-1.75"),
    # inputs finer than 6 places: rounded at their scale, never coarser
    (Fraction(100000000001, 3 * 10**10), 10, "3.3333333334"),
])
def test_decimals_stay_exact_up_to_six_places(value, min_scale, text):
    assert format(exact_decimal(value, min_scale), "f") == text


# --- funnel ----------------------------------------------------------------------------


def test_buyer_on_first_contact_reaches_every_stage_at_once():
    got = stages(funnel.reference(parse(won("c", at(3)))))
    assert got == {"aware": (1, None, None), "interested": (1, 1.0, 0.0), "lead": (1, 1.0, 0.0),
                   "qualified": (1, 1.0, 0.0), "opportunity": (1, 1.0, 0.0), "customer": (1, 1.0, 0.0)}


def test_funnel_counts_conversion_and_median_hours():
    events = parse(
        engaged("a", at(1, 10)), engaged("a", at(1, 11), "like"),                      # 1 h to interested
        engaged("b", at(1, 10)), engaged("b", at(1, 14), "click"),                     # 4 h
        event("marketing.lead.captured", "b", at(2, 14), channel="form"),              # 24 h to lead
        engaged("c", at(1, 10)),
        engaged("d", at(1, 10)),
    )
    got = stages(funnel.reference(events))
    assert got["aware"] == (4, None, None)
    assert got["interested"] == (2, 0.5, 2.5)  # mean of the middle two: (1 + 4) / 2
    assert got["lead"] == (1, 0.5, 24.0)
    assert got["qualified"] == (0, 0.0, None)
    assert got["opportunity"] == (0, None, None)  # the previous stage has nobody
    assert got["customer"] == (0, None, None)


def test_funnel_cohort_is_reached_aware_in_from_to_half_open():
    events = parse(engaged("early", at(1)), engaged("start", at(2)), engaged("end", at(3)),
                   engaged("start", at(4, 9), "reply"))
    got = funnel.reference(events, when(at(2)), when(at(3)))
    assert stages(got)["aware"][0] == 1 and stages(got)["interested"] == (1, 1.0, 47.0)
    assert stages(funnel.reference(events, when(at(2))))["aware"][0] == 2
    assert stages(funnel.reference(events, None, when(at(3))))["aware"][0] == 2


def test_funnel_campaign_is_the_earliest_campaign_touch_whatever_arrives_first():
    events = parse(
        engaged("a", at(5), campaign="summer"), engaged("a", at(4), campaign="spring"), engaged("a", at(3)),
        engaged("b", at(3), campaign="summer"),
        engaged("c", at(3)),
    )
    assert stages(funnel.reference(events, campaign="spring"))["aware"][0] == 1
    assert stages(funnel.reference(events, campaign="summer"))["aware"][0] == 1
    assert stages(funnel.reference(events, campaign="winter"))["aware"][0] == 0


def test_empty_funnel_has_every_stage_with_nulls():
    got = as_json(funnel.reference([]))["stages"]
    assert [s["stage"] for s in got] == ["aware", "interested", "lead", "qualified", "opportunity", "customer"]
    assert all(s["contacts"] == 0 and s["conversion"] is None and s["median_hours_from_previous"] is None for s in got)


# --- touches ---------------------------------------------------------------------------


def customer_with(contact: str, touches_before: int, after: int = 0) -> list[dict]:
    bodies = [engaged(contact, at(1, 0, n)) for n in range(touches_before)]
    bodies.append(won(contact, at(2), deal=f"deal-{contact}"))
    bodies += [engaged(contact, at(3, 0, n)) for n in range(after)]
    return bodies


@pytest.mark.parametrize("counts, histogram, median_, share", [
    ([], {}, None, None),
    ([0], {"0": 1}, 0.0, 0.0),
    ([4, 5], {"4": 1, "5": 1}, 4.5, 0.5),
    ([5, 12, 13, 3], {"3": 1, "5": 1, "12": 1, "13": 1}, 8.5, 0.5),
    ([7, 7, 7], {"7": 3}, 7.0, 1.0),
])
def test_touches_before_conversion_statistics(counts, histogram, median_, share):
    bodies = [b for n, count in enumerate(counts) for b in customer_with(f"c{n}", count, after=2)]
    bodies.append(engaged("not-a-customer", at(1)))
    got = as_json(touches.reference(parse(*bodies)))["before_conversion"]
    assert got == {"customers": len(counts), "histogram": histogram, "median": median_, "share_5_to_12": share}


def test_a_touch_at_conversion_time_counts_and_by_channel_splits_kinds():
    got = as_json(touches.reference(parse(
        engaged("a", at(1), channel="email"),
        event("sales.offer.made", "a", at(2), deal_id="d", amount="5", currency="EUR"),
        event("sales.conversation.held", "a", at(2), channel="email"),
        won("a", at(2), deal="d"),
        event("marketing.lead.captured", "b", at(2), channel="email"),
    )))
    assert got["before_conversion"]["histogram"] == {"3": 1}
    assert got["by_channel"] == {"direct": {"marketing": 0, "sales": 1}, "email": {"marketing": 2, "sales": 1}}


# --- goals -----------------------------------------------------------------------------


def goal(goal_id, metric, target, start="2026-11-01", end="2026-11-11", time=at(1, 0), currency=None, **ids):
    extra = {"currency": currency} if currency else {}
    return event("goal.set", None, time, goal_id=goal_id, metric=metric, target=target, period_start=start,
                 period_end=end, **extra, **ids)


def goals_of(bodies: list[dict], as_of: str) -> dict[str, dict]:
    return {g["goal_id"]: g for g in as_json(goals.reference(parse(*bodies), when(as_of)))["goals"]}


REVENUE_HISTORY = [
    goal("q", "revenue", "1000.00", currency="EUR"),
    won("a", at(2), deal="d1", amount="300.00"),
    won("a", at(9), deal="d1", amount="999.00"),         # the same deal reported again: ignored
    won("b", at(20), deal="d2", amount="100.00"),        # won after the period: not in actual
    won("b", at(3), deal="d3", amount="80.00", currency="USD"),
    event("sales.deal.refunded", "a", at(4), deal_id="d1", amount="50.00", currency="EUR"),
    event("sales.deal.refunded", "a", at(12), deal_id="d1", amount="10.00", currency="EUR"),  # after the period
    engaged("c", at(2)), event("marketing.lead.captured", "c", at(2), channel="form"),
    event("sales.offer.made", "d", at(2), deal_id="d4", amount="10", currency="EUR"),
]


def test_revenue_goal_actual_pacing_and_reverse_funnel():
    got = goals_of(REVENUE_HISTORY, at(6, 0))["q"]
    # period 2026-11-01 .. 11 (10 days); as_of Nov 6 00:00 is half of it.
    assert got["target"] == "1000.00" and got["currency"] == "EUR"
    assert got["actual"] == "250.00" and got["attainment"] == 0.25
    assert got["expected_by_now"] == "500.00" and got["projected"] == "500.00" and got["on_track"] is False
    # all time, EUR: deals d1 300.00 and d2 100.00 -> avg 200.00; leads a, b, c, d (4, all lead);
    # opportunity a, b, d (3); customers a, b (2).
    assert got["derived"] == {
        "avg_deal": "200.00", "win_rate": 2 / 3, "lead_to_opportunity": 0.75,
        "deals_needed": 4,            # ceil(750 / 200)
        "opportunities_needed": 6,    # ceil(4 / (2/3))
        "leads_needed": 8,            # ceil(6 / 0.75)
    }


@pytest.mark.parametrize("as_of, expected, projected, on_track", [
    (at(1, 0), "0.00", None, True),                  # f = 0: nothing expected, no projection
    ("2026-10-01T00:00:00Z", "0.00", None, True),    # before the period: clamped
    ("2026-12-24T00:00:00Z", "1000.00", "250.00", False),  # after it: f = 1
    (at(1, 6), "25.00", "10000.00", True),            # f = 1/40
])
def test_goal_pacing_at_as_of(as_of, expected, projected, on_track):
    got = goals_of(REVENUE_HISTORY, as_of)["q"]
    assert (got["expected_by_now"], got["projected"], got["on_track"]) == (expected, projected, on_track)


def test_derived_is_null_where_a_divisor_is_zero_or_unknown():
    got = goals_of([goal("q", "revenue", "100", currency="GBP"), won("a", at(2))], at(3))["q"]
    assert got["derived"] == {"avg_deal": None, "win_rate": 1.0, "lead_to_opportunity": 1.0, "deals_needed": None,
                              "opportunities_needed": None, "leads_needed": None}
    got = goals_of([goal("q", "revenue", "100", currency="EUR"), won("a", at(2), amount="100"),
                    event("sales.offer.made", "b", at(2), deal_id="x", amount="1", currency="EUR")], at(3))["q"]
    assert got["derived"]["deals_needed"] == 0 and got["derived"]["opportunities_needed"] == 0
    assert got["derived"]["win_rate"] == 0.5


def test_latest_goal_set_defines_the_goal_whatever_arrives_first():
    later = goal("g", "deals_won", "5", time=at(2), source="/b", id="x")
    earlier = goal("g", "deals_won", "50", time=at(1), source="/a", id="y")
    tie_break = goal("g", "deals_won", "7", time=at(2), source="/a", id="z")  # same time, smaller source
    for order in ([later, earlier, tie_break], [earlier, tie_break, later], [tie_break, later, earlier]):
        assert goals_of(order, at(5))["g"]["target"] == "5"


def test_count_goals_count_in_period_by_event_time():
    bodies = [
        goal("deals", "deals_won", "4"), goal("leads", "leads", "2"), goal("talks", "conversations", "10"),
        won("a", at(2), deal="x"), won("a", at(12), deal="y"), won("b", at(11), deal="x"),  # x won once, on the 2nd
        event("marketing.lead.captured", "a", at(10, 23, 59), channel="form"),
        event("sales.conversation.held", "b", at(3), channel="phone"),
        event("sales.conversation.held", "b", at(11, 0), channel="phone"),  # period end is exclusive
        event("marketing.lead.captured", "c", "2026-10-31T23:00:00-02:00", channel="form"),  # Nov 1 01:00 UTC
    ]
    got = goals_of(bodies, at(6, 0))
    assert got["deals"]["actual"] == "1" and got["deals"]["attainment"] == 0.25
    assert got["deals"]["expected_by_now"] == "2" and got["deals"]["projected"] == "2"
    assert got["leads"]["actual"] == "3"  # a (Nov 2, by its deal), c; b's lead is Nov 11: out
    assert got["talks"]["actual"] == "1" and got["talks"]["derived"] is None


# --- attribution -----------------------------------------------------------------------


def test_position_model_with_one_two_and_five_touches():
    T = when(at(10))
    touch = lambda n: (T - dt.timedelta(hours=n), "/s", f"t{n}", f"c{n}")  # noqa: E731
    assert attribution.weights("position", T, [touch(1)]) == [1]
    assert attribution.weights("position", T, [touch(2), touch(1)]) == [Fraction(1, 2)] * 2
    five = attribution.weights("position", T, [touch(n) for n in range(5, 0, -1)])
    assert five == [Fraction(2, 5)] + [Fraction(1, 15)] * 3 + [Fraction(2, 5)] and sum(five) == 1


@pytest.mark.parametrize("model, weights", [
    ("first", [1, 0, 0]), ("last", [0, 0, 1]), ("linear", [Fraction(1, 3)] * 3),
    ("position", [Fraction(2, 5), Fraction(1, 5), Fraction(2, 5)]),
])
def test_rational_models(model, weights):
    T = when(at(10))
    touches_ = [(T - dt.timedelta(days=d), "/s", f"t{d}", "c") for d in (3, 2, 1)]
    assert attribution.weights(model, T, touches_) == weights


def test_time_decay_halves_each_week_and_sums_to_one():
    T = when(at(15))
    got = attribution.weights("time_decay", T, [(T - dt.timedelta(days=7), "/s", "a", "c"), (T, "/s", "b", "c")])
    assert abs(float(got[0]) - 1 / 3) < 1e-15 and abs(float(got[1]) - 2 / 3) < 1e-15
    assert abs(sum(got) - 1) <= Fraction(2, 10**15)



def test_time_decay_shares_touches_decades_before_the_conversion():
    """Touches 1,301 and 1,300 weeks old weigh 2^-1301 and 2^-1300: 0.0 as doubles. Shares: 1/3, 2/3."""
    T = when(at(15))
    old = [(T - dt.timedelta(weeks=1300 + weeks), "/s", f"t{weeks}", "c") for weeks in (1, 0)]
    got = attribution.weights("time_decay", T, old)
    assert abs(float(got[0]) - 1 / 3) < 1e-15 and abs(float(got[1]) - 2 / 3) < 1e-15


ATTRIBUTION_HISTORY = [
    engaged("a", at(1), campaign="spring"),                       # 30 days before the deal: at the window's edge
    engaged("a", at(20), "like", campaign="summer"),
    event("marketing.lead.captured", "a", at(25), channel="form", campaign_id="summer"),
    engaged("a", at(26), channel="email"),                         # no campaign: never credited
    event("sales.outreach.sent", "a", at(27), channel="email"),
    event("sales.offer.made", "a", at(28), deal_id="d1", amount="90.00", currency="EUR", channel="phone"),
    won("a", "2026-12-01T10:00:00Z", deal="d1", amount="90.00"),
    engaged("a", "2026-12-02T10:00:00Z", campaign="winter"),       # after the deal: not credited
    won("b", at(5), deal="d2", amount="10", currency="USD"),        # no touch: credits nothing
]


@pytest.mark.parametrize("model, campaigns, channels", [
    ("first", {"spring": (1.0, 1.0, {"EUR": "90.00"})},
              {"email": (1.0, {"EUR": "90.00"})}),
    ("last", {"summer": (1.0, 1.0, {"EUR": "90.00"})},
             {"phone": (1.0, {"EUR": "90.00"})}),
    ("linear", {"spring": (1 / 3, 1 / 3, {"EUR": "30.00"}), "summer": (2 / 3, 2 / 3, {"EUR": "60.00"})},
               {"email": (0.5, {"EUR": "45.00"}), "phone": (0.5, {"EUR": "45.00"})}),
    ("position", {"spring": (0.4, 0.4, {"EUR": "36.00"}), "summer": (0.6, 0.6, {"EUR": "54.00"})},
                 {"email": (0.5, {"EUR": "45.00"}), "phone": (0.5, {"EUR": "45.00"})}),
])
def test_attribution_models_credit_leads_deals_and_revenue(model, campaigns, channels):
    got = as_json(attribution.reference(parse(*ATTRIBUTION_HISTORY), model, 30))
    assert {c["campaign_id"]: (c["leads"], c["deals"], c["revenue"]) for c in got["campaigns"]} == campaigns
    assert {c["channel"]: (c["deals"], c["revenue"]) for c in got["sales_channels"]} == channels


def test_lookback_narrows_the_window():
    got = as_json(attribution.reference(parse(*ATTRIBUTION_HISTORY), "linear", 6))
    # lead at Nov 20 (the like): only summer's like; deal Dec 1: summer's capture (Nov 25), sales Nov 27, 28.
    assert {c["campaign_id"]: (c["leads"], c["deals"], c["revenue"]) for c in got["campaigns"]} == {
        "summer": (1.0, 1.0, {"EUR": "90.00"})}
    got = as_json(attribution.reference(parse(*ATTRIBUTION_HISTORY), "linear", 0))
    assert got["campaigns"] == [{"campaign_id": "summer", "leads": 1.0, "deals": 0.0, "revenue": {}}]
    assert got["sales_channels"] == []


def test_revenue_credit_that_is_not_a_short_decimal_is_rounded_to_six_places():
    bodies = [engaged("a", at(n), campaign=f"c{n}") for n in (1, 2, 3)] + [won("a", at(4), amount="100")]
    got = as_json(attribution.reference(parse(*bodies), "linear", 30))
    assert [c["revenue"] for c in got["campaigns"]] == [{"EUR": "33.333333"}] * 3
    assert got["campaigns"][0]["deals"] == 1 / 3


# --- order independence ------------------------------------------------------------------


def every_answer(events: list) -> bytes:
    return b"\n".join(_encode(answer) for answer in (
        funnel.reference(events), funnel.reference(events, when(at(3)), when(at(15)), "spring"),
        touches.reference(events), goals.reference(events, when(at(9, 7))),
        *(attribution.reference(events, model, 5) for model in attribution.MODELS),
    ))


@settings(max_examples=60, deadline=None)
@given(histories, st.randoms(use_true_random=False), st.integers(0, 15))
def test_any_arrival_order_with_duplicates_gives_the_same_read_models(history, rng, duplicates):
    expected = every_answer(first_copies(history))
    assert every_answer(first_copies(arrivals(history, random.Random(rng.random()), duplicates))) == expected


def test_an_audit_entry_is_one_line_whatever_the_producer_s_layout() -> None:
    import datetime as dt
    import json

    from projections.audit import entry_raw

    sent = '{\r\n  "id": "e1",\n  "data": {"note": "two\\nlines", "amount": 10.50}\n}\n'
    line = bytes(entry_raw(7, dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc), sent))
    assert b"\n" not in line and b"\r" not in line
    assert json.loads(line) == {"seq": 7, "received_at": "2026-01-02T00:00:00Z", **json.loads(sent)}
    assert b"10.50" in line  # numbers exactly as sent


def test_an_audit_entry_carries_its_own_seq_and_received_at_only():
    """An event with a `seq` or `received_at` attribute put two of each in its entry, and most
    readers keep the last: the producer's (an outside fuzz forged seq 999999 and a 1999 time).
    Ingest refuses such an event now; one logged before is shown without them."""
    import datetime as dt
    import json

    import pytest

    from events.validation import InvalidEvent, parse_event
    from projections.audit import entry_raw

    logged = '{"specversion":"1.0","seq":999999,"id":"x","received_at":"1999-01-01T00:00:00Z","data":{"seq":1}}'
    line = bytes(entry_raw(7, dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc), logged))
    assert line == b'{"seq":7,"received_at":"2026-01-02T00:00:00Z","specversion":"1.0","id":"x","data":{"seq":1}}'
    assert json.loads(line)["seq"] == 7
    for attribute in ('"seq":999999', '"\\u0073eq":1', '"received_at":"1999-01-01T00:00:00Z"'):
        raw = ('{"specversion":"1.0","id":"c","source":"/p","type":"touchline.marketing.engaged",'
               f'"time":"2026-11-05T10:00:00Z","subject":"coll",{attribute},"data":{{"channel":"web","action":"view"}}}}')
        with pytest.raises(InvalidEvent, match=r"^(seq|received_at): set by Touchline beside an event's attributes"):
            parse_event(raw.encode())
