"""Goals (CONTRACT.md section 5, "Goals"): actual in period, attainment, pacing and, for
revenue goals, the reverse funnel of what it still takes.

The latest ``goal.set`` of a goal_id (by time, source, id) defines the goal. ``actual``
counts events whose time lies in [period_start, period_end) (UTC days, end exclusive).
Stored: the goals, conversations per UTC day; deals, refunds and contacts come from their
own read models, each read through an index on time.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from decimal import Decimal
from fractions import Fraction

import asyncpg
import msgspec

from events import catalog as c
from events.catalog import Envelope, GoalMetric
from events.log import LoggedEvent
from projections.batching import prepared
from projections import contacts as contact_model
from projections import deals as deal_model
from projections.deals import columns
from projections.ladder import STAGE_RANK, keep_latest, utc
from projections.numbers import EXACT, ceil_div, exact_decimal, exact_sum, micros, ratio, scale_of, utc_midnight
from projections.contacts import decimal_text


class Goal(msgspec.Struct, frozen=True):
    goal_id: str
    metric: str
    target: Decimal
    currency: str | None
    period_start: dt.date
    period_end: dt.date
    set_at: dt.datetime
    source: str
    id: str

    @property
    def key(self) -> tuple[dt.datetime, str, str]:
        return (self.set_at, self.source, self.id)

    @property
    def bounds(self) -> tuple[dt.datetime, dt.datetime]:
        return utc_midnight(self.period_start), utc_midnight(self.period_end)


def goal(event: Envelope) -> Goal:
    d = event.data
    return Goal(d.goal_id, d.metric, d.target, d.currency, d.period_start, d.period_end, utc(event.time),
                event.source, event.id)


class Totals(msgspec.Struct):
    """All-time facts behind ``derived``: won deals in the goal's currency, contacts per stage."""

    won_sum: Decimal
    won_count: int
    leads: int
    opportunities: int
    customers: int


# --- the answer ------------------------------------------------------------------------


class Derived(msgspec.Struct):
    avg_deal: str | None
    win_rate: float | None
    lead_to_opportunity: float | None
    deals_needed: int | None
    opportunities_needed: int | None
    leads_needed: int | None


class GoalView(msgspec.Struct):
    goal_id: str
    metric: GoalMetric
    target: str
    currency: str | None
    period_start: dt.date
    period_end: dt.date
    actual: str
    attainment: float
    expected_by_now: str
    projected: str | None
    on_track: bool
    derived: Derived | None  # null but for a revenue goal


class GoalsView(msgspec.Struct):
    as_of: dt.datetime
    goals: list[GoalView]


# Section 5's pacing and reverse funnel, here once: the goals view and the goal-at-risk rule
# (services/rules/logic.py, with its own running totals) both answer with them.


def elapsed_fraction(period_start: dt.date, period_end: dt.date, as_of: dt.datetime) -> Fraction:
    """f: the elapsed fraction of [period_start, period_end) at ``as_of``, clamped to [0, 1]."""
    start, end = utc_midnight(period_start), utc_midnight(period_end)
    if as_of <= start:
        return Fraction(0)
    if as_of >= end:
        return Fraction(1)
    return Fraction(micros(as_of - start), micros(end - start))


def remaining(target: Decimal, actual: Decimal) -> Fraction:
    return max(Fraction(0), Fraction(target) - Fraction(actual))


def average_deal(won_sum: Decimal, won_count: int) -> Fraction | None:
    return Fraction(won_sum) / won_count if won_count else None


def deals_needed(remaining: Fraction, avg_deal: Fraction | None) -> int | None:
    """⌈remaining / avg_deal⌉; None while avg_deal is unknown or 0."""
    return ceil_div(remaining, avg_deal) if avg_deal else None


def funnel_needed(deals: int | None, leads: int, opportunities: int, customers: int) -> tuple[int | None, int | None]:
    """(opportunities_needed, leads_needed) for ``deals`` more won deals, at the all-time rates
    win_rate = customers / opportunities and lead_to_opportunity = opportunities / leads."""
    opportunities_needed = (
        ceil_div(deals * Fraction(opportunities), Fraction(customers))
        if deals is not None and customers and opportunities
        else None
    )
    leads_needed = (
        ceil_div(opportunities_needed * Fraction(leads), Fraction(opportunities))
        if opportunities_needed is not None and opportunities and leads
        else None
    )
    return opportunities_needed, leads_needed


