"""The funnel (CONTRACT.md section 5, "Funnel"), answered from the contact read model.

The cohort is the contacts whose reached[aware] lies in [start, end), narrowed by
``campaign`` to those whose earliest marketing touch naming a campaign names that one.
Per stage: how many reached it, the conversion from the previous stage, and the median
time from the previous stage. The stored answer reads one covering index of ``contacts``.
"""

from __future__ import annotations

import datetime as dt
from fractions import Fraction

import asyncpg
import msgspec

from events.catalog import Envelope
from projections import contacts as contact_model
from projections.ladder import STAGES
from projections.numbers import hours, median, micros, ratio


class FunnelStage(msgspec.Struct):
    stage: str
    contacts: int
    conversion: float | None
    median_hours_from_previous: float | None


class FunnelView(msgspec.Struct):
    stages: list[FunnelStage]


def view(counts: list[int], medians: list[Fraction | None]) -> FunnelView:
    """From per-stage counts and median microseconds from the previous stage (None for aware)."""
    return FunnelView(
        [
            FunnelStage(
                stage=stage,
                contacts=counts[rank],
                conversion=None if rank == 0 else ratio(counts[rank], counts[rank - 1]),
                median_hours_from_previous=None if rank == 0 else hours(medians[rank]),
            )
            for rank, stage in enumerate(STAGES)
        ]
    )


def in_cohort(reached_aware: dt.datetime | None, start: dt.datetime | None, end: dt.datetime | None) -> bool:
    if reached_aware is None:
        return False
    return (start is None or reached_aware >= start) and (end is None or reached_aware < end)


def reference(
    events: list[Envelope],
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    campaign: str | None = None,
) -> FunnelView:
    """/funnel from a set of de-duplicated events: the definition in code."""
    cohort = [
        state
        for state in contact_model.fold(events).values()
        if in_cohort(state.reached.get("aware"), start, end)
        and (campaign is None or (state.first_campaign is not None and state.first_campaign.value == campaign))
    ]
    counts = [sum(1 for s in cohort if stage in s.reached) for stage in STAGES]
    medians: list[Fraction | None] = [None] + [
        median(micros(s.reached[stage] - s.reached[previous]) for s in cohort if stage in s.reached)
        for previous, stage in zip(STAGES, STAGES[1:])
    ]
    return view(counts, medians)


def _median_sql(previous: str, stage: str) -> str:
    # Whole microseconds as double precision: exact below 2^53 µs (285 years), and the
    # mean of the middle two is a half-integer, exact too.
    return (
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY"
        f" (extract(epoch FROM reached_{stage} - reached_{previous}) * 1000000)::float8)"
    )


_FUNNEL = f"""
SELECT {", ".join(f"count(reached_{stage})" for stage in STAGES)},
       {", ".join(_median_sql(previous, stage) for previous, stage in zip(STAGES, STAGES[1:]))}
FROM contacts
WHERE workspace = $1 AND reached_aware IS NOT NULL"""


async def query(
    conn: asyncpg.Connection,
    workspace: str,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    campaign: str | None = None,
) -> FunnelView:
    # Only the filters given, so each shape of query gets its own plan on the right index.
    sql, args = _FUNNEL, [workspace]
    for condition, value in (("reached_aware >= ", start), ("reached_aware < ", end), ("first_campaign = ", campaign)):
        if value is not None:
            args.append(value)
            sql += f" AND {condition}${len(args)}"
    row = await conn.fetchrow(sql, *args)
    values = list(row.values())
    counts = values[: len(STAGES)]
    medians = [None] + [None if m is None else Fraction(m) for m in values[len(STAGES) :]]
    return view(counts, medians)
