"""The contact fold against CONTRACT.md section 5, and its independence from arrival order."""

from __future__ import annotations

import json
import random

import msgspec
from hypothesis import given, settings, strategies as st

from events.validation import parse_event
from projections.contacts import ContactState, apply, decode_state, encode_state, fold, merge, render
from tests.support import event

_encode = msgspec.json.Encoder(decimal_format="string").encode


def parse(*bodies: dict) -> list:
    return [parse_event(json.dumps(body).encode()) for body in bodies]


def view(*bodies: dict, contact: str = "c") -> dict:
    return json.loads(_encode(render(contact, fold(parse(*bodies))[contact])))


def at(day: int, hour: int = 10) -> str:
    return f"2026-11-{day:02d}T{hour:02d}:00:00Z"


def test_buyer_on_first_contact_reaches_every_stage_at_once():
    got = view(event("sales.deal.won", "c", at(3), deal_id="d", amount="50", currency="EUR"))
    assert got["stage"] == "customer" and got["status"] == "won"
    assert got["reached"] == {s: at(3) for s in ("aware", "interested", "lead", "qualified", "opportunity", "customer")}
    assert got["touches_before_conversion"] == 0
    assert got["touches"] == {"marketing": 0, "sales": 0, "total": 0, "by_channel": {}}
    assert got["first_touch_at"] is None and got["deals_won"] == 1 and got["revenue"] == {"EUR": "50"}


def test_stage_is_the_highest_and_reached_the_earliest():
    got = view(
        event("marketing.engaged", "c", at(1), channel="ig", action="view"),
        event("marketing.engaged", "c", at(2), channel="ig", action="like"),
        event("sales.conversation.held", "c", at(5), channel="phone"),
        event("marketing.lead.captured", "c", at(4), channel="web"),
    )
    assert got["stage"] == "lead"
    assert got["reached"] == {"aware": at(1), "interested": at(2), "lead": at(4)}
    assert got["touches"] == {"marketing": 3, "sales": 1, "total": 4, "by_channel": {"ig": 2, "phone": 1, "web": 1}}
    assert (got["first_touch_at"], got["last_touch_at"]) == (at(1), at(5))
    assert got["touches_before_conversion"] is None and got["status"] == "open"


def test_status_is_decided_by_the_latest_and_ties_by_source_then_id():
    lost = event("sales.deal.lost", "c", at(5), deal_id="d", source="/b", id="1")
    qualified = event("sales.lead.qualified", "c", at(5), source="/a", id="9")
    assert view(lost, qualified)["status"] == "lost"
    assert view(event("sales.lead.disqualified", "c", at(6)), lost)["status"] == "disqualified"
    assert view(event("sales.offer.made", "c", at(7), deal_id="d", amount=1, currency="EUR"), lost)["status"] == "open"


def test_touches_before_conversion_count_up_to_the_earliest_win():
    touches = [event("marketing.engaged", "c", at(day), channel="ig", action="open") for day in range(1, 9)]
    won_late = event("sales.deal.won", "c", at(20), deal_id="d2", amount="5", currency="EUR")
    won_early = event("sales.deal.won", "c", at(5, 10), deal_id="d1", amount="7", currency="EUR")
    assert view(*touches, won_late)["touches_before_conversion"] == 8
    # A late-arriving earlier win moves the conversion back: touches at or before it count.
    assert view(*touches, won_late, won_early)["touches_before_conversion"] == 5
    assert view(won_early, *touches, won_late)["touches_before_conversion"] == 5


def test_deals_are_won_once_and_refunds_subtract_per_currency():
    got = view(
        event("sales.deal.won", "c", at(3), deal_id="d1", amount="100.10", currency="EUR"),
        event("sales.deal.won", "c", at(4), deal_id="d1", amount="999", currency="EUR"),
        event("sales.deal.won", "c", at(2), deal_id="d2", amount="20", currency="USD"),
        event("sales.deal.refunded", "c", at(6), deal_id="d1", amount="0.10", currency="EUR"),
        event("sales.deal.refunded", "c", at(7), deal_id="d1", amount="30", currency="EUR"),
    )
    assert got["deals_won"] == 2
    assert got["revenue"] == {"EUR": "70.00", "USD": "20"}
    # The earliest won event of a deal decides its amount, whatever arrives first.
    assert view(
        event("sales.deal.won", "c", at(4), deal_id="d1", amount="999", currency="EUR"),
        event("sales.deal.won", "c", at(3), deal_id="d1", amount="100", currency="EUR"),
    )["revenue"] == {"EUR": "100"}


def test_revenue_is_exact_for_every_accepted_amount():
    """Amounts of up to 30 digits before the point and 30 after, summed past Python's 28 digits."""
    big, tiny = "9" * 30 + "." + "9" * 30, "0." + "0" * 29 + "1"
    got = view(
        event("sales.deal.won", "c", at(3), deal_id="d1", amount=big, currency="EUR"),
        event("sales.deal.won", "c", at(4), deal_id="d2", amount=tiny, currency="EUR"),
        event("sales.deal.won", "c", at(5), deal_id="d3", amount="12345678901234567890.123456789012345678",
              currency="USD"),
        event("sales.deal.refunded", "c", at(6), deal_id="d3", amount=tiny, currency="USD"),
    )
    assert got["revenue"] == {"EUR": "1" + "0" * 30 + "." + "0" * 30,
                              "USD": "12345678901234567890.123456789012345677999999999999"}


