"""Replay: read models rebuilt from the log, for audit (CONTRACT.md sections 1 and 7).

Every replay builds a workspace's read models from its log subject ``touchline.log.W``, read
with an ordered consumer, into a PostgreSQL schema of its own: each read-model table (every
``tables`` of every projection in ``projections.registry``) is created there ``LIKE`` the live
one, and the projections' own ``apply`` runs on a connection whose ``search_path`` puts that
schema first (their SQL uses unqualified table names). Three uses:

* **rebuild** (``touchline replay``): build up to the live projector's position, catch up,
  then in ONE transaction lock the live projector's position row (``FOR UPDATE``: its next
  batch waits), apply what it committed meanwhile, replace the workspace's live rows with the
  rebuilt ones and commit. A reader sees the old rows or the new ones, never a mix; the live
  projector continues from its own position on top of the rebuilt rows.
* **snapshot** (``--until-seq N`` / ``--until TIME``): the read models as of a point of the log,
  kept in schema ``snapshot_<hash>`` and listed in ``snapshots``; the read endpoints address it
  with ``?snapshot=NAME``. ``--until TIME`` means *every event Touchline had received by TIME*
  (its ``received_at`` <= TIME): what the read models showed at that moment, once caught up.
  An event that happened before TIME but arrived later is not in it.
* **verify** (``--verify``): build into a scratch schema, then in one REPEATABLE READ transaction
  read the live projector's position P, bring the scratch up to exactly P and compare every row
  of every table with the live one, all in the same database snapshot (so the live projector
  keeps running and the comparison still sees the live tables at exactly P).

Replay has no side effects: it writes nothing but its own schemas (and, for a rebuild, the
workspace's read-model rows; and it drops the scratch schemas of replays that died before they
could, see ``drop_abandoned_scratch``); it never writes ``event_index``, publishes nothing, and emits no
commands or webhook deliveries. Duplicates are dropped read-only: an event is the first copy iff
``event_index`` holds its own sequence for its (workspace, source, id).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import asyncpg
import msgspec
import nats.js.errors
import structlog
from nats.js import JetStreamContext

from events.log import LOG_STREAM, LoggedEvent, index_key, log_subject
from events.upcasting import decode_exact
from projections.batching import PreparedBatch, Projection
from services import gc_tuning
from services.nats_io import read_log
from services.parking import apply_one_by_one, decode_messages, mark_redriven, parked_seqs
from services.projector.runner import prepare_batch
from services.store.db import RETRYABLE
from services.stream_reader import StreamMessage

log = structlog.get_logger()

LIVE_PROJECTOR = "main"
SNAPSHOT_NAME = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,63}")  # whole: fullmatch

Progress = Callable[[int, int], None]  # (events read, events expected)
BATCH_MAX = 50_000  # events a scratch transaction: the scratch tables are private until the swap
SCRATCH_USES = ("rebuild", "verify", "snapshot")  # a scratch schema is named touchline_<use>_<random>
# Advisory lock class of a scratch schema's owner: held by the connection that builds it, for as
# long as it does. PostgreSQL releases it when that connection ends, however its process died.
SCRATCH_OWNER_LOCK = 7215005


@dataclass
class ReplayStats:
    read: int = 0  # log messages read
    applied: int = 0  # first copies applied to the read models
    last_seq: int = 0  # the log position the result stands at
    seconds: float = 0.0
    rows_replaced: int = 0  # a rebuild: live rows it found wrong, missing or extra, and set right
    # Log messages this code cannot decode (an event of a newer catalog, a bug), left out as the
    # live projector leaves them out: it parks them, and `touchline parked redrive` applies them later.
    undecodable: list[int] = field(default_factory=list)
    # Events a read model failed to apply (a projection's bug), left out alike: the live projector
    # parked them too, so that a rebuild gives the read models the live ones are.
    failed: list[int] = field(default_factory=list)
    # Of those, the ones the live projector applied (``Build.judge_against_live``): this code is not
    # the live projector's, and a rebuild or a snapshot refuses to stand on it (``UnlikeLive``).
    not_parked: list[int] = field(default_factory=list)
    # Events the live projector parked and this replay applied (this code decodes and applies
    # them): a rebuild takes them off the parked list, its read models holding them now.
    parked_applied: list[int] = field(default_factory=list)

    def add(self, other: ReplayStats) -> None:
        """Another workspace's replay counted in (``seconds`` and ``last_seq`` are the caller's)."""
        self.read += other.read
        self.applied += other.applied
        self.rows_replaced += other.rows_replaced
        self.undecodable += other.undecodable
        self.failed += other.failed
        self.not_parked += other.not_parked
        self.parked_applied += other.parked_applied

    @property
    def events_per_second(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0


class UnlikeLive(RuntimeError):
    """A replay left out events the live projector applied: it would not give the live read models."""

    def __init__(self, workspace: str, stats: ReplayStats, doing: str) -> None:
        reasons = [f"log seq {shown_seqs(seqs)}: this code {what}" for seqs, what in (
            ([seq for seq in stats.undecodable if seq in stats.not_parked], "cannot decode"),
            ([seq for seq in stats.failed if seq in stats.not_parked], "failed to apply (its log has why)"),
        ) if seqs]
        super().__init__(
            f"{'; '.join(reasons)}; yet the live projector applied them, so {doing} of workspace {workspace}"
            f" would leave them out: nothing was changed. Replay with the live projector's version of"
            f" Touchline, or fix the read model and let the projector run it first"
        )


def shown_seqs(seqs: list[int], most: int = 10) -> str:
    return ", ".join(str(seq) for seq in seqs[:most]) + (", ..." if len(seqs) > most else "")


@dataclass
class Difference:
    """One way a live row differs from the rebuilt one."""

    table: str
    key: dict[str, Any]
    field: str | None  # None: the whole row is on one side only
    live: Any
    rebuilt: Any

    def describe(self) -> str:
        who = ", ".join(f"{name} {value}" for name, value in self.key.items() if name != "workspace") or "row"
        if self.field is None:
            if self.rebuilt is None:
                return f"{self.table}: {who}: in the live read model but not rebuilt from the log"
            return f"{self.table}: {who}: rebuilt from the log but missing from the live read model"
        return f"{self.table}: {who}: {self.field}: live {_show(self.live)}, rebuilt {_show(self.rebuilt)}"


_ABSENT = object()


def _show(value: Any) -> str:
    return "absent" if value is _ABSENT else json.dumps(value, default=str)


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def read_model_tables(projections: list[Projection] | None = None) -> list[str]:
    if projections is None:
        from projections.registry import all_projections

        projections = all_projections()
    tables: list[str] = []
    for projection in projections:
        for table in projection.tables:
            if table not in tables:
                tables.append(table)
    return tables


def snapshot_schema(workspace: str, name: str) -> str:
    return "snapshot_" + hashlib.sha256(f"{workspace}\x00{name}".encode()).hexdigest()[:24]


# --- reading the log --------------------------------------------------------------------


class LogReader:
    """One workspace's log subject, read once, in order, in stretches up to given positions."""

    def __init__(self, js: JetStreamContext, workspace: str, batch_max: int = BATCH_MAX) -> None:
        self.js = js
        self.subject = log_subject(workspace)
        self.batch_max = batch_max
        self.sub = None
        self.held: list[StreamMessage] = []
        self.reached = 0  # every message of the subject with seq <= reached has been handed out

    async def last_on_subject(self) -> int:
        try:
            return (await self.js.get_last_msg(LOG_STREAM, self.subject)).seq or 0
        except nats.js.errors.NotFoundError:
            return 0

    async def count(self) -> int:
        info = await self.js.stream_info(LOG_STREAM, subjects_filter=self.subject)
        return (info.state.subjects or {}).get(self.subject, 0)

    async def _next(self, end: int, wait: float) -> list[StreamMessage]:
        """Up to ``batch_max`` messages: what has arrived, topped up until the batch is full or
        reaches ``end`` (bigger batches: fewer, larger statements in the scratch schema)."""
        messages = self.held or await self.sub.next_batch(self.batch_max, wait)
        self.held = []
        while messages and len(messages) < self.batch_max and messages[-1].seq < end:
            more = await self.sub.next_batch(self.batch_max - len(messages), 0.05)
            if not more:
                break
            messages += more
        return messages

    async def read_until(self, until: int, stall: float = 60.0) -> AsyncIterator[list[StreamMessage]]:
        if until <= self.reached:
            return
        end = min(until, await self.last_on_subject())
        if end <= self.reached and not self.held:
            self.reached = max(self.reached, end)
            return
        if self.sub is None:
            self.sub = await read_log(self.js, self.reached + 1, self.subject)
        waited_since = time.monotonic()
        while True:
            messages = await self._next(end, 1.0)
            if not messages:
                if time.monotonic() - waited_since > stall:
                    raise TimeoutError(f"the log stopped delivering {self.subject} before seq {end}")
                continue
            waited_since = time.monotonic()
            cut = len(messages)
            while cut and messages[cut - 1].seq > until:
                cut -= 1
            take, self.held = messages[:cut], messages[cut:]
            if take:
                yield take
            if self.held:
                self.reached = until
                return
            if cut and messages[cut - 1].seq >= end:
                self.reached = end
                return

    async def close(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()
            self.sub = None


# --- dedupe without writing ------------------------------------------------------------


class FirstCopies:
    """First copies, judged in memory while the log is read from its start, without writing.

    ``event_index`` keeps for ever the lowest sequence of every (workspace, source, id) the log
    holds (the projector lowers it when an earlier copy turns up), and a replay reads its
    subjects from sequence 1 in order: so the first copy of a key this replay meets is exactly
    the one ``event_index`` names, and every later one is a duplicate. No query per batch; the
    keys are kept as ``event_index`` keeps them (16 bytes), about 70 bytes an event.
    """

    def __init__(self) -> None:
        self.seen: set[bytes] = set()

    def first_copies(self, batch: list[LoggedEvent]) -> list[LoggedEvent]:
        seen, firsts = self.seen, []
        for logged in batch:
            digest = index_key(logged.workspace, logged.event.source, logged.event.id)
            if digest not in seen:
                seen.add(digest)
                firsts.append(logged)
        return firsts


# --- building into a schema ------------------------------------------------------------


class Build:
    """One workspace's read models built from its log into schema ``schema``, on one connection.

    The scratch tables are private until a swap or a rename, so they are built the cheap way:
    ``UNLOGGED`` when they are thrown away afterwards (rebuild, verify: a crash loses nothing
    the log cannot give again), with only their unique indexes (which ``ON CONFLICT`` needs; the
    others are built once at the end, and only for a snapshot that readers will query), in
    batches of up to ``BATCH_MAX`` events, each committed without waiting for the WAL flush.
    """

    def __init__(
        self,
        conn: asyncpg.Connection,
        js: JetStreamContext,
        workspace: str,
        schema: str,
        *,
        projections: list[Projection] | None = None,
        received_by: dt.datetime | None = None,
        progress: Progress | None = None,
        batch_max: int = BATCH_MAX,
        unlogged: bool = True,
    ) -> None:
        if projections is None:
            from projections.registry import all_projections

            projections = all_projections()
        self.conn = conn
        self.workspace = workspace
        self.schema = schema
        self.projections = projections
        self.tables = read_model_tables(projections)
        self.received_by = received_by
        self.progress = progress
        self.unlogged = unlogged
        self.deferred_indexes: list[str] = []  # CREATE INDEX statements of the scratch schema
        self.reader = LogReader(js, workspace, batch_max)
        self.first_left_out: int | None = None  # the lowest seq ``received_by`` kept out
        self.dedupe = FirstCopies()
        self.stats = ReplayStats()
        self.expected = 0
        self.started = time.perf_counter()

    async def create(self) -> None:
        # Owned before it exists, so that another replay's clean-up never takes it for abandoned.
        await self.conn.execute("SELECT pg_advisory_lock($1, hashtext($2))", SCRATCH_OWNER_LOCK, self.schema)
        await drop_abandoned_scratch(self.conn)
        schema = ident(self.schema)
        kind = "UNLOGGED TABLE" if self.unlogged else "TABLE"
        await self.conn.execute(
            f"CREATE SCHEMA {schema};"
            + "".join(f"CREATE {kind} {schema}.{ident(t)} (LIKE public.{ident(t)} INCLUDING ALL);" for t in self.tables)
        )
        # Non-unique indexes only slow the load down: note them, drop them, build them at the end if needed.
        secondary = await self.conn.fetch(
            "SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS definition"
            " FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
            " WHERE c.relnamespace = $1::regnamespace AND NOT i.indisunique ORDER BY 1",
            self.schema,
        )
        if secondary:
            await self.conn.execute("".join(f"DROP INDEX {row['name']};" for row in secondary))
        self.deferred_indexes = [row["definition"] for row in secondary]
        await self.conn.execute(f"SET search_path = {schema}, public")
        self.expected = await self.reader.count()
        self._report()

    async def build_indexes(self) -> None:
        """The secondary indexes of the live tables, built once after the load."""
        for definition in self.deferred_indexes:
            await self.conn.execute(definition)
        self.deferred_indexes = []

    async def drop(self, *, keep: bool = False) -> None:
        await self.reader.close()
        await self.conn.execute("RESET search_path")
        if not keep:
            await self.conn.execute(f"DROP SCHEMA IF EXISTS {ident(self.schema)} CASCADE")
        await self.conn.execute("SELECT pg_advisory_unlock($1, hashtext($2))", SCRATCH_OWNER_LOCK, self.schema)

    async def run_until(self, until: int, *, in_transaction: bool = False) -> None:
        """Apply the workspace's events up to log sequence ``until``; one transaction per batch
        (whose commit need not wait for the disk: only scratch tables are written) unless the
        caller already holds one. Pipelined: the next batch is read and decoded while
        PostgreSQL applies this one."""
        decoded: asyncio.Queue = asyncio.Queue(maxsize=2)

        async def read() -> None:
            try:
                async for messages in self.reader.read_until(until):
                    # In a worker thread: the event loop keeps answering the transaction in flight.
                    await decoded.put((len(messages), await asyncio.to_thread(self._prepare, messages)))
            except Exception as err:  # handed over, raised by the applying side
                await decoded.put(err)
                return
            await decoded.put(None)

        reading = asyncio.create_task(read())
        try:
            while (item := await decoded.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                read, firsts = item
                await self._apply(firsts, in_transaction=in_transaction)
                self.stats.read += read
                self._report()
        finally:
            if not reading.done():
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading
        self.stats.last_seq = max(self.stats.last_seq, self.reader.reached)
        self.stats.seconds = time.perf_counter() - self.started

    def _prepare(self, messages: list[StreamMessage]) -> PreparedBatch:
        """The batch's first copies with every projection's pure work done (``prepare``, no I/O),
        while the previous batch is in PostgreSQL."""
        decoded, undecodable = decode_messages(messages)
        if undecodable:
            log.warning("replay.undecodable_left_out", workspace=self.workspace,
                        seqs=[poison.seq for poison in undecodable], error=undecodable[0].error)
            self.stats.undecodable.extend(poison.seq for poison in undecodable)
        firsts = self.dedupe.first_copies(decoded)  # before the time filter: a later copy stays a duplicate
        if self.received_by is not None:
            kept = [logged for logged in firsts if logged.received_at <= self.received_by]
            if len(kept) < len(firsts) and self.first_left_out is None:  # batches come in log order
                self.first_left_out = next(logged.seq for logged in firsts if logged.received_at > self.received_by)
            firsts = kept
        return prepare_batch(self.projections, firsts)

    async def _apply(self, firsts: PreparedBatch, *, in_transaction: bool) -> None:
        """The batch in a transaction of its own, or in a savepoint of the caller's; if a read model
        fails it, again event by event as the projector does, each event in a savepoint."""
        failed = []
        try:
            async with self._batch_transaction(in_transaction):
                for projection in self.projections:
                    await projection.apply(self.conn, firsts)
        except RETRYABLE:
            raise
        except Exception as err:
            log.warning("replay.batch_failed", workspace=self.workspace, events=len(firsts), error=repr(err))
            async with self._batch_transaction(in_transaction):
                failed = await apply_one_by_one(self.conn, f"replay of {self.workspace}", self.projections, firsts)
            self.stats.failed.extend(poison.seq for poison in failed)
        self.stats.applied += len(firsts) - len(failed)

    @contextlib.asynccontextmanager
    async def _batch_transaction(self, in_transaction: bool) -> AsyncIterator[None]:
        # Its own transaction, not a savepoint, unless the caller holds one: a batch is up to
        # BATCH_MAX events, and a failing one is simply rolled back and applied again.
        async with self.conn.transaction():
            if not in_transaction:  # only scratch tables are written: the commit need not wait for the disk
                await self.conn.execute("SET LOCAL synchronous_commit = off")
            yield

    async def judge_against_live(self, upto: int) -> None:
        """Which events up to ``upto`` this replay left out that the live projector applied
        (``stats.not_parked``), and which it applied that the live projector parked
        (``stats.parked_applied``). ``upto`` is at most the live projector's position: beyond it
        nothing is parked yet."""
        parked = await parked_seqs(self.conn, LIVE_PROJECTOR, self.workspace, upto)
        left_out = {seq for seq in self.stats.undecodable + self.stats.failed if seq <= upto}
        self.stats.not_parked = sorted(left_out - parked)
        self.stats.parked_applied = sorted(parked - left_out)

    def refuse_unlike_live(self, doing: str) -> None:
        if self.stats.not_parked:
            raise UnlikeLive(self.workspace, self.stats, doing)

    def _report(self) -> None:
        if self.progress is not None:
            self.expected = max(self.expected, self.stats.read)
            self.progress(self.stats.read, self.expected)

    def finish_progress(self) -> None:
        if self.progress is not None:
            self.progress(self.stats.read, self.stats.read)


def scratch_schema(use: str) -> str:
    """A new scratch schema's name, of a form ``drop_abandoned_scratch`` recognises."""
    assert use in SCRATCH_USES, use
    return f"touchline_{use}_{uuid.uuid4().hex[:12]}"


async def drop_abandoned_scratch(conn: asyncpg.Connection) -> list[str]:
    """Drop the scratch schemas whose replay is gone (its process was killed, or lost its
    database connection, before it could drop them): those whose owner lock is free."""
    names = await conn.fetch(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE ANY ($1::text[]) ORDER BY 1",
        [f"touchline\\_{use}\\_%" for use in SCRATCH_USES],
    )
    dropped = []
    for (name,) in names:
        if await conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", SCRATCH_OWNER_LOCK, name):
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {ident(name)} CASCADE")
                dropped.append(name)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1, hashtext($2))", SCRATCH_OWNER_LOCK, name)
    if dropped:
        log.info("replay.abandoned_scratch_dropped", schemas=dropped)
    return dropped


async def live_position(conn: asyncpg.Connection, *, lock: bool = False) -> int:
    position = await conn.fetchval(
        "SELECT position FROM public.projector_positions WHERE name = $1" + (" FOR UPDATE" if lock else ""),
        LIVE_PROJECTOR,
    )
    if position is None:
        raise RuntimeError(f"no live projector position {LIVE_PROJECTOR!r}: has the projector ever started?")
    return position


async def _columns(conn: asyncpg.Connection, table: str) -> tuple[list[str], list[str]]:
    """(insertable columns, primary-key columns) of a live table."""
    columns = [
        row["attname"]
        for row in await conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0"
            " AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            f"public.{ident(table)}",
        )
    ]
    key = [
        row["attname"]
        for row in await conn.fetch(
            # The key's own columns: indkey lists a key's INCLUDE columns after them, and those
            # may be null (touch_events.campaign_id), which a join never matches.
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a"
            " ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)"
            " WHERE i.indrelid = $1::regclass AND i.indisprimary"
            " AND array_position(i.indkey::int2[], a.attnum) <= i.indnkeyatts"
            " ORDER BY array_position(i.indkey::int2[], a.attnum)",
            f"public.{ident(table)}",
        )
    ]
    return columns, key


