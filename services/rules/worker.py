"""The rules worker: reads the log live, in log order, and turns what happens into commands.

Like the projector, it reads with an ordered consumer from its committed position + 1 and applies
each batch in one PostgreSQL transaction that also moves its position (``rules_positions``, not
``projector_positions``: it is not a read model that ``min_seq`` waits for). The position row is
locked and checked in every batch, so a second worker process is fenced, never double-applies.

Commands go to the work queue (``TOUCHLINE_COMMANDS``) with ``Nats-Msg-Id`` = the derived command
id, published and acked *before* the batch commits: at least once. A crash between publish and
commit re-publishes the same ids, which JetStream drops within its window and the dispatcher drops
for ever (the follow-up id is the logged event's id, deduplicated through ``event_index``).

stalled-offer timers are NATS message schedules (ADR-51) on ``TOUCHLINE_TIMERS``: durable in the
stream, fired by the server onto ``touchline.timer.fired.{ws}``, consumed here with explicit acks.
A fired timer is decided only once this worker has applied the log up to where it stood when the
timer fired, so a sales touch that came in time is always seen first.

goal-at-risk is checked whenever a goal's actual changes (in ``decide``) and on a periodic tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from typing import Awaitable, Callable, Iterable, NamedTuple

import asyncpg
import nats.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from events.catalog import DealWon, FollowupDismissed
from events.commands import (
    COMMANDS_STREAM,
    TIMERS_FIRED,
    TIMERS_STREAM,
    RequestFollowup,
    TimerFire,
    command_subject,
    decode_timer,
    encode_command,
    encode_timer,
    timer_fired_subject,
    timer_subject,
)
from events.log import LoggedEvent
from services.nats_io import last_log_seq, read_log
from services.parking import Poison, decode_messages, park
from services.log_position import Backoff, CommittedPosition, Fenced, lead
from services.first_copies import first_copies
from services.rules import logic
from services.rules.logic import Effects, RulesState, Timer
from services.runtime.loop import cancel_and_wait
from services.store.db import RETRYABLE, with_retry

log = structlog.get_logger()

TIMER_CONSUMER = "rules-timers"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# --- state in PostgreSQL -------------------------------------------------------------------


async def load_state(conn: asyncpg.Connection, contacts: Iterable[tuple[str, str]], workspaces: Iterable[str],
                     deals: Iterable[tuple[str, str]] = (), followups: Iterable[tuple[str, str]] = ()) -> RulesState:
    """The stored decision state of these (workspace, contact)s, workspaces and (workspace, deal_id)s,
    and of the contacts these (workspace, followup_id)s are about."""
    state = RulesState()
    followups = list(followups)
    if followups:
        ws_ids, ids = zip(*followups)
        rows = await conn.fetch(
            "SELECT workspace, followup_id, contact FROM rules_followups"
            " WHERE (workspace, followup_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            ws_ids,
            ids,
        )
        state.followup_contacts = {(row["workspace"], row["followup_id"]): row["contact"] for row in rows}
        contacts = {*contacts, *((ws, contact) for (ws, _), contact in state.followup_contacts.items())}
    state.contacts = await _load_keyed(conn, "rules_contacts", "contact", contacts, logic.decode_contact)
    workspaces = list(workspaces)
    if workspaces:
        for row in await conn.fetch("SELECT workspace, state FROM rules_workspaces WHERE workspace = ANY($1)", workspaces):
            state.workspaces[row["workspace"]] = logic.decode_workspace(row["state"])
    state.deals = await _load_keyed(conn, "rules_deals", "deal_id", deals, logic.decode_deal)
    return state


Found = set[tuple[str, str, str]]  # (workspace, followup_id, contact) dismissed before it was emitted


class DismissedBeforeEmitted(Exception):
    """Follow-ups this batch emitted (or whose followup.requested it applied) that a dismissal in an
    earlier batch had already named, before the worker knew whose they were: decide the batch again,
    each contact knowing it from the start (``RulesState.dismissed_before``)."""

    def __init__(self, found: Found) -> None:
        super().__init__(f"{len(found)} follow-up(s) dismissed before they were emitted")
        self.found = found


async def knowing_early_dismissals(attempt: Callable[[Found], Awaitable[Effects]]) -> Effects:
    """``attempt(known)``, and again, knowing more, for as long as it finds follow-ups dismissed
    before they were emitted (its transaction rolled back each time)."""
    known: Found = set()
    while True:
        try:
            return await attempt(known)
        except DismissedBeforeEmitted as again:
            known = again.found


async def save_state(conn: asyncpg.Connection, state: RulesState,
                     known: Found = frozenset()) -> None:
    """Store the state; raises DismissedBeforeEmitted for early dismissals not in ``known``."""
    await _save_keyed(conn, "rules_contacts", "contact", state.contacts)
    if state.workspaces:
        await conn.execute(
            "INSERT INTO rules_workspaces (workspace, state) SELECT * FROM unnest($1::text[], $2::jsonb[])"
            " ON CONFLICT (workspace) DO UPDATE SET state = excluded.state",
            list(state.workspaces),
            [logic.encode_state(value).decode() for value in state.workspaces.values()],
        )
    await _save_keyed(conn, "rules_deals", "deal_id", state.deals)
    if state.followup_contacts:
        keys, contacts = zip(*state.followup_contacts.items())
        ws_ids, ids = zip(*keys)
        # A follow-up's contact never changes (its id derives from its trigger), but one dismissed
        # before it was emitted is noted with none ("") until it is.
        rows = await conn.fetch(
            "INSERT INTO rules_followups (workspace, followup_id, contact)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[])"
            " ON CONFLICT (workspace, followup_id) DO UPDATE SET contact = excluded.contact"
            " WHERE rules_followups.contact = '' AND excluded.contact <> ''"
            " RETURNING workspace, followup_id, contact, xmax <> 0 AS was_dismissed",
            ws_ids,
            ids,
            contacts,
        )
        found = {(row["workspace"], row["followup_id"], row["contact"]) for row in rows if row["was_dismissed"]}
        if found - set(known):
            raise DismissedBeforeEmitted(found | set(known))


async def _load_keyed(conn: asyncpg.Connection, table: str, column: str, keys: Iterable[tuple[str, str]],
                      decode) -> dict:
    """Rows of a state table keyed by (workspace, ``column``), decoded."""
    keys = list(keys)
    if not keys:
        return {}
    ws_ids, ids = zip(*keys)
    rows = await conn.fetch(
        f"SELECT workspace, {column} AS key, state FROM {table}"
        f" WHERE (workspace, {column}) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        ws_ids,
        ids,
    )
    return {(row["workspace"], row["key"]): decode(row["state"]) for row in rows}


async def _save_keyed(conn: asyncpg.Connection, table: str, column: str, states: dict) -> None:
    if states:
        ws_ids, ids = zip(*states)
        await conn.execute(
            f"INSERT INTO {table} (workspace, {column}, state) SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[])"
            f" ON CONFLICT (workspace, {column}) DO UPDATE SET state = excluded.state",
            ws_ids,
            ids,
            [logic.encode_state(value).decode() for value in states.values()],
        )


async def load_settings(conn: asyncpg.Connection, workspaces: Iterable[str]) -> dict[str, logic.RuleSwitches]:
    rows = await conn.fetch("SELECT workspace, disabled FROM rule_settings WHERE workspace = ANY($1)", list(workspaces))
    return {row["workspace"]: logic.RuleSwitches(frozenset(row["disabled"])) for row in rows}


async def first_decision(conn: asyncpg.Connection, fire: TimerFire, position: int) -> bool:
    """Record that this timer is decided now, with the log applied up to ``position``; False if it
    was decided before (a redelivery, or a rerun of the rules from the start, which ``reset`` leaves
    this record to)."""
    return bool(await conn.fetchval(
        "INSERT INTO rules_timers (workspace, timer_id, decided_at_seq) VALUES ($1, $2, $3)"
        " ON CONFLICT DO NOTHING RETURNING true",
        fire.workspace,
        fire.timer_id,
        position,
    ))


async def note_timer_followup(conn: asyncpg.Connection, fire: TimerFire, effects: Effects) -> None:
    """The follow-up this timer's decision made, for a rerun to open where the live run did."""
    for command in effects.commands:
        if isinstance(command, RequestFollowup):
            await conn.execute(
                "UPDATE rules_timers SET contact = $3, followup_id = $4, trigger_time = $5"
                " WHERE workspace = $1 AND timer_id = $2",
                fire.workspace,
                fire.timer_id,
                command.contact,
                command.followup_id,
                command.trigger_time,
            )


