"""A stalled-offer timer's follow-up counts as open, on a rerun of the rules (`touchline rules
reset`), from where the live run decided the timer, not from its followup.requested in the log,
which the dispatcher writes a little later (CONTRACT.md section 6: one open follow-up at a time)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

from events.commands import RequestFollowup, TimerFire, followup_id, timer_id
from events.log import LoggedEvent, decode_logged, log_subject
from services.rules import worker as rules_worker
from services.rules.worker import RulesWorker
from tests.support import connected, event

WS = "rules-timers-it"
NAME = "test-rules-timers"
# Far above any sequence the shared log reaches, and apart from test_rules_deals' stretch: the
# worker starts there, so no timer another test decided is in its range.
SEQ = 2 * 10**12
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def iso(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def logged(n: int, body: dict) -> LoggedEvent:
    """As the log holds it (``followup.requested`` is Touchline's own, never accepted from outside)."""
    return decode_logged(SEQ + n, log_subject(WS), None, json.dumps(body).encode())


def test_a_rerun_opens_a_timers_followup_where_the_live_run_decided_the_timer(servers, monkeypatch):
    """Live: an offer already stale is decided at once (a stalled-offer follow-up), and a click logged
    before the dispatcher has recorded that follow-up is blocked by it. On a rerun the click came
    before the follow-up's followup.requested in the log: it made a hot-engagement follow-up."""
    published: list[RequestFollowup] = []

    async def publish(js, effects, timeout: float = 10.0) -> None:  # no command for the suite's dispatcher
        published.extend(command for command in effects.commands if isinstance(command, RequestFollowup))

    monkeypatch.setattr(rules_worker, "publish_effects", publish)
    stalled = followup_id(WS, "stalled-offer", "/t", "offer")
    offer = logged(1, event("sales.offer.made", "dana", iso(NOW - dt.timedelta(days=9)), id="offer", source="/t",
                            deal_id="d1", amount="900", currency="EUR"))
    click = logged(2, event("marketing.engaged", "dana", iso(NOW - dt.timedelta(hours=1)), id="click", source="/t",
                            channel="ig", action="click"))
    recorded = logged(3, event("followup.requested", "dana", iso(NOW), id=stalled, source="/touchline/dispatcher",
                               followup_id=stalled, rule="stalled-offer", reason="stalled",
                               due_at=iso(NOW - dt.timedelta(days=2)), caused_by_source="/t", caused_by_id="offer",
                               trigger_time=iso(NOW - dt.timedelta(days=2))))

    async def start_at(pool, position: int) -> None:
        await pool.execute("INSERT INTO rules_positions (name, position) VALUES ($1, $2)"
                           " ON CONFLICT (name) DO UPDATE SET position = excluded.position", NAME, position)

    async def run() -> tuple[list[str], list[str]]:
        async with connected(servers, NAME) as (nc, pool):
            await start_at(pool, SEQ)
            worker = RulesWorker(nc.jetstream(), pool, name=NAME)
            worker.position = SEQ
            await worker.apply_batch([offer])
            await worker.decide_fired(TimerFire(timer_id=timer_id(WS, "/t", "offer"), workspace=WS, contact="dana",
                                                fire_at=NOW))
            await worker.apply_batch([click])
            await worker.apply_batch([recorded])
            live = [command.rule for command in published]
            published.clear()
            # `touchline rules reset`, for this workspace alone: the suite's own rules worker shares the tables.
            for table in ("rules_contacts", "rules_workspaces", "rules_followups"):
                await pool.execute(f"DELETE FROM {table} WHERE workspace = $1", WS)
            await start_at(pool, SEQ)
            worker.position = SEQ
            await worker.apply_batch([offer, click, recorded])
            return live, [command.rule for command in published]

    live, rerun = asyncio.run(run())
    assert live == ["stalled-offer"]
    assert rerun == []
