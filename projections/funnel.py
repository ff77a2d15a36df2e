"""The funnel (CONTRACT.md section 5, "Funnel"), answered from the contact read model.

The cohort is the contacts whose reached[aware] lies in [start, end), narrowed by
``campaign`` to those whose earliest marketing touch naming a campaign names that one.
Per stage: how many reached it, the conversion from the previous stage, and the median
time from the previous stage.

Stored: ``funnel_gaps`` counts, per workspace and stage, the contacts that reached it by bucket
of their gap from the previous stage (stage 0, aware, has one bucket), kept in the contact
projection's transaction (``store_stage_changes``). The whole-workspace funnel reads those
counters to find the bucket(s) holding the middle one or two gaps, then only those gaps, exactly,
from an expression index on ``contacts`` (migration 008). A funnel narrowed by ``from``, ``to``
or ``campaign`` is aggregated over the cohort from one covering index of ``contacts``.
"""

from __future__ import annotations

import datetime as dt
from bisect import bisect_right
from collections import Counter
from fractions import Fraction
from itertools import accumulate
from typing import Iterable

import asyncpg
import msgspec

from events.catalog import Envelope
from projections import contacts as contact_model
from projections.ladder import STAGES, Stage
from projections.numbers import hours, median, micros, ratio


class FunnelStage(msgspec.Struct):
    stage: Stage
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
    # The middle two gaps, in whole microseconds, from one sort: the lower at 0.5, the upper at a
    # fraction just past it (PostgreSQL takes the row at ceil(fraction x rows), and 1e-15 x rows
    # is never lost in that product). Their mean is taken exactly, as the stored path takes it:
    # percentile_cont works in double precision, whose halves end at 2^52 µs (143 years), and
    # event times span 8,000 (an outside audit saw the two paths differ in the last place).
    return (
        "percentile_disc(ARRAY[0.5, 0.5 + 1e-15]) WITHIN GROUP (ORDER BY"
        f" (extract(epoch FROM reached_{stage} - reached_{previous}) * 1000000)::bigint)"
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
    *,
    stored_gaps: bool = True,
) -> FunnelView:
    """``stored_gaps=False`` for a snapshot schema, which may predate ``funnel_gaps``."""
    if stored_gaps and start is None and end is None and campaign is None:
        return await _whole_workspace(conn, workspace)
    # Only the filters given, so each shape of query gets its own plan on the right index.
    sql, args = _FUNNEL, [workspace]
    for condition, value in (("reached_aware >= ", start), ("reached_aware < ", end), ("first_campaign = ", campaign)):
        if value is not None:
            args.append(value)
            sql += f" AND {condition}${len(args)}"
    row = await conn.fetchrow(sql, *args)
    values = list(row.values())
    counts = values[: len(STAGES)]
    medians = [None] + [None if middle is None else Fraction(sum(middle), 2) for middle in values[len(STAGES) :]]
    return view(counts, medians)


# --- stored: contacts per stage and per bucket of the gap from the previous stage --------


def gap_bucket(gap_us: int) -> int:
    """A gap in microseconds (>= 0) to its bucket: exact below 32 µs, then 16 buckets per power
    of two (each as wide as 1/16 of its lower bound), so that a workspace has a few hundred
    buckets a stage whatever its time scale, and a bucket holds few contacts. Increasing with
    the gap. Migration 008 computes the same in SQL."""
    shift = max(0, gap_us.bit_length() - 5)
    return (shift << 5) + (gap_us >> shift)


def bucket_bounds(bucket: int) -> tuple[dt.timedelta, dt.timedelta]:
    """The gaps [low, high) of a bucket."""
    shift, mantissa = bucket >> 5, bucket & 31
    return dt.timedelta(microseconds=mantissa << shift), dt.timedelta(microseconds=(mantissa + 1) << shift)


def stage_keys(reached: dict[str, dt.datetime]) -> list[tuple[int, int]]:
    """The (stage rank, gap bucket) counters a contact with these reached times counts in.
    Reaching a stage means reaching every lower one, so the previous stage is always there."""
    keys = [(0, 0)] if "aware" in reached else []
    for rank in range(1, len(STAGES)):
        moment = reached.get(STAGES[rank])
        if moment is not None:
            keys.append((rank, gap_bucket(micros(moment - reached[STAGES[rank - 1]]))))
    return keys


_COUNT_GAPS = """
INSERT INTO funnel_gaps AS known (workspace, stage, bucket, contacts)
SELECT * FROM unnest($1::text[], $2::smallint[], $3::bigint[], $4::bigint[])
ON CONFLICT (workspace, stage, bucket) DO UPDATE SET contacts = known.contacts + excluded.contacts
"""