# --- the three uses --------------------------------------------------------------------


async def rebuild(
    pool: asyncpg.Pool, js: JetStreamContext, workspace: str, *, progress: Progress | None = None,
    projections: list[Projection] | None = None, batch_max: int = BATCH_MAX,
) -> ReplayStats:
    """Rebuild the workspace's live read models from its log and swap them in atomically."""
    async with pool.acquire() as conn:
        build = Build(conn, js, workspace, scratch_schema("rebuild"),
                      projections=projections, progress=progress, batch_max=batch_max)
        try:
            await build.create()
            await build.run_until(await live_position(conn))
            await build.run_until(await live_position(conn))  # catch up before taking the lock
            async with conn.transaction():
                position = await live_position(conn, lock=True)
                await conn.execute("SET LOCAL work_mem = '256MB'")  # the swap's hash joins stay in memory
                await build.run_until(position, in_transaction=True)
                await build.judge_against_live(position)
                build.refuse_unlike_live("a rebuild")
                for table in build.tables:
                    build.stats.rows_replaced += await swap_in(conn, table, build.schema, workspace)
                await mark_redriven(conn, LIVE_PROJECTOR, build.stats.parked_applied)
            build.stats.last_seq = position
            build.finish_progress()
        finally:
            await build.drop()
    return build.stats


