"""Attribution (CONTRACT.md section 5, "Attribution"), computed on read.

Conversions are a contact becoming a lead (credits ``leads``) and each won deal (credits
``deals`` and ``revenue``). A conversion at time T credits the contact's marketing touches
that name a campaign with time in [T - lookback_days, T], earliest first, by the model's
weights; a won deal also credits the contact's sales touches in the same window, by channel.
The stored answer is aggregated in PostgreSQL from indexed tables (``contacts``, ``deals``,
``touch_events``): each credited touch's rank and the number n of touches in its
conversion's window come from window functions over an index already in that order, and the rational shares are summed as
integer numerators per (name, denominator), money as exact ``numeric``; only those sums
reach Python, which adds them as fractions. ``time_decay`` shares are doubles, so each
conversion comes to Python as arrays of ages and names and is weighed by the same code as
the reference (``decay_numerators``).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
import math
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Iterable

import asyncpg
import msgspec

from events.catalog import Envelope
from projections import contacts as contact_model
from projections import deals as deal_model
from projections.contacts import decimal_text
from projections.numbers import PRECISION, exact_decimal, micros, scale_of
from projections.touches import all_touches

MODELS: tuple[str, ...] = ("first", "last", "linear", "position", "time_decay")
DEFAULT_MODEL = "linear"
DEFAULT_LOOKBACK_DAYS = 30
HALF_LIFE_MICROS = 7 * 86_400 * 1_000_000
DECAY_UNIT = 10**15

# (time, source, id, what is credited: a campaign_id or a sales channel)
Credited = tuple[dt.datetime, str, str, str]


def weights(model: str, at: dt.datetime, touches: list[Credited]) -> list[Fraction]:
    """The share of one conversion at ``at`` each touch gets; touches earliest first. The definition
    in code (``reference``), which the tests hold the reads' ``_SHARES`` in SQL to."""
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
        return [Fraction(k, DECAY_UNIT) for k in decay_numerators([micros(at - t[0]) for t in touches])]
    raise ValueError(f"unknown model {model!r}")


def decay_numerators(ages: list[int]) -> list[int]:
    """``time_decay`` shares, in units of 10^-15, of touches ``ages`` microseconds old.

    2^(-age / 7 days) is irrational: computed in double precision, normalised, then fixed at
    15 decimal places, so that sums of credits stay exact and order-free. Ages are counted from
    the youngest touch, which the normalising cancels: touches all older than ~20 years would
    otherwise each weigh 0.0 in a double, and their shares divide by zero."""
    youngest = min(ages)
    raw = [2.0 ** (-(age - youngest) / HALF_LIFE_MICROS) for age in ages]
    total = math.fsum(raw)
    return [round(w / total * DECAY_UNIT) for w in raw]


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

    def add(self, name: str, numerator: int, denominator: int, currency: str | None = None,
            revenue: Decimal | None = None) -> None:
        """Credits summed elsewhere: ``numerator`` / ``denominator`` conversions and, for deals,
        ``revenue`` / ``denominator`` in ``currency``. Nothing is listed for a zero credit."""
        if numerator == 0:
            return
        if currency is None:
            self.leads[(name, denominator)] += numerator
            return
        self.deals[(name, denominator)] += numerator
        self.revenue[(name, currency, denominator)] += revenue

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
        context.prec = PRECISION  # amount x integer numerators, summed: exact
        for conversion in conversions:
            campaigns.credit(model, conversion, conversion.campaign_touches)
            if conversion.deal:
                channels.credit(model, conversion, conversion.sales_touches)
    return _answer(model, lookback_days, campaigns, channels)


def _answer(model: str, lookback_days: int, campaigns: _Tally, channels: _Tally) -> AttributionView:
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


# --- the stored answer ------------------------------------------------------------------