class TimerFollowup(NamedTuple):
    decided_at_seq: int
    workspace: str
    contact: str
    followup_id: str
    trigger_time: dt.datetime


async def timer_followups_between(conn: asyncpg.Connection, after: int, last: int) -> list[TimerFollowup]:
    """Follow-ups of timers decided with the log applied up to a position in (after, last]: only a
    rerun meets these (live, a timer is decided at the position the batches have already passed)."""
    rows = await conn.fetch(
        "SELECT decided_at_seq, workspace, contact, followup_id, trigger_time FROM rules_timers"
        " WHERE decided_at_seq > $1 AND decided_at_seq <= $2 AND followup_id IS NOT NULL ORDER BY decided_at_seq",
        after,
        last,
    )
    return [TimerFollowup(*row) for row in rows]


async def reset(pool: asyncpg.Pool, name: str = "main") -> None:
    """Forget the decision state and start the rules again from the start of the log.

    Safe with workers running: they are fenced by the moved position and start again from 0.
    Derived ids make every re-emitted command a no-op for follow-ups that already exist. The
    stalled-offer timers already decided stay decided (``rules_timers``, see ``first_decision``).
    """
    async with pool.acquire() as conn:
        async with conn.transaction():
            await CommittedPosition("rules_positions", name).hold(conn)
            await conn.execute("DELETE FROM rules_contacts")
            await conn.execute("DELETE FROM rules_workspaces")
            await conn.execute("DELETE FROM rules_deals")
            await conn.execute("DELETE FROM rules_followups")
            await conn.execute("UPDATE rules_positions SET position = 0, applied = 0, updated_at = now() WHERE name = $1", name)