def rebuild_many(
    nats_url: str, database_url: str, workspaces: list[str], *, processes: int = 2,
    progress: Progress | None = None,
) -> ReplayStats:
    """``rebuild`` of every workspace, by ``processes`` worker processes that take the next
    workspace when done with one (each rebuild is independent and swaps under the projector's
    row lock, so they may overlap; a process each puts both cores to work: a rebuild alone keeps
    one Python thread busy while PostgreSQL waits, then the other way round)."""
    import multiprocessing
    import queue as queues

    context = multiprocessing.get_context("spawn")
    todo, out = context.Queue(), context.Queue()
    for workspace in workspaces:
        todo.put(workspace)
    workers = [context.Process(target=_rebuild_worker, args=(nats_url, database_url, todo, out), daemon=True)
               for _ in range(max(1, min(processes, len(workspaces))))]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    total, done, running, failure = ReplayStats(), {}, len(workers), None
    try:
        while running:
            try:
                kind, *rest = out.get(timeout=1.0)
            except queues.Empty:
                if not any(worker.is_alive() for worker in workers):
                    raise RuntimeError("a rebuild process died without a word")
                continue
            if kind == "progress":
                workspace, read = rest
                done[workspace] = read
            elif kind == "rebuilt":
                workspace, stats = rest
                done[workspace] = stats.read
                total.add(stats)
            elif kind == "failed":
                failure = failure or rest[0]
            else:  # "exit"
                running -= 1
            if progress is not None:
                progress(sum(done.values()), 0)
    finally:
        for worker in workers:
            worker.join(timeout=30)
    if failure is not None:
        raise RuntimeError(f"rebuild failed: {failure}")
    total.seconds = time.perf_counter() - started
    return total


