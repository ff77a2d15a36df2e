"""Generated histories of a small business, for order-independence tests of the read models.

Few contacts, channels, campaigns and deals, and times on a coarse grid, so that ties in
time, deals reported twice, refunds, goals re-set and touches at conversion time all occur.
"""

from __future__ import annotations

import json
import random

from hypothesis import strategies as st

from events.validation import parse_event
from tests.support import event

CONTACTS = ("ana", "ben", "cleo", "dev")
CHANNELS = ("email", "instagram", "phone")
CAMPAIGNS = ("spring", "summer")
ACTIONS = ("view", "open", "visit", "like", "comment", "share", "click", "reply")


def at(hour: int) -> str:
    """A time on a 6-hour grid in November 2026."""
    return f"2026-11-{1 + hour // 4:02d}T{(hour % 4) * 6:02d}:00:00Z"


def one_event(rng: random.Random, n: int) -> dict:
    contact = rng.choice(CONTACTS)
    time = at(rng.randrange(0, 80))
    source = rng.choice(("/a", "/b"))
    kind = rng.randrange(14)
    ids = {"id": f"e{n}", "source": source}
    deal = f"d{rng.randrange(4)}"
    amount = rng.choice(("100", "49.99", "250.00", "0.5"))
    currency = rng.choice(("EUR", "EUR", "USD"))
    if kind <= 3:
        campaign = rng.choice(CAMPAIGNS + (None,))
        extra = {"campaign_id": campaign} if campaign else {}
        return event("marketing.engaged", contact, time, channel=rng.choice(CHANNELS), action=rng.choice(ACTIONS),
                     **extra, **ids)
    if kind == 4:
        campaign = rng.choice(CAMPAIGNS + (None,))
        extra = {"campaign_id": campaign} if campaign else {}
        return event("marketing.lead.captured", contact, time, channel=rng.choice(CHANNELS), **extra, **ids)
    if kind == 5:
        return event("sales.outreach.sent", contact, time, channel=rng.choice(CHANNELS), **ids)
    if kind == 6:
        return event("sales.conversation.held", contact, time, channel=rng.choice(CHANNELS), **ids)
    if kind == 7:
        return event("sales.lead.qualified", contact, time, **ids)
    if kind == 8:
        extra = {"channel": rng.choice(CHANNELS)} if rng.random() < 0.5 else {}
        return event("sales.offer.made", contact, time, deal_id=deal, amount=amount, currency=currency, **extra, **ids)
    if kind in (9, 10):
        return event("sales.deal.won", contact, time, deal_id=deal, amount=amount, currency=currency, **ids)
    if kind == 11:
        return event("sales.deal.refunded", contact, time, deal_id=deal, amount="10.5", currency=currency, **ids)
    if kind == 12:
        return event("sales.deal.lost", contact, time, deal_id=deal, **ids)
    goal = rng.choice(("g-rev", "g-deals", "g-leads", "g-talks"))
    metric = {"g-rev": "revenue", "g-deals": "deals_won", "g-leads": "leads", "g-talks": "conversations"}[goal]
    start = rng.choice(("2026-11-01", "2026-11-05"))
    extra = {"currency": "EUR"} if metric == "revenue" else {}
    return event("goal.set", None, time, goal_id=goal, metric=metric, target=rng.choice(("500", "3", "7.5")),
                 period_start=start, period_end="2026-11-15", **extra, **ids)


def history(seed: int, size: int) -> list[dict]:
    rng = random.Random(seed)
    return [one_event(rng, n) for n in range(size)]


def arrivals(events: list[dict], rng: random.Random, duplicates: int) -> list[dict]:
    """The events in another order, with some sent again."""
    copies = list(events) + [rng.choice(events) for _ in range(duplicates if events else 0)]
    rng.shuffle(copies)
    return copies


def first_copies(bodies: list[dict]) -> list:
    """Parse in arrival order, keeping the first copy of each (source, id)."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for body in bodies:
        key = (body["source"], body["id"])
        if key not in seen:
            seen.add(key)
            kept.append(parse_event(json.dumps(body).encode()))
    return kept


histories = st.builds(history, st.integers(0, 2**32 - 1), st.integers(0, 60))
