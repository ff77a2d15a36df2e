"""The funnel's stored counters (funnel_gaps, migration 008) on real servers: the projector keeps
them equal to what the contacts' reached times give, whatever order events arrive in, and the
migration's SQL puts a gap in the same bucket as the Python does."""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from importlib import resources

import asyncpg

from projections import funnel
from projections.ladder import STAGES
from tests.support import event


def fetch(stack, query: str, *args, setup: str | None = None):
    async def run():
        conn = await asyncpg.connect(stack.servers.database_url)
        try:
            if setup:
                await conn.execute(setup)
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def test_migration_sql_buckets_gaps_as_python_does(stack):
    migration = resources.files("services.store.migrations").joinpath("008_funnel_gaps.sql").read_text()
    function = re.search(r"CREATE FUNCTION pg_temp\.gap_bucket.*?\$\$;", migration, re.S)[0]
    gaps = sorted({0, 1, 31, 32, 33, 63, 64, 65, 3_600_000_000, 86_400_000_000 * 90 + 7}
                  | {2**k + d for k in range(5, 50) for d in (-1, 0, 1)}
                  | {random.Random(k).randrange(10**13) for k in range(200)})
    rows = fetch(stack, "SELECT g, pg_temp.gap_bucket(t, t + g * interval '1 microsecond') AS bucket"
                        " FROM unnest($1::bigint[]) AS g, (SELECT timestamptz '2026-01-01T00:00:00Z' AS t) AS s",
                 gaps, setup=function)
    assert {row["g"]: row["bucket"] for row in rows} == {g: funnel.gap_bucket(g) for g in gaps}


def at(day: int, hour: int) -> str:
    return f"2026-11-{day:02d}T{hour:02d}:00:00Z"


def test_counters_equal_the_contacts_reached_times_when_earlier_events_arrive_later(stack):
    ws, auth = stack.new_workspace()
    rng = random.Random(5)
    bodies = []
    for n in range(40):
        contact = f"c{n}"
        day = 1 + n % 20
        bodies.append(event("marketing.engaged", contact, at(day + 5, 9), channel="web", action="view", id=f"v{n}"))
        bodies.append(event("marketing.engaged", contact, at(day + 6, 12), channel="web", action="like", id=f"l{n}"))
        if n % 2:
            bodies.append(event("marketing.lead.captured", contact, at(day + 7, n % 24), channel="form", id=f"c{n}"))
        if n % 3 == 0:  # arrives last, earlier than everything: every gap of the contact moves
            bodies.append(event("marketing.engaged", contact, at(day, 8), channel="web", action="share", id=f"s{n}"))
    early, late = bodies[: len(bodies) // 2], bodies[len(bodies) // 2:]
    rng.shuffle(late)
    last = 0
    for chunk in (early, late[:10], late[10:]):
        last = max(last, stack.ingest(ws, auth, chunk))
        assert stack.get(f"/v1/workspaces/{ws}/touches", auth, min_seq=last).status_code == 200

    contacts = fetch(stack, f"SELECT {', '.join(f'reached_{s}' for s in STAGES)} FROM contacts WHERE workspace = $1", ws)
    expected = Counter(key for row in contacts
                       for key in funnel.stage_keys({s: row[f"reached_{s}"] for s in STAGES if row[f"reached_{s}"]}))
    stored = fetch(stack, "SELECT stage, bucket, contacts FROM funnel_gaps WHERE workspace = $1", ws)
    assert {(row["stage"], row["bucket"]): row["contacts"] for row in stored} == dict(expected)
