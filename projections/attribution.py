"""Attribution (CONTRACT.md section 5, "Attribution"), computed on read.

Conversions are a contact becoming a lead (credits ``leads``) and each won deal (credits
``deals`` and ``revenue``). A conversion at time T credits the contact's marketing touches
that name a campaign with time in [T - lookback_days, T], earliest first, by the model's
weights; a won deal also credits the contact's sales touches in the same window, by channel.
The stored answer reads conversions and the touches in their windows from indexed tables
(``contacts``, ``deals``, ``touch_events``) and weighs them with the same code as the
reference.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
import math
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Iterable, Literal

import asyncpg
import msgspec

from events.catalog import Envelope
from projections import contacts as contact_model
from projections import deals as deal_model
from projections.contacts import decimal_text
from projections.numbers import exact_decimal, micros, scale_of
from projections.touches import all_touches

Model = Literal["first", "last", "linear", "position", "time_decay"]
MODELS: tuple[str, ...] = ("first", "last", "linear", "position", "time_decay")
DEFAULT_MODEL = "linear"
DEFAULT_LOOKBACK_DAYS = 30
HALF_LIFE_MICROS = 7 * 86_400 * 1_000_000
DECAY_UNIT = 10**15

# (time, source, id, what is credited: a campaign_id or a sales channel)
Credited = tuple[dt.datetime, str, str, str]


def weights(model: str, at: dt.datetime, touches: list[Credited]) -> list[Fraction]:
    """The share of one conversion at ``at`` each touch gets; touches earliest first."""
    n = len(touches)
    if n == 0:
        return []
    if model == "first":
        return [Fraction(1)] + [Fraction(0)] * (n - 1)
    if model == "last":
        return [Fraction(0)] * (n - 1) + [Fraction(1)]
    if model == "linear":
        return [Fraction(1, n)] * n
    if model == "position":
        if n == 1:
            return [Fraction(1)]
        if n == 2:
            return [Fraction(1, 2)] * 2
        middle = Fraction(1, 5) / (n - 2)
        return [Fraction(2, 5)] + [middle] * (n - 2) + [Fraction(2, 5)]
    if model == "time_decay":
        # 2^(-age / 7 days) is irrational: computed in double precision, normalised, then
        # fixed at 15 decimal places, so that sums of credits stay exact and order-free.
        raw = [2.0 ** (-micros(at - t[0]) / HALF_LIFE_MICROS) for t in touches]
        total = math.fsum(raw)
        return [Fraction(round(w / total * DECAY_UNIT), DECAY_UNIT) for w in raw]
    raise ValueError(f"unknown model {model!r}")


class Conversion(msgspec.Struct):
    at: dt.datetime
    deal: bool
    amount: Decimal | None = None
    currency: str | None = None
    campaign_touches: list[Credited] = msgspec.field(default_factory=list)
    sales_touches: list[Credited] = msgspec.field(default_factory=list)


# --- the answer ------------------------------------------------------------------------


class CampaignCredit(msgspec.Struct):
    campaign_id: str
    leads: float
    deals: float
    revenue: dict[str, str]


class ChannelCredit(msgspec.Struct):
    channel: str
    deals: float
    revenue: dict[str, str]


class AttributionView(msgspec.Struct):
    model: str
    lookback_days: int
    campaigns: list[CampaignCredit]
    sales_channels: list[ChannelCredit]


class _Tally:
    """Credits per name, kept exact and cheap: shares with the same denominator are summed
    as integers (and amounts times integers as decimals), divided once at the end."""

    def __init__(self) -> None:
        self.leads: dict[tuple[str, int], int] = defaultdict(int)
        self.deals: dict[tuple[str, int], int] = defaultdict(int)
        self.revenue: dict[tuple[str, str, int], Decimal] = defaultdict(Decimal)
        self.scale: dict[str, int] = defaultdict(int)  # per currency: the widest scale of the amounts credited

    def credit(self, model: str, conversion: Conversion, touches: list[Credited]) -> None:
        touches = sorted(touches)
        if conversion.deal and touches:
            self.scale[conversion.currency] = max(self.scale[conversion.currency], scale_of(conversion.amount))
        for (_, _, _, name), share in zip(touches, weights(model, conversion.at, touches)):
            if share == 0:
                continue  # `first` and `last`: the other touches get nothing, and are not listed for it
            if not conversion.deal:
                self.leads[(name, share.denominator)] += share.numerator
                continue
            self.deals[(name, share.denominator)] += share.numerator
            self.revenue[(name, conversion.currency, share.denominator)] += share.numerator * conversion.amount

    def names(self) -> list[str]:
        return sorted({name for name, _ in self.leads} | {name for name, _ in self.deals})

    @staticmethod
    def _total(parts: dict, name: str) -> Fraction:
        return sum((Fraction(v, den) for (n, den), v in parts.items() if n == name), Fraction(0))

    def counts(self, name: str) -> tuple[float, float]:
        return float(self._total(self.leads, name)), float(self._total(self.deals, name))

    def revenue_of(self, name: str) -> dict[str, str]:
        totals: dict[str, Fraction] = defaultdict(Fraction)
        for (n, currency, den), value in self.revenue.items():
            if n == name:
                totals[currency] += Fraction(value) / den
        return {cur: decimal_text(exact_decimal(v, self.scale[cur])) for cur, v in sorted(totals.items())}


def view(model: str, lookback_days: int, conversions: Iterable[Conversion]) -> AttributionView:
    campaigns, channels = _Tally(), _Tally()
    with localcontext() as context:
        context.prec = 60  # amount x integer numerators, summed: exact
        for conversion in conversions:
            campaigns.credit(model, conversion, conversion.campaign_touches)
            if conversion.deal:
                channels.credit(model, conversion, conversion.sales_touches)
    return AttributionView(
        model,
        lookback_days,
        [CampaignCredit(name, *campaigns.counts(name), campaigns.revenue_of(name)) for name in campaigns.names()],
        [ChannelCredit(name, channels.counts(name)[1], channels.revenue_of(name)) for name in channels.names()],
    )


def reference(events: list[Envelope], model: str = DEFAULT_MODEL, lookback_days: int = DEFAULT_LOOKBACK_DAYS) -> AttributionView:
    """/attribution from a set of de-duplicated events: the definition in code."""
    lookback = dt.timedelta(days=lookback_days)
    by_contact = defaultdict(list)
    for t in all_touches(events):
        by_contact[t.contact].append(t)

    def window(contact: str, at: dt.datetime, kind: str) -> list[Credited]:
        return [
            (t.at, t.source, t.id, t.campaign_id if kind == "marketing" else t.channel)
            for t in by_contact[contact]
            if t.kind == kind and at - lookback <= t.at <= at and (kind == "sales" or t.campaign_id is not None)
        ]

    conversions = []
    for contact, state in contact_model.fold(events).items():
        if "lead" in state.reached:
            at = state.reached["lead"]
            conversions.append(Conversion(at, False, campaign_touches=window(contact, at, "marketing")))
    for deal in deal_model.fold(events)[0].values():
        conversions.append(Conversion(deal.won_at, True, deal.amount, deal.currency,
                                      window(deal.contact, deal.won_at, "marketing"),
                                      window(deal.contact, deal.won_at, "sales")))
    return view(model, lookback_days, conversions)


_LEAD_TOUCHES = """
SELECT c.contact, c.reached_lead AS at, t.at AS touched, t.source, t.id, t.campaign_id AS credited
FROM contacts c
JOIN touch_events t ON t.workspace = c.workspace AND t.contact = c.contact
 AND t.at BETWEEN c.reached_lead - make_interval(secs => $2) AND c.reached_lead