def _rebuild_worker(nats_url: str, database_url: str, todo, out) -> None:
    import queue as queues

    from services.nats_io import connect_client
    from services.runtime import loop
    from services.store.db import create_pool

    async def run() -> None:
        pool = await create_pool(database_url, max_size=2)
        nc = await connect_client(nats_url, pending_size=256 * 1024 * 1024)
        try:
            js = nc.jetstream(timeout=30)
            while True:
                try:
                    workspace = todo.get(timeout=1.0)
                except queues.Empty:
                    return
                last = 0.0

                def report(read: int, _expected: int, workspace: str = workspace) -> None:
                    nonlocal last
                    if time.monotonic() - last > 0.2:
                        last = time.monotonic()
                        out.put(("progress", workspace, read))

                stats = await rebuild(pool, js, workspace, progress=report)
                out.put(("rebuilt", workspace, stats))
        finally:
            await nc.close()
            await pool.close()

    gc_tuning.tune_for_streaming()
    try:
        loop.run(run())
    except BaseException as err:
        out.put(("failed", f"{type(err).__name__}: {err}"))
    finally:
        out.put(("exit",))


async def swap_in(conn: asyncpg.Connection, table: str, schema: str, workspace: str) -> int:
    """Make the workspace's live rows of ``table`` exactly the rebuilt ones, writing only the rows
    that differ (as REFRESH MATERIALIZED VIEW CONCURRENTLY does): one join by primary key finds the
    live rows without a binary-identical rebuilt one (``*=``) and the rebuilt rows without an
    identical live one; only those are deleted and inserted. A rebuild that finds the read models
    right rewrites nothing (no index writes, no bloat, a short hold of the projector's lock).
    Row addresses (ctid) stay valid between the statements: the caller holds the live projector's
    row lock, and only the projector writes read-model rows. Returns how many rows differed (by
    key: changed, missing, or extra)."""
    columns, key = await _columns(conn, table)
    live, rebuilt = f"public.{ident(table)}", f"{ident(schema)}.{ident(table)}"
    names = ", ".join(map(ident, columns))
    if not key:  # no primary key (no read model today): replace every row, each counted
        await conn.execute(f"DELETE FROM {live} WHERE workspace = $1", workspace)
        status = await conn.execute(
            f"INSERT INTO {live} ({names}) OVERRIDING SYSTEM VALUE"
            f" SELECT {names} FROM {rebuilt} WHERE workspace = $1",
            workspace,
        )
        return int(status.rsplit(" ", 1)[1])
    keys = ", ".join(f"t.{ident(c)}" for c in key)
    # row_ctid: a name no read-model column has (touch_events has a column "at").
    side = "(SELECT t.ctid AS row_ctid, t AS whole, {keys} FROM {table} AS t WHERE t.workspace = $1)"
    differing = await conn.fetch(
        f"SELECT l.row_ctid AS gone, r.row_ctid AS came FROM {side.format(keys=keys, table=live)} AS l"
        f" FULL JOIN {side.format(keys=keys, table=rebuilt)} AS r"
        f" ON {' AND '.join(f'l.{ident(c)} = r.{ident(c)}' for c in key)}"
        f" WHERE l.row_ctid IS NULL OR r.row_ctid IS NULL OR NOT (l.whole *= r.whole)",
        workspace,
    )
    gone = [row["gone"] for row in differing if row["gone"] is not None]
    came = [row["came"] for row in differing if row["came"] is not None]
    if gone:
        await conn.execute(f"DELETE FROM {live} WHERE ctid = ANY($1::tid[])", gone)
    if came:
        await conn.execute(
            f"INSERT INTO {live} ({names}) OVERRIDING SYSTEM VALUE"
            f" SELECT {names} FROM {rebuilt} WHERE ctid = ANY($1::tid[])",
            came,
        )
    return len(differing)