def test_do_not_contact_follows_the_latest_consent_event():
    out, back = event("contact.opted_out", "c", at(3)), event("contact.opted_in", "c", at(4))
    assert view(out)["do_not_contact"] is True
    assert view(back, out)["do_not_contact"] is False
    assert view(event("contact.opted_in", "c", at(1)), out)["do_not_contact"] is True


def test_times_are_compared_across_offsets():
    got = view(
        event("marketing.engaged", "c", "2026-11-01T10:00:00+02:00", channel="ig", action="view"),
        event("marketing.engaged", "c", "2026-11-01T09:00:00Z", channel="ig", action="view"),
    )
    assert got["reached"]["aware"] == "2026-11-01T08:00:00Z"


def test_state_round_trips_through_storage():
    states = fold(parse(
        event("marketing.engaged", "c", at(1), channel="ig", action="like", campaign_id="spring"),
        event("sales.deal.won", "c", at(3), deal_id="d", amount="1.50", currency="EUR"),
        event("contact.opted_out", "c", at(4)),
    ))
    assert decode_state(encode_state(states["c"]).decode()) == states["c"]


# --- order independence ------------------------------------------------------------------

CONTACTS = ["ana", "ben"]
TYPES = [
    lambda c, t: event("marketing.engaged", c, t, channel=random.choice(["ig", "mail"]),
                       action=random.choice(["view", "open", "like", "reply"]),
                       campaign_id=random.choice([None, "spring", "fall"])),
    lambda c, t: event("marketing.lead.captured", c, t, channel="web", campaign_id="spring"),
    lambda c, t: event("sales.outreach.sent", c, t, channel="email"),
    lambda c, t: event("sales.conversation.held", c, t, channel="phone"),
    lambda c, t: event("sales.lead.qualified", c, t),
    lambda c, t: event("sales.lead.disqualified", c, t),
    lambda c, t: event("sales.offer.made", c, t, deal_id=random.choice(["d1", "d2"]), amount="10", currency="EUR"),
    lambda c, t: event("sales.deal.won", c, t, deal_id=random.choice(["d1", "d2"]),
                       amount=random.choice(["10", "12.5"]), currency=random.choice(["EUR", "USD"])),
    lambda c, t: event("sales.deal.lost", c, t, deal_id="d1"),
    lambda c, t: event("sales.deal.refunded", c, t, deal_id="d1", amount="2.5", currency="EUR"),
    lambda c, t: event("contact.opted_out", c, t),
    lambda c, t: event("contact.opted_in", c, t),
]


def history(seed: int, size: int) -> list:
    random.seed(seed)
    bodies = []
    for _ in range(size):
        # Few distinct times so that ties on time are common and broken by (source, id).
        time = at(random.randint(1, 4), random.choice([9, 10]))
        body = random.choice(TYPES)(random.choice(CONTACTS), time)
        body["source"] = random.choice(["/a", "/b"])
        if "campaign_id" in body["data"] and body["data"]["campaign_id"] is None:
            del body["data"]["campaign_id"]
        bodies.append(body)
    return parse(*bodies)


def rendered(events: list) -> dict:
    return {c: json.loads(_encode(render(c, s))) for c, s in fold(events).items()}


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 10**6), size=st.integers(1, 40), shuffle_seed=st.integers(0, 10**6))
def test_any_arrival_order_gives_the_same_contacts(seed, size, shuffle_seed):
    events = history(seed, size)
    shuffled = list(events)
    random.Random(shuffle_seed).shuffle(shuffled)
    assert rendered(shuffled) == rendered(events)


def test_fold_state_is_independent_of_batch_boundaries():
    events = history(7, 60)
    whole = fold(events)
    pieces: dict[str, ContactState] = {}
    for start in range(0, len(events), 7):
        for e in events[start:start + 7]:
            stored = decode_state(encode_state(pieces.get(e.subject, ContactState())).decode())
            pieces[e.subject] = apply(stored, e)
    assert {c: render(c, s) for c, s in pieces.items()} == {c: render(c, s) for c, s in whole.items()}


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 10**6), size=st.integers(1, 40), cuts=st.lists(st.integers(0, 40), max_size=4),
       shuffle_seed=st.integers(0, 10**6))
def test_merging_the_folds_of_batches_gives_the_fold_of_all_of_them(seed, size, cuts, shuffle_seed):
    """What the projector does: fold each batch alone, then merge it into the state stored before."""
    events = history(seed, size)
    random.Random(shuffle_seed).shuffle(events)
    bounds = [0, *sorted(min(c, len(events)) for c in cuts), len(events)]
    stored: dict[str, ContactState] = {}
    for start, end in zip(bounds, bounds[1:]):
        for contact, delta in fold(events[start:end]).items():
            known = stored.get(contact)
            merged = delta if known is None else merge(decode_state(encode_state(known).decode()), delta)
            stored[contact] = decode_state(encode_state(merged).decode())
    assert stored == fold(events)