_DROP_EMPTY_GAPS = """
DELETE FROM funnel_gaps WHERE contacts = 0
  AND (workspace, stage, bucket) IN (SELECT * FROM unnest($1::text[], $2::smallint[], $3::bigint[]))
"""


async def store_stage_changes(
    conn: asyncpg.Connection, changes: Iterable[tuple[str, dict[str, dt.datetime], dict[str, dt.datetime]]]
) -> None:
    """Move the ``funnel_gaps`` counters of contacts whose reached times changed, given
    (workspace, reached before, reached after) for each contact of a batch; in the caller's
    transaction. Counters that fall to zero are removed, so the table is a function of the
    contacts' states alone (what a replay builds)."""
    delta: Counter[tuple[str, int, int]] = Counter()
    for workspace, before, after in changes:
        if before == after:
            continue
        for rank, bucket in stage_keys(before):
            delta[(workspace, rank, bucket)] -= 1
        for rank, bucket in stage_keys(after):
            delta[(workspace, rank, bucket)] += 1
    rows = sorted((key, n) for key, n in delta.items() if n)
    if not rows:
        return
    keys = [key for key, _ in rows]
    workspaces, ranks, buckets = (list(column) for column in zip(*keys))
    await conn.execute(_COUNT_GAPS, workspaces, ranks, buckets, [n for _, n in rows])
    if any(n < 0 for _, n in rows):
        await conn.execute(_DROP_EMPTY_GAPS, workspaces, ranks, buckets)


# Each stage's counters in bucket order (one row a stage).
_COUNTERS = """
SELECT stage, array_agg(bucket ORDER BY bucket) AS buckets, array_agg(contacts ORDER BY bucket) AS counts
FROM funnel_gaps WHERE workspace = $1 GROUP BY stage"""


def middle_span(buckets: list[int], counts: list[int]) -> tuple[int, int, int, int]:
    """(count, first bucket, last bucket, gaps below the first) for the bucket(s) holding the
    middle one or two gaps, at 0-based positions (count - 1) // 2 and count // 2."""
    # Running totals and two bisections (both in C): a funnel request does this for every stage,
    # over a few hundred buckets each, and a Python loop over them cost ~20 µs a stage.
    through = list(accumulate(counts))  # gaps in the buckets up to and including each
    n = through[-1]
    assert n > 0
    first = bisect_right(through, (n - 1) // 2)
    last = bisect_right(through, n // 2, first)
    return n, buckets[first], buckets[last], through[first - 1] if first else 0


def _gap_sql(rank: int, first: int) -> str:
    stage, previous = STAGES[rank], STAGES[rank - 1]
    gap = f"(reached_{stage} - reached_{previous})"
    return (
        f"(SELECT {rank} AS stage, {gap} AS gap FROM contacts"
        f" WHERE workspace = $1 AND reached_{stage} IS NOT NULL"
        f" AND {gap} >= ${first}::interval AND {gap} < ${first + 1}::interval"
        f" ORDER BY {gap} OFFSET ${first + 2} LIMIT ${first + 3})"
    )


async def _whole_workspace(conn: asyncpg.Connection, workspace: str) -> FunnelView:
    counts = [0] * len(STAGES)
    spans: dict[int, tuple[int, int, int]] = {}  # rank -> (first bucket, last bucket, gaps below the first)
    for row in await conn.fetch(_COUNTERS, workspace):
        n, first_bucket, last_bucket, below = middle_span(row["buckets"], row["counts"])
        counts[row["stage"]] = n
        spans[row["stage"]] = (first_bucket, last_bucket, below)
    parts, args = [], [workspace]
    for rank in range(1, len(STAGES)):
        if rank not in spans:
            continue
        first_bucket, last_bucket, below = spans[rank]
        n = counts[rank]
        parts.append(_gap_sql(rank, len(args) + 1))
        # 0-based positions of the middle one or two: (n - 1) // 2 and n // 2.
        args += [bucket_bounds(first_bucket)[0], bucket_bounds(last_bucket)[1], (n - 1) // 2 - below,
                 n // 2 - (n - 1) // 2 + 1]
    middles: dict[int, list[int]] = {}
    if parts:
        for row in await conn.fetch(" UNION ALL ".join(parts), *args):
            middles.setdefault(row["stage"], []).append(micros(row["gap"]))
    medians: list[Fraction | None] = [None] + [
        Fraction(sum(middles[rank]), len(middles[rank])) if rank in middles else None
        for rank in range(1, len(STAGES))
    ]
    return view(counts, medians)