async def build_snapshot(
    pool: asyncpg.Pool, js: JetStreamContext, workspace: str, name: str, *,
    until_seq: int | None = None, until_time: dt.datetime | None = None,
    progress: Progress | None = None, projections: list[Projection] | None = None,
) -> ReplayStats:
    """The read models as of ``until_seq`` or ``until_time`` (received by then), kept as snapshot ``name``."""
    if not SNAPSHOT_NAME.fullmatch(name):
        raise ValueError("snapshot name: 1-64 of a-z 0-9 _ . : -, starting with a letter or digit")
    if (until_seq is None) == (until_time is None):
        raise ValueError("give exactly one of until_seq and until_time")
    final = snapshot_schema(workspace, name)
    async with pool.acquire() as conn:
        build = Build(conn, js, workspace, scratch_schema("snapshot"),
                      projections=projections, progress=progress, received_by=until_time,
                      unlogged=False)  # kept: it must survive a crash
        kept = False
        try:
            await build.create()
            log_end = (await js.stream_info(LOG_STREAM)).state.last_seq
            read_to = min(until_seq, log_end) if until_seq is not None else log_end
            await build.run_until(read_to)
            # Where it stands: every event of the workspace up to this seq is in it, and it never
            # moves (what `?min_seq=` on it is checked against). Every one up to log_end was in the
            # log when the build started; a time keeps out those received later, which arrive in
            # about, not exactly, their log order: it stands before the first one it left out.
            build.stats.last_seq = read_to
            if build.first_left_out is not None:
                build.stats.last_seq = min(build.stats.last_seq, build.first_left_out - 1)
            await build.judge_against_live(min(build.stats.last_seq, await live_position(conn)))
            build.refuse_unlike_live("a snapshot")
            await build.build_indexes()  # readers query it like the live tables
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(7215004)")
                await hold_snapshot(conn, workspace, name, to_change=True)
                await conn.execute(f"DROP SCHEMA IF EXISTS {ident(final)} CASCADE")
                await conn.execute(f"ALTER SCHEMA {ident(build.schema)} RENAME TO {ident(final)}")
                await conn.execute(
                    "INSERT INTO public.snapshots"
                    " (workspace, name, schema_name, until_seq, until_time, last_seq, events)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7)"
                    " ON CONFLICT (workspace, name) DO UPDATE SET until_seq = excluded.until_seq,"
                    " until_time = excluded.until_time, last_seq = excluded.last_seq,"
                    " events = excluded.events, created_at = now()",
                    workspace, name, final, until_seq, until_time, build.stats.last_seq, build.stats.applied,
                )
            kept = True  # the schema lives on, renamed to `final`
            build.finish_progress()
        finally:
            await build.drop(keep=kept)
    return build.stats


