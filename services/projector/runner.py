"""The projector: reads the log in order and applies it to every read model, exactly once.

Exactly-once lives in PostgreSQL, not in NATS acks. Each batch is applied in one
transaction that also moves the projector's position; the log is read with an ordered
consumer starting just after the committed position, so nothing is redelivered out of
order and nothing is skipped. After a crash the projector starts again from the last
committed position: an uncommitted batch is simply read again. The position row is
locked in every batch transaction, and a batch is committed only if the position is the
one this process expects, so a second projector process can never double-apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import asyncpg
import structlog
from nats.js import JetStreamContext

from events.log import EventKey, LoggedEvent
from projections.batching import PreparedBatch, Projection
from services import gc_tuning
from services.first_copies import INDEX_KEYS, first_copies, index_keys
from services.log_position import Backoff, CommittedPosition, Fenced, lead
from services.nats_io import read_log
from services.parking import Poison, apply_one_by_one, decode_messages, park
from services.runtime.loop import cancel_and_wait
from services.store.db import RETRYABLE

log = structlog.get_logger()


# Read models that grew by this many events since their statistics were taken are analyzed when
# the projector reaches the log's head: autovacuum looks only every minute, and until it does a
# freshly loaded workspace is planned as if it were empty (the touches histogram, say, went
# through the whole workspace's contacts instead of its partial index: 20 ms instead of 2).
ANALYZE_AFTER_EVENTS = 20_000
ANALYZE_AFTER_GROWTH = 0.25


# The key of the projector's writer lock (``log_position.lead``), which `touchline status` looks up in
# pg_locks to name the writer.
LEAD_KEY_PREFIX = "touchline.projector."


def prepare_batch(projections: list[Projection], events: list[LoggedEvent]) -> PreparedBatch:
    """``events`` with every projection's pure work done (``prepare``: no I/O, so the projector and
    replay run it in a worker thread while the event loop drives the transaction in flight). A
    ``prepare`` that fails is left out: ``apply`` prepares again inside the transaction, where the
    failure is handled (parked by the projector, left out by a replay, event by event)."""
    batch = PreparedBatch(events)
    for projection in projections:
        try:
            batch.prepared[projection.name] = projection.prepare(batch)
        except Exception:
            pass
    return batch


@dataclass
class ReadyBatch:
    """A batch read, decoded and prepared, waiting for its transaction."""

    batch: PreparedBatch
    poisons: list[Poison]
    last: int  # the last log sequence read, decodable or not
    messages: int


@dataclass
class BatchInFlight:
    """A batch in its pipelined transaction."""

    ready: ReadyBatch
    expected: int  # the position the batch before leaves
    behind: bool  # another batch of ours is in its transaction: this one may work before the lock
    locked: asyncio.Event = field(default_factory=asyncio.Event)  # set once it holds the position lock
    task: asyncio.Task = field(init=False)
    started: float = field(default_factory=time.perf_counter)


class Projector:
    def __init__(
        self,
        name: str,
        projections: list[Projection],
        js: JetStreamContext,
        pool: asyncpg.Pool,
        *,
        batch_max: int = 5000,
        wait: float = 0.5,
        analyze_after: int = ANALYZE_AFTER_EVENTS,
    ) -> None:
        self.name = name
        self.projections = projections
        self.analyze_after = analyze_after
        self.js = js
        self.pool = pool
        self.batch_max = batch_max
        self.wait = wait
        self.position = 0
        self.committed = CommittedPosition("projector_positions", name)
        self.applied_total = 0
        self.applied_since_analyze = 0
        self._analyzing: asyncio.Task | None = None
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        gc_tuning.tune_for_streaming()
        await lead(self.pool, LEAD_KEY_PREFIX + self.name, "projector", self._project, self._stopping,
                   projector=self.name)

    async def _project(self) -> None:
        fenced = Backoff("projector.fenced", projector=self.name)
        while not self._stopping.is_set():
            applied = self.applied_total
            try:
                await self._run_from_committed_position()
            except Fenced:
                if self.applied_total != applied:
                    fenced.got_on()  # it was the writer until now
                await fenced.pause()
            except RETRYABLE as err:
                log.warning("projector.postgres_unavailable", projector=self.name, error=str(err))
                await asyncio.sleep(1.0)

    def stop(self) -> None:
        self._stopping.set()

    async def _run_from_committed_position(self) -> None:
        self.position = await self.committed.load(self.pool)
        log.info("projector.started", projector=self.name, position=self.position)
        sub = await read_log(self.js, self.position + 1)
        # A pipeline: the next batch is read, decoded and prepared while the current one is in
        # PostgreSQL, and its transaction opens as soon as the current one holds the position lock,
        # to do the work that does not need the current batch's writes (see ``_commit``).
        ready: asyncio.Queue[ReadyBatch] = asyncio.Queue(maxsize=1)
        reader = asyncio.create_task(self._read_ahead(sub, ready))
        in_flight: BatchInFlight | None = None
        expected = self.position
        try:
            while not self._stopping.is_set():
                try:
                    item = await asyncio.wait_for(ready.get(), self.wait)
                except asyncio.TimeoutError:
                    if in_flight is not None:
                        done, in_flight = in_flight, None
                        if not await self._finish(done):
                            await self._commit_alone(done)
                            return
                    if reader.done():
                        reader.result()  # the reader's error, if it failed
                        raise RuntimeError("the log reader stopped")
                    continue
                if in_flight is not None:
                    await in_flight.locked.wait()  # the batch before holds the position lock (or failed)
                current = BatchInFlight(item, expected, behind=in_flight is not None)
                current.task = asyncio.create_task(self._commit_pipelined(current))
                expected = item.last
                previous, in_flight = in_flight, current
                if previous is not None and not await self._finish(previous):
                    await self._abandon(current.task)
                    in_flight = None
                    await self._commit_alone(previous)
                    return  # read again from the committed position
            if in_flight is not None:
                await self._finish(in_flight)
                in_flight = None
        finally:
            if in_flight is not None and not in_flight.task.done():
                await self._abandon(in_flight.task)
            if self._analyzing is not None:
                self._analyzing.cancel()
            await cancel_and_wait(reader)
            with contextlib.suppress(Exception):  # the connection may already be closing
                await sub.unsubscribe()

    def _analyze_if_grown(self) -> None:
        # After 20k events, then whenever the read models grew by a quarter: the statistics follow
        # the growth that matters (a load of a new workspace) at a cost that fades; autovacuum keeps
        # them fresh in the steady state. (Growth by half left up to a third of a load to an
        # autovacuum that then ran during the bench's queries.)
        before = self.applied_total - self.applied_since_analyze
        grown = self.applied_since_analyze >= max(self.analyze_after, before * ANALYZE_AFTER_GROWTH)
        if grown and (self._analyzing is None or self._analyzing.done()):
            self._analyzing = asyncio.create_task(self.analyze())

    async def analyze(self) -> None:
        """Fresh planner statistics for every read model, beside the batches (ANALYZE and VACUUM
        block neither reads nor writes)."""
        started, events = time.perf_counter(), self.applied_since_analyze
        self.applied_since_analyze = 0
        tables = sorted({table for projection in self.projections for table in projection.tables})
        try:
            await self.pool.execute(f"ANALYZE {', '.join(tables)}")
            # Also mark their pages all-visible, so that the funnel, touches and attribution read
            # their indexes only, and an autovacuum after the load finds little left to do.
            vacuumed = [table for table in ("contacts", "touch_events") if table in tables]
            if vacuumed:
                await self.pool.execute(f"VACUUM {', '.join(vacuumed)}")
        except Exception as err:  # statistics are an optimisation: never stop projecting for them
            log.warning("projector.analyze_failed", projector=self.name, error=repr(err))
            return
        log.info("projector.analyzed", projector=self.name, events=events,
                 ms=round((time.perf_counter() - started) * 1000, 1))

    async def _read_ahead(self, sub, ready: asyncio.Queue[ReadyBatch]) -> None:
        previous: frozenset[EventKey] = frozenset()
        while True:
            messages = await sub.next_batch(self.batch_max, self.wait)
            if messages:
                # In a worker thread: the event loop keeps answering the transactions in flight.
                item = await asyncio.to_thread(self.prepare_messages, messages, previous)
                previous = frozenset(item.batch.prepared[INDEX_KEYS][1])
                await ready.put(item)

    def prepare_messages(self, messages, previous_keys: frozenset[EventKey] = frozenset()) -> ReadyBatch:
        """Decode, and do every projection's pure work (no I/O): the batch as its transaction needs
        it. ``previous_keys``: those of the batch before, whose copies here are not first copies."""
        events, poisons = decode_messages(messages)
        batch = prepare_batch(self.projections, events)
        batch.prepared[INDEX_KEYS] = index_keys(batch, previous_keys)
        return ReadyBatch(batch, poisons, messages[-1].seq, len(messages))

    async def _commit_pipelined(self, batch: BatchInFlight) -> int:
        try:
            # The first batch takes the lock first: a second projector process is fenced before
            # it has written anything. (``locked`` is then set only by the finally below.)
            return await self._commit(batch.ready.batch, batch.ready.last, batch.ready.poisons, one_by_one=False,
                                      expected=batch.expected, locked=batch.locked, early=batch.behind)
        finally:
            batch.locked.set()

    async def _finish(self, batch: BatchInFlight) -> bool:
        """Wait for a pipelined batch; False if it failed (then ``_commit_alone`` it)."""
        try:
            applied = await batch.task
        except (Fenced, *RETRYABLE):
            raise
        except Exception as err:
            log.warning("projector.batch_failed", projector=self.name, position=batch.ready.last, error=repr(err),
                        exc_info=err)
            return False
        self._committed(batch.ready, applied, batch.started)
        return True

    async def _commit_alone(self, batch: BatchInFlight) -> None:
        """A batch that failed in the pipeline, applied again event by event, each in a savepoint,
        parking the ones that fail (poison); the batch read behind it was abandoned."""
        ready = batch.ready
        applied = await self._commit(ready.batch, ready.last, ready.poisons, one_by_one=True, expected=batch.expected)
        self._committed(ready, applied, batch.started)

    @staticmethod
    async def _abandon(task: asyncio.Task) -> None:
        await cancel_and_wait(task)

    def _committed(self, ready: ReadyBatch, applied: int, started: float) -> None:
        last = ready.last
        self.position = last
        self.applied_total += applied
        self.applied_since_analyze += applied
        log.debug(
            "projector.batch",
            projector=self.name,
            events=ready.messages,
            first_copies=applied,
            position=last,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        if ready.messages < self.batch_max:  # at the log's head: a good moment
            self._analyze_if_grown()

    async def _commit(self, batch: list[LoggedEvent], last: int, poisons: list[Poison], *, one_by_one: bool,
                      expected: int, locked: asyncio.Event | None = None, early: bool = False) -> int:
        """One transaction: the batch's first copies applied and the position moved past ``last``.

        With ``early`` (pipelined behind another batch of ours), the work that does not depend on
        the batch before comes first, while that batch's transaction may still be open: the
        first-copy lookup (the keys the batch before has are left out, see ``index_keys``) and the
        projections that only add rows keyed by the event or add to counters (``before_lock``).
        Then the position lock, which waits for
        the batch before to commit, and the rest (contacts, deals, goals, follow-ups), which read
        what it wrote; ``locked`` is set then, and the batch behind may start. Writers wait only for
        an earlier batch, never the other way round: a batch that is not early signals nothing
        before its commit, since its own appends and counters come after its lock (the batch behind
        would take counter rows it still needs, and wait for its lock: a deadlock)."""
        poisons = list(poisons)
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                if early and not one_by_one:
                    assert locked is not None
                    fresh = [logged for logged in batch if logged.seq > expected]
                    firsts = await first_copies(conn, batch if len(fresh) == len(batch) else fresh)
                    later = []
                    for projection in self.projections:
                        if projection.before_lock:
                            await projection.apply(conn, firsts)
                        else:
                            later.append(projection)
                    committed = await self.committed.lock(conn, expected)
                    locked.set()
                    for projection in later:
                        await projection.apply(conn, firsts)
                else:
                    committed = await self.committed.lock(conn, expected)
                    fresh = [logged for logged in batch if logged.seq > committed]
                    firsts = await first_copies(conn, batch if len(fresh) == len(batch) else fresh)
                    if not one_by_one:
                        for projection in self.projections:
                            await projection.apply(conn, firsts)
                    else:
                        poisons += await apply_one_by_one(conn, self.name, self.projections, firsts)
                await park(conn, self.name, [p for p in poisons if p.seq > committed])
                await self.committed.advance(conn, last, len(fresh))
        return len(firsts)