WHERE c.workspace = $1 AND c.reached_lead IS NOT NULL AND t.kind = 'marketing' AND t.campaign_id IS NOT NULL
"""

_DEAL_TOUCHES = """
SELECT d.deal_id, d.won_at AS at, d.amount, d.currency, t.at AS touched, t.source, t.id, t.kind,
       CASE WHEN t.kind = 'marketing' THEN t.campaign_id ELSE t.channel END AS credited
FROM deals d
JOIN touch_events t ON t.workspace = d.workspace AND t.contact = d.contact
 AND t.at BETWEEN d.won_at - make_interval(secs => $2) AND d.won_at
WHERE d.workspace = $1 AND (t.kind = 'sales' OR t.campaign_id IS NOT NULL)
"""


async def query(conn: asyncpg.Connection, workspace: str, model: str, lookback_days: int) -> AttributionView:
    seconds = float(lookback_days * 86_400)
    conversions: dict[tuple[str, str], Conversion] = {}
    for row in await conn.fetch(_LEAD_TOUCHES, workspace, seconds):
        conversion = conversions.setdefault(("lead", row["contact"]), Conversion(row["at"], False))
        conversion.campaign_touches.append((row["touched"], row["source"], row["id"], row["credited"]))
    for row in await conn.fetch(_DEAL_TOUCHES, workspace, seconds):
        conversion = conversions.setdefault(
            ("deal", row["deal_id"]), Conversion(row["at"], True, row["amount"], row["currency"])
        )
        touches = conversion.campaign_touches if row["kind"] == "marketing" else conversion.sales_touches
        touches.append((row["touched"], row["source"], row["id"], row["credited"]))
    return view(model, lookback_days, conversions.values())