def derived(target: Decimal, actual: Decimal, totals: Totals) -> Derived:
    avg = average_deal(totals.won_sum, totals.won_count)
    deals = deals_needed(remaining(target, actual), avg)
    opportunities_needed, leads_needed = funnel_needed(deals, totals.leads, totals.opportunities, totals.customers)
    return Derived(
        avg_deal=None if avg is None else decimal_text(exact_decimal(avg, scale_of(totals.won_sum))),
        win_rate=ratio(totals.customers, totals.opportunities),
        lead_to_opportunity=ratio(totals.opportunities, totals.leads),
        deals_needed=deals,
        opportunities_needed=opportunities_needed,
        leads_needed=leads_needed,
    )


def view(g: Goal, actual: Decimal, as_of: dt.datetime, totals: Totals | None) -> GoalView:
    f = elapsed_fraction(g.period_start, g.period_end, as_of)
    done = Fraction(actual)
    expected = Fraction(g.target) * f
    return GoalView(
        goal_id=g.goal_id,
        metric=g.metric,
        target=decimal_text(g.target),
        currency=g.currency if g.metric == "revenue" else None,  # sent with another metric, it means nothing
        period_start=g.period_start,
        period_end=g.period_end,
        actual=decimal_text(actual),
        attainment=ratio(actual, g.target),  # type: ignore[arg-type]  # target > 0
        expected_by_now=decimal_text(exact_decimal(expected, scale_of(g.target))),
        projected=None if f == 0 else decimal_text(exact_decimal(done / f, scale_of(actual))),
        on_track=done >= expected,
        derived=None if totals is None else derived(g.target, actual, totals),
    )


def latest_goals(events: list[Envelope]) -> dict[str, Goal]:
    goals: dict[str, Goal] = {}
    for event in events:
        if isinstance(event, c.GoalSet):
            keep_latest(goals, event.data.goal_id, goal(event))
    return goals


def reference(events: list[Envelope], as_of: dt.datetime) -> GoalsView:
    """/goals from a set of de-duplicated events: the definition in code."""
    deals, refunds = deal_model.fold(events)
    states = contact_model.fold(events).values()
    conversations = [utc(e.time) for e in events if isinstance(e, c.ConversationHeld)]
    answers = []
    for g in sorted(latest_goals(events).values(), key=lambda g: g.goal_id):
        start, end = g.bounds
        within = lambda moment: start <= moment < end  # noqa: E731
        totals = None
        if g.metric == "revenue":
            won = [d.amount for d in deals.values() if d.currency == g.currency and within(d.won_at)]
            back = [r.amount for r in refunds if r.currency == g.currency and within(r.at)]
            actual = EXACT.subtract(exact_sum(won), exact_sum(back))
            in_currency = [d.amount for d in deals.values() if d.currency == g.currency]
            totals = Totals(
                won_sum=exact_sum(in_currency),
                won_count=len(in_currency),
                leads=sum(1 for s in states if "lead" in s.reached),
                opportunities=sum(1 for s in states if "opportunity" in s.reached),
                customers=sum(1 for s in states if "customer" in s.reached),
            )
        elif g.metric == "deals_won":
            actual = Decimal(sum(1 for d in deals.values() if within(d.won_at)))
        elif g.metric == "leads":
            actual = Decimal(sum(1 for s in states if "lead" in s.reached and within(s.reached["lead"])))
        else:
            actual = Decimal(sum(1 for moment in conversations if within(moment)))
        answers.append(view(g, actual, as_of, totals))
    return GoalsView(as_of, answers)


# Every goal with its actual and, for revenue goals, the all-time totals behind ``derived``, in
# one statement: each CASE branch's subquery runs only for goals of its metric, each reads an
# index on time (or the per-day conversation counts); contacts per stage come from the funnel's
# counters (projections/funnel.py), or are counted in a snapshot that may predate them.
_GOALS = """
SELECT g.goal_id, g.metric, g.target, g.currency, g.period_start, g.period_end, g.set_at, g.source, g.id,
    CASE g.metric
        WHEN 'revenue' THEN
            (SELECT coalesce(sum(amount), 0) FROM deals
             WHERE workspace = $1 AND currency = g.currency AND won_at >= b.low AND won_at < b.high)
          - (SELECT coalesce(sum(amount), 0) FROM refunds
             WHERE workspace = $1 AND currency = g.currency AND at >= b.low AND at < b.high)
        WHEN 'deals_won' THEN
            (SELECT count(*) FROM deals WHERE workspace = $1 AND won_at >= b.low AND won_at < b.high)
        WHEN 'leads' THEN
            (SELECT count(*) FROM contacts WHERE workspace = $1 AND reached_lead >= b.low AND reached_lead < b.high)
        ELSE
            (SELECT coalesce(sum(conversations), 0) FROM conversation_days
             WHERE workspace = $1 AND day >= g.period_start AND day < g.period_end)
    END AS actual,
    w.won_sum, w.won_count,
    CASE WHEN g.metric = 'revenue' THEN ({leads}) END AS leads,
    CASE WHEN g.metric = 'revenue' THEN ({opportunities}) END AS opportunities,
    CASE WHEN g.metric = 'revenue' THEN ({customers}) END AS customers
FROM goals g
CROSS JOIN LATERAL (SELECT g.period_start::timestamp AT TIME ZONE 'UTC' AS low,
                           g.period_end::timestamp AT TIME ZONE 'UTC' AS high) AS b
LEFT JOIN LATERAL (SELECT coalesce(sum(amount), 0) AS won_sum, count(*) AS won_count FROM deals
                   WHERE g.metric = 'revenue' AND workspace = $1 AND currency = g.currency) AS w ON true
WHERE g.workspace = $1
ORDER BY g.goal_id COLLATE "C"
"""