# --- publishing effects ----------------------------------------------------------------------


# nats-server keeps a schedule's time in nanoseconds since 1970, which end in April 2262: a timer
# due later fired at once (a stalled-offer follow-up for an offer dated 2300, at once: an outside
# audit). A timer is scheduled at most this far ahead of now, and when it fires before its time,
# scheduled again from then (``_fire``): a horizon from now, not a fixed date, which would be
# in the past by the time it fired, and its timer fired again at once, for ever (a review).
SCHEDULE_AHEAD_AT_MOST = dt.timedelta(days=100 * 365)


def _at(moment: dt.datetime) -> str:
    """RFC 3339 UTC, whole seconds, never earlier than asked (nor past ``SCHEDULE_AHEAD_AT_MOST``)."""
    moment = min(moment.astimezone(dt.timezone.utc), utcnow() + SCHEDULE_AHEAD_AT_MOST)
    if moment.microsecond:
        moment = moment.replace(microsecond=0) + dt.timedelta(seconds=1)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def publish_effects(js: JetStreamContext, effects: Effects, timeout: float = 10.0) -> None:
    """Every command and timer durably stored (acked) before returning; raises otherwise."""
    futures = []
    for command in effects.commands:
        futures.append(
            await js.publish_async(
                command_subject(command.workspace),
                encode_command(command),
                headers={"Nats-Msg-Id": command.command_id},
                stream=COMMANDS_STREAM,
                wait_stall=timeout,
            )
        )
    for timer in effects.timers:
        futures.append(await _publish_timer(js, timer, timeout))
    if futures:
        await asyncio.wait_for(asyncio.gather(*futures), timeout)