async def hold_snapshot(conn: asyncpg.Connection, workspace: str, name: str, *, to_change: bool = False) -> None:
    """Hold snapshot ``name`` for the rest of the caller's transaction: shared to read it, exclusive
    to replace or drop it. A read took the schema's name, then its tables; a drop that committed
    in between left the name resolving to the live tables in public (an outside audit: a read of a
    snapshot being dropped answered 200 with the live numbers), and dropping the tables one by one
    met a read of several in a deadlock. Now a drop waits for the reads in progress, and a read
    that comes after it finds no snapshot (404), or the new one."""
    lock = "pg_advisory_xact_lock" if to_change else "pg_advisory_xact_lock_shared"
    await conn.execute(f"SELECT {lock}(hashtextextended($1, 0))", f"touchline.snapshot.{workspace}/{name}")


async def drop_snapshot(pool: asyncpg.Pool, workspace: str, name: str) -> bool:
    async with pool.acquire() as conn:
        async with conn.transaction():
            await hold_snapshot(conn, workspace, name, to_change=True)
            schema = await conn.fetchval(
                "DELETE FROM snapshots WHERE workspace = $1 AND name = $2 RETURNING schema_name", workspace, name
            )
            if schema is not None:
                await conn.execute(f"DROP SCHEMA IF EXISTS {ident(schema)} CASCADE")
    return schema is not None