# Every credited touch of every conversion, per tally: 0, a lead conversion (keyed by contact)
# credits campaign touches; 1 and 2, a won deal (keyed by deal_id) credits campaign touches and
# sales touches by channel. For each (tally, conversion), its touches in the window come from
# the primary key of touch_events (workspace, contact, at, source, id; migration 014), already in
# the contract's order (at, source, id; "C" collation: Python's order), so rank and count are
# taken per conversion without a sort.
_RANKED = """
WITH conversions AS (
    SELECT 0 AS tally, contact AS conversion, contact, reached_lead AS at, NULL::numeric AS amount, NULL::text AS currency
    FROM contacts WHERE workspace = $1 AND reached_lead IS NOT NULL
    UNION ALL
    SELECT tally, deal_id, contact, won_at, amount, currency
    FROM deals CROSS JOIN (VALUES (1), (2)) AS tallies (tally) WHERE workspace = $1
), ranked AS (
    SELECT v.tally, v.conversion, v.at, v.amount, v.currency, w.touched, w.name, w.rn, w.n
    FROM conversions v
    CROSS JOIN LATERAL (
        SELECT t.at AS touched, CASE WHEN v.tally = 2 THEN t.channel ELSE t.campaign_id END AS name,
               {rank} AS rn, count(*) OVER () AS n
        FROM touch_events t
        WHERE t.workspace = $1 AND t.contact = v.contact AND t.at BETWEEN v.at - make_interval(secs => $2) AND v.at
          AND CASE WHEN v.tally = 2 THEN t.kind = 'sales' ELSE t.kind = 'marketing' AND t.campaign_id IS NOT NULL END
    ) w
)
"""

# A touch's share as (numerator, denominator), from its rank rn among the n touches.
_SHARES = {
    "first": ("(rn = 1)::int", "1"),
    "last": ("(rn = n)::int", "1"),
    "linear": ("1", "n"),
    "position": ("CASE WHEN n > 2 AND rn > 1 AND rn < n THEN 1 WHEN n > 2 THEN 2 ELSE 1 END",
                 "CASE WHEN n = 1 THEN 1 WHEN n = 2 THEN 2 WHEN rn = 1 OR rn = n THEN 5 ELSE 5 * (n - 2) END"),
}

# Per (tally, name, currency, denominator): the sum of numerators, of numerators x amount,
# and the widest scale of the amounts (zero shares included: the scale is of every deal with
# a touch). The scale is that of the whole tally's currency, combined in Python.
_SUMS = """
SELECT tally, name, currency, ({den})::bigint AS den, sum({num})::bigint AS num, sum(({num}) * amount) AS revenue,
       max(scale(amount)) AS scale, NULL::numeric AS amount, NULL::bigint[] AS ages, NULL::text[] AS names
FROM ranked
GROUP BY 1, 2, 3, 4
"""

# time_decay: each conversion's touch ages in microseconds and names, earliest first, weighed in
# Python (doubles, as the reference does).
_DECAYING = """
SELECT tally, NULL::text AS name, currency, NULL::bigint AS den, NULL::bigint AS num, NULL::numeric AS revenue,
       scale(amount) AS scale, amount,
       array_agg((extract(epoch FROM at - touched) * 1000000)::bigint ORDER BY rn) AS ages,
       array_agg(name ORDER BY rn) AS names
FROM ranked
GROUP BY tally, conversion, at, amount, currency
"""


def _statement(model: str) -> str:
    if model == "time_decay":
        return _RANKED.format(rank="row_number() OVER (ORDER BY t.at, t.source, t.id)") + _DECAYING
    numerator, denominator = _SHARES[model]
    ranks = "rn" in numerator or "rn" in denominator
    rank = "row_number() OVER (ORDER BY t.at, t.source, t.id)" if ranks else "0"
    return _RANKED.format(rank=rank) + _SUMS.format(num=numerator, den=denominator)


_STATEMENTS = {model: _statement(model) for model in MODELS}


async def query(conn: asyncpg.Connection, workspace: str, model: str, lookback_days: int) -> AttributionView:
    rows = await conn.fetch(_STATEMENTS[model], workspace, float(lookback_days * 86_400))
    campaigns, channels = _Tally(), _Tally()
    with localcontext() as context:
        context.prec = PRECISION  # amount x integer numerators, summed: exact
        for row in rows:
            tally = channels if row["tally"] == 2 else campaigns
            currency = row["currency"]
            if currency is not None:
                tally.scale[currency] = max(tally.scale[currency], row["scale"])
            if row["ages"] is None:
                tally.add(row["name"], row["num"], row["den"], currency, row["revenue"])
                continue
            amount = row["amount"]
            for name, k in zip(row["names"], decay_numerators(row["ages"])):
                if k == 0:
                    continue
                if currency is None:
                    tally.leads[(name, DECAY_UNIT)] += k
                else:
                    tally.deals[(name, DECAY_UNIT)] += k
                    tally.revenue[(name, currency, DECAY_UNIT)] += k * amount
    return _answer(model, lookback_days, campaigns, channels)
