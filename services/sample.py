"""A realistic sample business, as CloudEvents: for `touchline demo` and the benchmark.

"Kiln & Co", a small ceramics studio selling classes and commissions. Contacts arrive over
the last ``days`` days through four campaigns (and some without any), engage a few times,
some leave their address, the owner writes and calls, makes offers, wins some deals. Real
data is messy, so the sample is too: a CRM that reports some wins twice, refunds, resent
events (duplicates), opt-outs, goals re-set during the month.

Deterministic for a seed and a ``now``; event ids depend only on the seed, so loading
again only adds duplicates. ``events`` yields lazily, one contact at a time, so it also
makes 100,000 contacts (about ten events each) in bounded memory.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from typing import Any, Iterator

WORKSPACE = "demo"

# campaign id, channel, kind, cost (EUR), share of arriving contacts
CAMPAIGNS = (
    ("workshop-reels", "instagram", "social", "420.00", 0.32),
    ("monthly-newsletter", "email", "newsletter", "35.00", 0.18),
    ("search-pottery-classes", "google", "search", "760.00", 0.22),
    ("open-studio-day", "facebook", "event", "180.00", 0.10),
)
ORGANIC_CHANNELS = ("instagram", "website", "referral")
SALES_CHANNELS = ("email", "phone", "whatsapp")
PRODUCTS = (("class", "145.00", "260.00"), ("course", "390.00", "720.00"), ("commission", "850.00", "2400.00"))

MARKETING = "/marketing/kiln-and-co"
CRM = "/crm/kiln-and-co"
SHOP = "/shop/kiln-and-co"


def _event(type_: str, source: str, id_: str, time: dt.datetime, data: dict[str, Any], subject: str | None = None) -> dict:
    body: dict[str, Any] = {
        "specversion": "1.0",
        "id": id_,
        "source": source,
        "type": f"touchline.{type_}",
        "time": time.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z"),
        "data": data,
    }
    if subject is not None:
        body["subject"] = subject
    return body


def _money(rng: random.Random, low: str, high: str) -> str:
    cents = rng.randint(int(Decimal(low) * 100), int(Decimal(high) * 100))
    return str((Decimal(cents) / 100).quantize(Decimal("0.01")))


def month_bounds(today: dt.date) -> tuple[dt.date, dt.date]:
    start = today.replace(day=1)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    return start, end


def goals(now: dt.datetime, contacts: int, days: int) -> list[dict]:
    """This month's goals, sized to the business's pace (targets a little above it)."""
    start, end = month_bounds(now.date())
    period_days = (end - start).days
    per_day = contacts / days
    rate = period_days * per_day
    set_at = min(now, dt.datetime.combine(start, dt.time(8), dt.timezone.utc))
    targets = (
        ("revenue-this-month", "revenue", f"{max(100, round(rate * 0.085 * 750, -2)):.2f}", "EUR"),
        ("deals-this-month", "deals_won", str(max(1, round(rate * 0.07)))),
        ("leads-this-month", "leads", str(max(1, round(rate * 0.42)))),
        ("conversations-this-month", "conversations", str(max(1, round(rate * 0.2)))),
    )
    out = []
    for goal_id, metric, target, *currency in targets:
        data = {"goal_id": goal_id, "metric": metric, "target": target, "period_start": start.isoformat(),
                "period_end": end.isoformat(), **({"currency": currency[0]} if currency else {})}
        out.append(_event("goal.set", CRM, f"{goal_id}-{start.isoformat()}", set_at, data))
    # The revenue goal had a first draft the day before, at half the target: the latest setting counts.
    draft = dict(out[0]["data"], target=str(Decimal(out[0]["data"]["target"]) / 2))
    out.append(_event("goal.set", CRM, f"revenue-this-month-{start.isoformat()}-draft", set_at - dt.timedelta(days=1),
                      draft))
    return out


def campaigns(start: dt.datetime, rng: random.Random) -> list[dict]:
    out = []
    for n, (campaign_id, channel, kind, cost, _) in enumerate(CAMPAIGNS):
        launched = start + dt.timedelta(days=n * 9)
        out.append(_event("marketing.campaign.launched", MARKETING, f"launch-{campaign_id}", launched,
                          {"campaign_id": campaign_id, "channel": channel, "name": campaign_id.replace("-", " ").title(),
                           "kind": kind, "cost": cost, "currency": "EUR"}))
        for week in range(12):
            out.append(_event("marketing.metrics.reported", MARKETING, f"metrics-{campaign_id}-{week}",
                              launched + dt.timedelta(days=7 * week + 6),
                              {"campaign_id": campaign_id, "metric": "impressions",
                               "value": rng.randint(800, 2600)}))
    return out


def _contact(rng: random.Random, n: int, start: dt.datetime, now: dt.datetime, span: float) -> list[dict]:
    contact = f"c{n:06d}"
    out: list[dict] = []
    seq = 0

    def add(type_: str, source: str, moment: dt.datetime, data: dict[str, Any]) -> None:
        nonlocal seq
        seq += 1
        if moment <= now:
            out.append(_event(type_, source, f"{contact}-{seq}", moment, data, contact))

    t = start + dt.timedelta(seconds=rng.random() * span)
    roll = rng.random()
    campaign = None
    for campaign_id, channel, _, _, share in CAMPAIGNS:
        if roll < share:
            campaign = (campaign_id, channel)
            break
        roll -= share
    channel = campaign[1] if campaign else rng.choice(ORGANIC_CHANNELS)
    tag = {"campaign_id": campaign[0]} if campaign else {}

    def later(low_hours: float, high_hours: float) -> dt.datetime:
        return t + dt.timedelta(hours=rng.uniform(low_hours, high_hours))

    add("marketing.engaged", MARKETING, t, {"channel": channel, "action": rng.choice(("view", "visit", "open")), **tag})
    if rng.random() < 0.35:
        return out
    for _ in range(rng.choice((0, 1, 1, 2, 3, 4, 6, 9))):
        t = later(2, 96)
        add("marketing.engaged", MARKETING, t,
            {"channel": channel, "action": rng.choice(("like", "comment", "click", "share", "visit", "reply")), **tag})
    if rng.random() < 0.42:
        return out
    t = later(1, 72)
    add("marketing.lead.captured", MARKETING, t, {"channel": channel, "method": rng.choice(("form", "dm", "signup")), **tag})
    if rng.random() < 0.06:
        add("contact.opted_out", CRM, later(24, 200), {})
        return out
    sales_channel = rng.choice(SALES_CHANNELS)
    for _ in range(rng.choice((1, 1, 2, 3, 5))):
        t = later(4, 60)
        add("sales.outreach.sent", CRM, t, {"channel": sales_channel, "method": "personal"})
    if rng.random() < 0.3:
        return out
    t = later(12, 96)
    add("sales.conversation.held", CRM, t, {"channel": rng.choice(("phone", "studio-visit"))})
    if rng.random() < 0.25:
        add("sales.lead.disqualified", CRM, later(1, 24), {"reason": "not in the area"})
        return out
    t = later(1, 48)
    add("sales.lead.qualified", CRM, t, {})
    if rng.random() < 0.2:
        return out
    product, low, high = rng.choice(PRODUCTS)
    amount = _money(rng, low, high)
    deal = f"{contact}-{product}"
    t = later(12, 120)
    add("sales.offer.made", CRM, t, {"deal_id": deal, "amount": amount, "currency": "EUR",
                                     "channel": rng.choice(("email", "studio-visit"))})
    if rng.random() < 0.35:
        t = later(24, 96)
        add("sales.outreach.sent", CRM, t, {"channel": sales_channel, "method": "follow-up"})
    if rng.random() < 0.42:
        add("sales.deal.lost", CRM, later(24, 240), {"deal_id": deal, "reason": rng.choice(("price", "timing", "silence"))})
        return out
    t = later(6, 168)
    add("sales.deal.won", SHOP, t, {"deal_id": deal, "amount": amount, "currency": "EUR"})
    if rng.random() < 0.1:  # the CRM reports the same win again, a day later
        add("sales.deal.won", CRM, t + dt.timedelta(days=1), {"deal_id": deal, "amount": amount, "currency": "EUR"})
    if rng.random() < 0.04:
        add("sales.deal.refunded", SHOP, later(48, 400), {"deal_id": deal, "amount": amount, "currency": "EUR"})
    return out


def events(contacts: int = 300, days: int = 90, seed: int = 7, now: dt.datetime | None = None) -> Iterator[dict]:
    """The sample business's events: campaigns, each contact's history, then the goals.

    About one event in fifty is sent twice (a retrying integration). The goals come last although
    they were set early in the month: the rules worker judges a goal with what it has applied, so
    goals loaded before the month's deals raised goal-at-risk alerts ("0 of 20") that were false
    by the time the demo printed its goals, and stood for the day."""
    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc).replace(microsecond=0)
    start = now - dt.timedelta(days=days)
    rng = random.Random(seed)
    yield from campaigns(start, rng)
    span = (now - start).total_seconds() * 0.97
    for n in range(contacts):
        history = _contact(rng, n, start, now, span)
        yield from history
        if history and rng.random() < 0.2:
            yield rng.choice(history)
    yield from goals(now, contacts, days)