async def snapshot_row(conn: asyncpg.Connection, workspace: str, name: str) -> asyncpg.Record | None:
    """(schema_name, last_seq) of the workspace's snapshot ``name``, or None; read it under
    ``hold_snapshot``. Every event of the workspace up to ``last_seq`` is in the snapshot."""
    return await conn.fetchrow(
        "SELECT schema_name, last_seq FROM public.snapshots WHERE workspace = $1 AND name = $2", workspace, name
    )


async def verify(
    pool: asyncpg.Pool, js: JetStreamContext, workspace: str, *, progress: Progress | None = None,
    projections: list[Projection] | None = None,
) -> tuple[ReplayStats, list[Difference]]:
    """Rebuild into a scratch schema and compare every row with the live read models."""
    async with pool.acquire() as conn:
        build = Build(conn, js, workspace, scratch_schema("verify"),
                      projections=projections, progress=progress)
        try:
            await build.create()
            await build.run_until(await live_position(conn))
            await build.run_until(await live_position(conn))
            async with conn.transaction(isolation="repeatable_read"):
                # The first statement fixes the snapshot: the live tables stand at exactly `position`.
                position = await live_position(conn)
                await build.run_until(position, in_transaction=True)
                await build.judge_against_live(position)
                differences = []
                for table in build.tables:
                    differences += await compare_table(conn, table, build.schema, workspace)
            build.stats.last_seq = position
            build.finish_progress()
        finally:
            await build.drop()
    return build.stats, differences