async def _publish_timer(js: JetStreamContext, timer: Timer, timeout: float):
    body = encode_timer(TimerFire(timer_id=timer.timer_id, workspace=timer.workspace, contact=timer.contact,
                                  fire_at=timer.fire_at))
    if timer.fire_at <= utcnow():
        # Already due (a backfilled offer, or a rerun): fire now.
        return await js.publish_async(
            timer_fired_subject(timer.workspace), body, headers={"Nats-Msg-Id": f"fire-{timer.timer_id}"},
            stream=TIMERS_STREAM, wait_stall=timeout,
        )
    return await js.publish_async(
        timer_subject(timer.workspace, timer.timer_id),
        body,
        headers={
            "Nats-Msg-Id": timer.timer_id,
            "Nats-Schedule": f"@at {_at(timer.fire_at)}",
            "Nats-Schedule-Target": timer_fired_subject(timer.workspace),
        },
        stream=TIMERS_STREAM,
        wait_stall=timeout,
    )


def _made_by_timer(state: RulesState, made: TimerFollowup) -> None:
    """On a rerun: the follow-up a timer made, open from where the live run decided the timer."""
    logic.made(state, made.workspace, made.contact, made.followup_id, made.trigger_time)


# --- the worker ------------------------------------------------------------------------------


# Events the rules could not judge are parked under this name (`touchline parked list`); after a
# fix, `touchline rules reset` runs the rules again from the start (ids make that harmless).
PARKED_AS = "rules"


# The key of the rules worker's writer lock (``log_position.lead``): one writer, the others standbys.
LEAD_KEY_PREFIX = "touchline.rules."