_STORED_STAGE_COUNT = "SELECT coalesce(sum(contacts), 0)::bigint FROM funnel_gaps WHERE workspace = $1 AND stage = {rank}"
_COUNTED_STAGE = "SELECT count(*) FROM contacts WHERE workspace = $1 AND reached_{stage} IS NOT NULL"


def _goals_sql(stage_count: str) -> str:
    return _GOALS.format(**{
        column: stage_count.format(stage=stage, rank=STAGE_RANK[stage])
        for column, stage in (("leads", "lead"), ("opportunities", "opportunity"), ("customers", "customer"))
    })


_GOALS_STORED, _GOALS_COUNTED = _goals_sql(_STORED_STAGE_COUNT), _goals_sql(_COUNTED_STAGE)
_GOAL_FIELDS = Goal.__struct_fields__


async def query(
    conn: asyncpg.Connection, workspace: str, as_of: dt.datetime | None = None, *, stored_counts: bool = True
) -> GoalsView:
    """Each goal at ``as_of`` (default now). ``stored_counts=False`` for a snapshot schema, which may
    predate ``funnel_gaps``."""
    as_of = as_of or dt.datetime.now(dt.timezone.utc)
    answers = []
    for row in await conn.fetch(_GOALS_STORED if stored_counts else _GOALS_COUNTED, workspace):
        g = Goal(*(row[name] for name in _GOAL_FIELDS))
        totals = None
        if g.metric == "revenue":
            totals = Totals(row["won_sum"], row["won_count"], row["leads"], row["opportunities"], row["customers"])
        answers.append(view(g, Decimal(row["actual"]), as_of, totals))
    return GoalsView(as_of, answers)


# --- storage ---------------------------------------------------------------------------

_UPSERT_GOALS = """
INSERT INTO goals AS known (workspace, goal_id, set_at, source, id, metric, target, currency, period_start, period_end)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::numeric[],
                     $8::text[], $9::date[], $10::date[])
ON CONFLICT (workspace, goal_id) DO UPDATE SET
    set_at = excluded.set_at, source = excluded.source, id = excluded.id, metric = excluded.metric,
    target = excluded.target, currency = excluded.currency,
    period_start = excluded.period_start, period_end = excluded.period_end
WHERE (excluded.set_at, excluded.source, excluded.id) > (known.set_at, known.source, known.id)
"""

_COUNT_CONVERSATIONS = """
INSERT INTO conversation_days AS known (workspace, day, conversations)
SELECT * FROM unnest($1::text[], $2::date[], $3::bigint[])
ON CONFLICT (workspace, day) DO UPDATE SET conversations = known.conversations + excluded.conversations
"""


class GoalsProjection:
    name = "goals"
    tables = ("goals", "conversation_days")
    before_lock = False  # keeps a goal's latest setting against the one the batch before wrote

    def prepare(self, batch: list[LoggedEvent]) -> tuple[dict[tuple[str, str], Goal], Counter[tuple[str, dt.date]]]:
        """The latest goal.set of each goal in the batch, and conversations per (workspace, UTC day)."""
        goals: dict[tuple[str, str], Goal] = {}
        days: Counter[tuple[str, dt.date]] = Counter()
        for logged in batch:
            event = logged.event
            if isinstance(event, c.GoalSet):
                keep_latest(goals, (logged.workspace, event.data.goal_id), goal(event))
            elif isinstance(event, c.ConversationHeld):
                days[(logged.workspace, utc(event.time).date())] += 1
        return goals, days

    async def apply(self, conn: asyncpg.Connection, batch: list[LoggedEvent]) -> None:
        goals, days = prepared(self, batch)
        if goals:
            rows = [(ws, g.goal_id, g.set_at, g.source, g.id, g.metric, g.target, g.currency, g.period_start,
                     g.period_end) for (ws, _), g in sorted(goals.items())]
            await conn.execute(_UPSERT_GOALS, *columns(rows, 10))
        if days:
            await conn.execute(_COUNT_CONVERSATIONS, *columns([(ws, d, n) for (ws, d), n in sorted(days.items())], 3))