async def compare_table(conn: asyncpg.Connection, table: str, schema: str, workspace: str) -> list[Difference]:
    columns, key = await _columns(conn, table)
    if key:
        on = " AND ".join(f"l.{ident(c)} = r.{ident(c)}" for c in key)
    else:  # no primary key: rows match only whole
        key, on = columns, "to_jsonb(l) = to_jsonb(r)"
    order = ", ".join(f"coalesce(l.{ident(c)}, r.{ident(c)})" for c in key)
    # A json column (the audit trail's envelopes) is compared as the text it holds, and, where the
    # texts differ, as the values it holds (below): to_jsonb read its numbers as PostgreSQL numerics,
    # and an event may hold one past their range (1e-20000 in a field the catalog does not know),
    # which stopped the whole --verify. (Envelopes stored before migration 011 hold jsonb's text
    # of the event, its keys reordered: the same values, another text than a rebuild writes.)
    texts = await conn.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND atttypid = 'json'::regtype",
        f"public.{ident(table)}")
    as_text = {row["attname"] for row in texts}
    selected = ", ".join(f"{ident(c)}::text AS {ident(c)}" if c in as_text else ident(c) for c in columns)
    rows = await conn.fetch(
        f"SELECT to_jsonb(l)::text AS live, to_jsonb(r)::text AS rebuilt"
        f" FROM (SELECT {selected} FROM public.{ident(table)} WHERE workspace = $1) l"
        f" FULL JOIN (SELECT {selected} FROM {ident(schema)}.{ident(table)} WHERE workspace = $1) r ON {on}"
        f" WHERE to_jsonb(l) IS DISTINCT FROM to_jsonb(r) ORDER BY {order}",
        workspace,
    )
    differences: list[Difference] = []
    for row in rows:
        live = json.loads(row["live"]) if row["live"] else None
        rebuilt = json.loads(row["rebuilt"]) if row["rebuilt"] else None
        either = live or rebuilt
        row_key = {name: either.get(name) for name in key}
        if live is None or rebuilt is None:
            differences.append(Difference(table, row_key, None, live, rebuilt))
            continue
        for name in columns:
            if name in as_text and _same_json(live.get(name), rebuilt.get(name)):
                continue
            for path, a, b in diff_values(name, live.get(name), rebuilt.get(name)):
                differences.append(Difference(table, row_key, path, a, b))
    return differences


def _same_json(live: str | None, rebuilt: str | None) -> bool:
    """Two JSON texts hold the same value (numbers exactly, keys in any order)."""
    if live is None or rebuilt is None:
        return live == rebuilt
    try:
        return decode_exact(live) == decode_exact(rebuilt)
    except (msgspec.DecodeError, RecursionError):
        return live == rebuilt


def diff_values(path: str, live: Any, rebuilt: Any) -> list[tuple[str, Any, Any]]:
    """Where two JSON values differ, as (dotted path, live, rebuilt); floats equal within 1e-9."""
    if isinstance(live, dict) and isinstance(rebuilt, dict):
        found = []
        for name in sorted(set(live) | set(rebuilt), key=str):
            found += diff_values(f"{path}.{name}", live.get(name, _ABSENT), rebuilt.get(name, _ABSENT))
        return found
    if isinstance(live, list) and isinstance(rebuilt, list) and len(live) == len(rebuilt):
        found = []
        for index, (a, b) in enumerate(zip(live, rebuilt)):
            found += diff_values(f"{path}[{index}]", a, b)
        return found
    if isinstance(live, float) or isinstance(rebuilt, float):
        if (
            isinstance(live, (int, float)) and isinstance(rebuilt, (int, float))
            and not isinstance(live, bool) and not isinstance(rebuilt, bool)
            and math.isclose(live, rebuilt, rel_tol=1e-9, abs_tol=1e-12)
        ):
            return []
    return [] if live == rebuilt else [(path, live, rebuilt)]