class RulesWorker:
    def __init__(
        self,
        js: JetStreamContext,
        pool: asyncpg.Pool,
        *,
        name: str = "main",
        batch_max: int = 2000,
        wait: float = 0.5,
        goal_check_seconds: float = 600.0,
    ) -> None:
        self.js = js
        self.pool = pool
        self.name = name
        self.batch_max = batch_max
        self.wait = wait
        self.goal_check_seconds = goal_check_seconds
        self.position = 0
        self.applied_batches = 0  # committed by this process: a fenced one that had applied was the writer
        self.goals_deferred = False  # a goal check left for when the log is caught up
        # Whether the log loop has read to the end since it (re)started: until then the saved state
        # is behind the log, and the goal tick would judge it at today's share of each period.
        self.caught_up = False
        self.committed = CommittedPosition("rules_positions", name)
        self._stopping = asyncio.Event()  # the process stops
        self._over = asyncio.Event()  # the loops end: stopping, or no longer the writer

    def stop(self) -> None:
        self._stopping.set()
        self._over.set()

    async def run(self) -> None:
        """The rules, while this process is the writer (``log_position.lead``); a standby meanwhile."""
        await lead(self.pool, LEAD_KEY_PREFIX + self.name, "rules", self._run_loops, self._stopping)

    async def _run_loops(self) -> None:
        """The log loop, the timer loop and the goal tick, until stopped or no longer the writer;
        any of them failing ends all."""
        self._over = asyncio.Event()
        if self._stopping.is_set():
            return
        tasks = [
            asyncio.create_task(self._forever("log", self._run_from_committed_position)),
            asyncio.create_task(self._forever("timers", self._consume_timers)),
            asyncio.create_task(self._forever("goals", self._check_goals_now, pause=self.goal_check_seconds)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception():
                    raise task.exception()
        finally:
            # Over, too: a loop whose cancellation was lost still ends at its next turn.
            self._over.set()
            # Their subscriptions are gone before the connection drains (see ``_consume_timers``).
            await cancel_and_wait(*tasks)

    # --- the log ---------------------------------------------------------------------

    async def _forever(self, loop: str, body, pause: float = 0.0) -> None:
        """Run ``body`` again and again until stopped; a fence or an outage only pauses it."""
        fenced = Backoff("rules.fenced", loop=loop)
        while not self._over.is_set():
            applied = self.applied_batches
            try:
                await body()
            except Fenced as err:
                if self.applied_batches != applied:
                    fenced.got_on()  # it was the writer until now
                await fenced.pause(error=str(err))
                continue
            except RETRYABLE + (asyncio.TimeoutError, nats.errors.Error) as err:
                log.warning("rules.unavailable", loop=loop, error=repr(err))
                await asyncio.sleep(1.0)
                continue
            if pause:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._over.wait(), pause)

    async def _run_from_committed_position(self) -> None:
        self.caught_up = False
        self.position = await self.committed.load(self.pool)
        log.info("rules.started", position=self.position)
        sub = await read_log(self.js, self.position + 1)
        checked = time.monotonic()
        try:
            while not self._over.is_set():
                messages = await sub.next_batch(self.batch_max, self.wait)
                if messages:
                    batch, poisons = decode_messages(messages)
                    await self.apply_batch(batch, poisons, last=messages[-1].seq)
                # Caught up (the log said nothing was left after the last message, or fell silent):
                # since a start, or after history (logic.LIVE_WINDOW), the goals as they stand now;
                # the tick's from here on. Not "silent" alone: a log never idle for half a second
                # (a steady trickle of events) kept the tick from ever running (the last re-check).
                if (not self.caught_up or self.goals_deferred) and (not messages or sub.drained):
                    self.caught_up = True
                    await with_retry(self.pool, self.check_goals)
                    self.goals_deferred = False
                elif not messages and time.monotonic() - checked > 2.0:
                    # Idle: notice a position moved by someone else (`touchline rules reset`).
                    checked = time.monotonic()
                    committed = await self.committed.read(self.pool)
                    if committed != self.position:
                        raise Fenced(f"position is {committed}, expected {self.position}")
        finally:
            await sub.unsubscribe()

    async def apply_batch(self, batch: list[LoggedEvent], poisons: list[Poison] = (), last: int | None = None) -> None:
        started = time.perf_counter()
        last = last if last is not None else batch[-1].seq
        effects = await knowing_early_dismissals(lambda known: self._apply(batch, list(poisons), last, known))
        self.goals_deferred = self.goals_deferred or effects.goals_deferred
        self.position = last
        self.applied_batches += 1
        log.debug("rules.batch", events=len(batch), commands=len(effects.commands), timers=len(effects.timers),
                  position=last, ms=round((time.perf_counter() - started) * 1000, 1))

    async def _apply(self, batch: list[LoggedEvent], poisons: list[Poison], last: int,
                     known: Found) -> Effects:
        effects = Effects()
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                committed = await self.committed.lock(conn, self.position)
                fresh = [logged for logged in batch if logged.seq > committed]
                firsts = await first_copies(conn, fresh)
                contacts = {(l.workspace, l.event.subject) for l in firsts if l.event.contact_event and l.event.subject}
                workspaces = {l.workspace for l in firsts}
                deals = {(l.workspace, l.event.data.deal_id) for l in firsts if isinstance(l.event, DealWon)}
                dismissed = {(l.workspace, l.event.data.followup_id) for l in firsts if isinstance(l.event, FollowupDismissed)}
                timed = await timer_followups_between(conn, committed, last)
                contacts.update((made.workspace, made.contact) for made in timed)
                state = await load_state(conn, contacts, workspaces, deals, dismissed)
                state.dismissed_before(known)
                settings = await load_settings(conn, workspaces)
                now = utcnow()
                for logged in firsts:
                    while timed and timed[0].decided_at_seq < logged.seq:
                        _made_by_timer(state, timed.pop(0))
                    try:
                        decided = logic.decide(
                            state, logged, now=now, settings=settings.get(logged.workspace, logic.EVERY_RULE_ON)
                        )
                    except Exception as err:  # a rule that cannot judge this event must not stop the others
                        log.error("rules.event_failed", seq=logged.seq, workspace=logged.workspace, exc_info=err)
                        poisons.append(Poison(logged.seq, logged.workspace, repr(err)))
                        continue
                    effects.extend(decided)
                for made in timed:
                    _made_by_timer(state, made)
                await save_state(conn, state, known)
                await park(conn, PARKED_AS, [p for p in poisons if p.seq > committed])
                await publish_effects(self.js, effects)
                await self.committed.advance(conn, last, len(fresh))
        return effects

    # --- fired timers ----------------------------------------------------------------

    async def _consume_timers(self) -> None:
        sub = await self.js.pull_subscribe(
            TIMERS_FIRED,
            durable=TIMER_CONSUMER,
            stream=TIMERS_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=60, max_deliver=-1, max_ack_pending=1000),
        )
        try:
            while not self._over.is_set():
                try:
                    messages = await sub.fetch(16, timeout=1.0)
                except (nats.errors.TimeoutError, asyncio.TimeoutError):
                    continue
                for msg in messages:
                    await self._fire(msg)
        finally:
            # An idle fetch's expiry notice can arrive after the fetch gave up, and waits in the
            # subscription's queue for ever: a drain of the connection would wait for it (3 s,
            # then a CancelledError traceback at every stop after a minute or so of quiet).
            with contextlib.suppress(Exception):  # the connection may be closed already
                await sub.unsubscribe()

    async def _fire(self, msg) -> None:
        fire = decode_timer(msg.data)
        if fire.fire_at - utcnow() > dt.timedelta(days=1):
            # Fired at the horizon, not yet due: scheduled again, as far ahead as it may be.
            await _publish_timer(self.js, Timer(fire.timer_id, fire.workspace, fire.contact, fire.fire_at), 10.0)
            await msg.ack_sync()
            return
        # Decide with everything logged up to the moment the timer fired.
        target = await last_log_seq(self.js)
        waited = time.monotonic()
        while await self.committed.read(self.pool) < target:
            if self._over.is_set():  # stopping, or no longer the writer: the next writer decides it
                await msg.nak()
                return
            if time.monotonic() - waited > 10:
                await msg.in_progress()
                waited = time.monotonic()
            await asyncio.sleep(0.05)
        effects = await self.decide_fired(fire)
        log.info("rules.timer_fired", workspace=fire.workspace, timer=fire.timer_id, commands=len(effects.commands))
        await msg.ack_sync()

    async def decide_fired(self, fire: TimerFire) -> Effects:
        """A fired timer decided with the log as applied now, once ever (``first_decision``)."""

        async def work(conn: asyncpg.Connection, known: Found) -> Effects:
            position = await self.committed.hold(conn)
            state = await load_state(conn, [(fire.workspace, fire.contact)], [])
            state.dismissed_before(known)
            if await first_decision(conn, fire, position):
                settings = await load_settings(conn, [fire.workspace])
                effects = logic.decide_timer(state, fire.workspace, fire.contact, fire.timer_id, now=utcnow(),
                                             settings=settings.get(fire.workspace, logic.EVERY_RULE_ON))
                await note_timer_followup(conn, fire, effects)
            else:  # decided before a `rules reset`: as it was decided then (its follow-up, if any, the
                # rerun opened where the live run made it: ``timer_followups_between``)
                state.contact(fire.workspace, fire.contact).offers.pop(fire.timer_id, None)
                effects = Effects()
            await save_state(conn, state, known)
            await publish_effects(self.js, effects)
            return effects

        return await knowing_early_dismissals(lambda known: with_retry(self.pool, lambda conn: work(conn, known)))

    # --- goal checks -----------------------------------------------------------------

    async def _check_goals_now(self) -> None:
        """The goal tick; skipped while the log loop is catching up (a worker back after a stop
        judged the state saved before it stopped, at today's share of the period: a false alert
        that the re-check audit saw within a second of the restart)."""
        if self.caught_up:
            await with_retry(self.pool, self.check_goals)

    async def check_goals(self, conn: asyncpg.Connection) -> Effects:
        """goal-at-risk for every running goal of every workspace, at least this often."""
        await self.committed.hold(conn)
        rows = await conn.fetch("SELECT workspace FROM rules_workspaces WHERE state ? 'goals'")
        state = await load_state(conn, [], [row["workspace"] for row in rows])
        settings = await load_settings(conn, state.workspaces)
        now = utcnow()
        effects = Effects()
        for ws_id, ws in state.workspaces.items():
            if settings.get(ws_id, logic.EVERY_RULE_ON).enabled("goal-at-risk"):
                effects.commands.extend(logic.check_goals(ws_id, ws, now, caused_by=None))
        if effects.commands:
            await save_state(conn, state)
            await publish_effects(self.js, effects)
        return effects
