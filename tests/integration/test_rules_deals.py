"""The rules worker keeps each deal's earliest applied deal.won in PostgreSQL (``rules_deals``), so
its goal facts move a deal to an earlier report that comes in a later batch (CONTRACT.md section 5,
"Deals"; section 6: it decides with what it has applied so far); and each follow-up's contact
(``rules_followups``), for a dismissal filed under another contact."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from decimal import Decimal
from importlib import resources

import asyncpg

from events.commands import ALL_RULES
from events.log import LoggedEvent
from events.validation import parse_event
from services.rules import logic
from services.rules.worker import RulesWorker, load_state
from tests.support import connected, event

WS = "rules-deals-it"
# Far above any sequence the shared log reaches: first_copies indexes these keys under them.
SEQ = 10**12


def logged(n: int, body: dict) -> LoggedEvent:
    raw = json.dumps(body).encode()
    return LoggedEvent(SEQ + n, WS, dt.datetime.now(dt.timezone.utc), parse_event(raw), raw)


def won(id: str, time: str, amount: str, subject: str = "dana") -> dict:
    return event("sales.deal.won", subject, time, id=id, source="/r1", deal_id="dX", amount=amount, currency="EUR")


def test_an_earlier_report_in_a_later_batch_moves_the_deal_in_the_stored_goal_facts(servers):
    async def run() -> tuple[logic.RulesState, logic.RulesState]:
        async with connected(servers, "test-rules-deals") as (nc, pool):
            # No commands: nothing for a dispatcher of another test to take.
            await pool.execute("INSERT INTO rule_settings (workspace, disabled) VALUES ($1, $2)"
                               " ON CONFLICT (workspace) DO UPDATE SET disabled = excluded.disabled",
                               WS, list(ALL_RULES))
            worker = RulesWorker(nc.jetstream(), pool, name="test-rules-deals")
            # From just before its events: no timer another test decided is in its range.
            await pool.execute("INSERT INTO rules_positions (name, position) VALUES ($1, $2)", worker.name, SEQ)
            worker.position = SEQ
            batches = [
                [logged(1, won("a", "2026-11-05T00:00:00Z", "10"))],
                [logged(2, won("b", "2026-11-02T00:00:00Z", "1000")),
                 logged(3, event("goal.set", None, "2026-11-01T00:00:00Z", id="q", source="/r1", goal_id="q",
                                 metric="revenue", target="1000", currency="EUR", period_start="2026-11-01",
                                 period_end="2026-12-01"))],
                [logged(4, won("c", "2026-11-03T00:00:00Z", "7", subject="ben"))],  # later in time: ignored
            ]
            states = []
            for batch in batches:
                await worker.apply_batch(batch)
                async with pool.acquire() as conn:
                    states.append(await load_state(conn, [], [WS], [(WS, "dX")]))
            return states[0], states[-1]

    first, last = asyncio.run(run())
    ws = last.workspaces[WS]
    assert logic.goal_actual(ws, ws.goals["q"]) == Decimal(1000)
    assert ws.won_sum == {"EUR": Decimal(1000)} and ws.won_count == {"EUR": 1}
    assert first.deals[(WS, "dX")].id == "a"
    deal = last.deals[(WS, "dX")]
    assert (deal.id, deal.amount, deal.won_at) == ("b", Decimal(1000), dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc))


def test_migration_017_knows_the_contact_of_every_follow_up_an_older_rules_state_holds_open(servers):
    """``rules_followups`` (a dismissal's owner) starts with the open follow-ups already stored."""
    migration = resources.files("services.store.migrations").joinpath("017_rules_followups.sql").read_text()
    schema = f"migration_{uuid.uuid4().hex[:8]}"
    states = [("w1", "ann", {"open": {"fu_a": "2026-11-01T00:00:00Z", "fu_b": "2026-11-02T00:00:00Z"}}),
              ("w1", "ben", {"marketing_since_sales": 2}), ("w2", "ann", {"open": {"fu_c": "2026-11-03T00:00:00Z"}})]

    async def run():
        conn = await asyncpg.connect(servers.database_url)
        try:
            await conn.execute(f"CREATE SCHEMA {schema}; SET search_path = {schema}")
            await conn.execute("CREATE TABLE rules_contacts (workspace text NOT NULL, contact text NOT NULL,"
                               " state jsonb NOT NULL, PRIMARY KEY (workspace, contact))")
            await conn.executemany("INSERT INTO rules_contacts VALUES ($1, $2, $3::jsonb)",
                                   [(ws, contact, json.dumps(state)) for ws, contact, state in states])
            await conn.execute(migration)
            return await conn.fetch("SELECT workspace, followup_id, contact FROM rules_followups")
        finally:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            await conn.close()

    rows = asyncio.run(run())
    assert sorted(tuple(row) for row in rows) == [("w1", "fu_a", "ann"), ("w1", "fu_b", "ann"), ("w2", "fu_c", "ann")]
