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
from events.catalog import Envelope
from events.log import LoggedEvent
from projections import contacts as contact_model
from projections import deals as deal_model
from projections.deals import columns
from projections.ladder import utc
from projections.numbers import ceil_div, exact_decimal, micros, ratio, scale_of, utc_midnight
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
    metric: str
    target: str
    currency: str | None
    period_start: dt.date
    period_end: dt.date
    actual: str
    attainment: float
    expected_by_now: str
    projected: str | None
    on_track: bool
    derived: Derived | None = None


class GoalsView(msgspec.Struct):
    as_of: dt.datetime
    goals: list[GoalView]


def elapsed_fraction(g: Goal, as_of: dt.datetime) -> Fraction:
    start, end = g.bounds
    return min(Fraction(1), max(Fraction(0), Fraction(micros(as_of - start), micros(end - start))))


def derived(target: Decimal, actual: Decimal, totals: Totals) -> Derived:
    avg = Fraction(totals.won_sum) / totals.won_count if totals.won_count else None
    remaining = max(Fraction(0), Fraction(target) - Fraction(actual))
    deals_needed = ceil_div(remaining, avg) if avg else None
    # win_rate = customers / opportunities; lead_to_opportunity = opportunities / leads.
    opportunities_needed = (
        ceil_div(deals_needed * Fraction(totals.opportunities), Fraction(totals.customers))
        if deals_needed is not None and totals.customers and totals.opportunities
        else None
    )
    leads_needed = (
        ceil_div(opportunities_needed * Fraction(totals.leads), Fraction(totals.opportunities))
        if opportunities_needed is not None and totals.opportunities and totals.leads
        else None
    )
    return Derived(
        avg_deal=None if avg is None else decimal_text(exact_decimal(avg, scale_of(totals.won_sum))),
        win_rate=ratio(totals.customers, totals.opportunities),
        lead_to_opportunity=ratio(totals.opportunities, totals.leads),
        deals_needed=deals_needed,
        opportunities_needed=opportunities_needed,
        leads_needed=leads_needed,
    )


def view(g: Goal, actual: Decimal, as_of: dt.datetime, totals: Totals | None) -> GoalView:
    f = elapsed_fraction(g, as_of)
    expected = Fraction(g.target) * f
    return GoalView(
        goal_id=g.goal_id,
        metric=g.metric,
        target=decimal_text(g.target),
        currency=g.currency,
        period_start=g.period_start,
        period_end=g.period_end,
        actual=decimal_text(actual),
        attainment=ratio(actual, g.target),  # type: ignore[arg-type]  # target > 0
        expected_by_now=decimal_text(exact_decimal(expected, scale_of(g.target))),
        projected=None if f == 0 else decimal_text(exact_decimal(Fraction(actual) / f, scale_of(actual))),
        on_track=Fraction(actual) >= expected,
        derived=None if totals is None else derived(g.target, actual, totals),
    )


def latest_goals(events: list[Envelope]) -> dict[str, Goal]:
    goals: dict[str, Goal] = {}
    for event in events:
        if isinstance(event, c.GoalSet):
            g = goal(event)
            if g.goal_id not in goals or g.key > goals[g.goal_id].key:
                goals[g.goal_id] = g
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
            actual = sum(won, Decimal(0)) - sum(back, Decimal(0))
            in_currency = [d.amount for d in deals.values() if d.currency == g.currency]
            totals = Totals(
                won_sum=sum(in_currency, Decimal(0)),
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


async def _actual(conn: asyncpg.Connection, workspace: str, g: Goal) -> Decimal:
    start, end = g.bounds
    if g.metric == "revenue":
        row = await conn.fetchrow(
            "SELECT (SELECT coalesce(sum(amount), 0) FROM deals WHERE workspace = $1 AND currency = $2"
            "        AND won_at >= $3 AND won_at < $4)"
            "     - (SELECT coalesce(sum(amount), 0) FROM refunds WHERE workspace = $1 AND currency = $2"
            "        AND at >= $3 AND at < $4) AS actual",
            workspace, g.currency, start, end,
        )
        return row["actual"]
    if g.metric == "deals_won":
        sql = "SELECT count(*) FROM deals WHERE workspace = $1 AND won_at >= $2 AND won_at < $3"
        bounds: tuple = (start, end)
    elif g.metric == "leads":
        sql = "SELECT count(*) FROM contacts WHERE workspace = $1 AND reached_lead >= $2 AND reached_lead < $3"
        bounds = (start, end)
    else:
        sql = ("SELECT coalesce(sum(conversations), 0) FROM conversation_days"
               " WHERE workspace = $1 AND day >= $2 AND day < $3")
        bounds = (g.period_start, g.period_end)
    return Decimal(await conn.fetchval(sql, workspace, *bounds))


async def _stage_counts(conn: asyncpg.Connection, workspace: str) -> tuple[int, int, int]:
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM contacts WHERE workspace = $1 AND reached_lead IS NOT NULL) AS leads,"
        " (SELECT count(*) FROM contacts WHERE workspace = $1 AND reached_opportunity IS NOT NULL) AS opportunities,"
        " (SELECT count(*) FROM contacts WHERE workspace = $1 AND reached_customer IS NOT NULL) AS customers",
        workspace,
    )
    return row["leads"], row["opportunities"], row["customers"]


async def query(conn: asyncpg.Connection, workspace: str, as_of: dt.datetime) -> GoalsView:
    rows = await conn.fetch(
        "SELECT goal_id, metric, target, currency, period_start, period_end, set_at, source, id"
        " FROM goals WHERE workspace = $1 ORDER BY goal_id COLLATE \"C\"",
        workspace,
    )
    stages: tuple[int, int, int] | None = None
    answers = []
    for row in rows:
        g = Goal(**dict(row))
        totals = None
        if g.metric == "revenue":
            stages = stages or await _stage_counts(conn, workspace)
            won = await conn.fetchrow(
                "SELECT coalesce(sum(amount), 0) AS total, count(*) AS n FROM deals"
                " WHERE workspace = $1 AND currency = $2",
                workspace, g.currency,
            )
            totals = Totals(won["total"], won["n"], *stages)
        answers.append(view(g, await _actual(conn, workspace, g), as_of, totals))
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

    async def apply(self, conn: asyncpg.Connection, batch: list[LoggedEvent]) -> None:
        goals: dict[tuple[str, str], Goal] = {}
        days: Counter[tuple[str, dt.date]] = Counter()
        for logged in batch:
            event = logged.event
            if isinstance(event, c.GoalSet):
                g = goal(event)
                known = goals.get((logged.workspace, g.goal_id))
                if known is None or g.key > known.key:
                    goals[(logged.workspace, g.goal_id)] = g
            elif isinstance(event, c.ConversationHeld):
                days[(logged.workspace, utc(event.time).date())] += 1
        if goals:
            rows = [(ws, g.goal_id, g.set_at, g.source, g.id, g.metric, g.target, g.currency, g.period_start,
                     g.period_end) for (ws, _), g in sorted(goals.items())]
            await conn.execute(_UPSERT_GOALS, *columns(rows, 10))
        if days:
            await conn.execute(_COUNT_CONVERSATIONS, *columns([(ws, d, n) for (ws, d), n in sorted(days.items())], 3))
