"""The NATS way in (CONTRACT.md section 3): producers publish structured CloudEvents to
``touchline.in.{ws}`` with JetStream; the inbox reader judges each one and moves it into the log
or the rejected list, through the same ingestor as HTTP.

The inbox is a Limits stream (a producer's ack still means "fsynced in the inbox"). Like the
projector, the reader keeps its position in PostgreSQL (``inbox_positions``) and reads with an
ordered consumer from that position + 1: no acks, no redelivery. Each batch (up to 5,000 messages,
every workspace in it judged together) is handled inside one transaction that locks the position
row ``FOR UPDATE`` and checks it is still what this process expects, appends the accepted events
to the log (fsynced), writes the rejected ones, and moves the position. The first batch after a
(re)start takes the lock before it appends; a batch pipelined behind another appends first, then
asks for the lock, which it gets once the batch before has committed (``_store_in_flight``). So:

* a crash before the commit re-reads the batch; the permanent ``event_index`` (and JetStream's
  ``Nats-Msg-Id`` window) answer the events already logged as duplicates: nothing is doubled;
* a second process running the reader (several API workers) waits on the row lock while the
  first handles a batch, then finds the position moved and is fenced (it re-reads the position and
  starts again from there) before it has logged anything: batches are never handled twice.

Messages up to the committed position are purged from the stream every ``PURGE_EVERY`` messages
and whenever the reader is idle. An inbox left by an older version as a WorkQueue stream (its
retention cannot be changed in place) is retired at start: its subjects are moved aside so that
producers get no ack (and retry) instead of storing there, what it still holds is drained through
its old durable consumer, and it is recreated as a Limits stream, all under the position lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import asyncpg
import nats.errors
import nats.js.errors
import structlog
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from events.log import workspace_of_subject
from services.ingest import Appended, Ingestor, Judged, IngestUnavailable, judge
from services.nats_io import INBOX_STREAM_CONFIG, read_log
from services.log_position import Backoff, CommittedPosition, Fenced
from services.runtime.loop import cancel_and_wait
from services.store.db import RETRYABLE, UNAVAILABLE as DATABASE_UNAVAILABLE
from services.stream_reader import StreamMessage

log = structlog.get_logger()

# The durable consumer of the WorkQueue inbox of older versions; used only to drain it once.
INBOX_CONSUMER = "touchline-inbox"
BATCH_MAX = 5000
# Wait this long for a message before purging what is committed (idle).
IDLE_SECONDS = 1.0
PURGE_EVERY = 20_000
# Start again from the committed position after this long when the log or PostgreSQL failed.
RETRY_DELAY_SECONDS = 1.0

KnownWorkspace = Callable[[str], Awaitable[bool]]


class InboxReader:
    def __init__(
        self,
        ingestor: Ingestor,
        known_workspace: KnownWorkspace,
        *,
        name: str = "main",
        batch_max: int = BATCH_MAX,
        config: StreamConfig = INBOX_STREAM_CONFIG,
    ) -> None:
        self.config = config  # tests read a stream of their own
        self.stream = config.name
        self.subjects = config.subjects[0]
        self.ingestor = ingestor
        self.js = ingestor.js
        self.pool = ingestor.pool
        self.known_workspace = known_workspace
        self.name = name
        self.batch_max = batch_max
        self.committed = CommittedPosition("inbox_positions", name)
        self.position = 0
        self.purged = 0
        self.handled_total = 0
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        # A closed connection is the service stopping (connect() reconnects for ever otherwise).
        fenced = Backoff("inbox.fenced", log.info, reader=self.name)
        while not self._stopping.is_set() and not self.ingestor.nc.is_closed:
            handled = self.handled_total
            try:
                await self._retire_work_queue_inbox()
                await self._run_from_committed_position()
            except asyncio.CancelledError:
                raise
            except Fenced as err:
                if self.handled_total != handled:
                    fenced.got_on()  # it was the reader until now
                await fenced.pause(reason=str(err))
            except (IngestUnavailable, *RETRYABLE, OSError, asyncpg.InterfaceError, nats.errors.Error) as err:
                log.warning("inbox.retry", reader=self.name, error=str(err) or repr(err))
                await asyncio.sleep(RETRY_DELAY_SECONDS)
            except Exception as err:  # keep the way in alive whatever happens; start again
                log.error("inbox.failed", reader=self.name, error=repr(err), exc_info=err)
                await asyncio.sleep(RETRY_DELAY_SECONDS)

    async def _run_from_committed_position(self) -> None:
        self.position = await self.committed.load(self.pool)
        info = await self.js.stream_info(self.stream)
        if info.state.last_seq < self.position:
            await self._restart_position(info.state.last_seq)
        self.purged = max(self.purged, info.state.first_seq - 1)
        sub = await read_log(self.js, self.position + 1, self.subjects, self.stream)
        log.info("inbox.started", reader=self.name, position=self.position)
        # A pipeline: the next batch is read and judged while the current one is stored, and its
        # transaction opens as soon as the current one's events are in the log, to look up and
        # append its own (the current batch's keys are known duplicates: their index rows may not
        # be committed yet); then it waits for the position lock, i.e. for the current batch's
        # commit, and writes its index rows and position. The log keeps the inbox's order.
        ready: asyncio.Queue[JudgedBatch | None] = asyncio.Queue(maxsize=1)
        reader = asyncio.create_task(self._read_ahead(sub, ready))
        in_flight: _InFlight | None = None
        try:
            while not self._stopping.is_set():
                try:
                    batch = await asyncio.wait_for(ready.get(), IDLE_SECONDS + 1.0)
                except asyncio.TimeoutError:
                    batch = None
                if reader.done():
                    reader.result()  # the reader's error, if it failed
                    raise RuntimeError("the inbox stopped being read")
                if batch is not None:
                    previous = in_flight
                    if previous is not None:
                        await previous.appended.wait()
                    expected = previous.batch.last if previous is not None else self.position
                    in_flight = _InFlight(batch, expected, previous)
                    in_flight.task = asyncio.create_task(self._store_in_flight(in_flight))
                    if previous is not None:
                        await self._finish(previous)
                        previous.previous = None  # done: let the chain of batches go
                elif in_flight is not None:
                    await self._finish(in_flight)
                    in_flight = None
                if self.position - self.purged >= PURGE_EVERY or (batch is None and self.position > self.purged):
                    await self._purge()
            if in_flight is not None:
                await self._finish(in_flight)
                in_flight = None
        finally:
            if in_flight is not None:
                await cancel_and_wait(in_flight.task)
            await cancel_and_wait(reader)
            with contextlib.suppress(Exception):  # the connection may already be closing
                await sub.unsubscribe()

    async def _read_ahead(self, sub, ready: asyncio.Queue[JudgedBatch | None]) -> None:
        while True:
            messages = await sub.next_batch(self.batch_max, IDLE_SECONDS)
            await ready.put(await self.judge_batch(messages) if messages else None)

    async def _restart_position(self, last_seq: int) -> None:
        """The inbox was recreated (its sequences start again): so does the position."""
        log.warning("inbox.recreated", reader=self.name, position=self.position, inbox_last_seq=last_seq)
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await self.committed.lock(conn, self.position)
                await self.committed.rewind(conn)
        self.position = 0
        self.purged = 0

    async def judge_batch(self, messages: list[StreamMessage]) -> JudgedBatch:
        known = await self._known_workspaces(messages)
        # Validation is pure: in a worker thread, so that this process's HTTP requests and the
        # transaction in flight are served meanwhile.
        judged, unknown = await asyncio.to_thread(_judge, messages, known)
        return JudgedBatch(judged, unknown, messages[-1].seq, len(messages))

    async def _known_workspaces(self, messages) -> dict[str, bool]:
        return {workspace: await self._is_known(workspace)
                for workspace in {workspace_of_subject(msg.subject) for msg in messages}}

    async def _store_in_flight(self, flight: _InFlight) -> None:
        """Move one batch into the log and the rejected list, and the position past it, once."""
        batch = flight.batch
        try:
            async with self.pool.acquire() as conn:
                async with conn.transaction():
                    if flight.previous is None:  # not pipelined: the lock first, as a second reader must
                        await self.committed.lock(conn, flight.expected)
                    appended = await self._append(batch, conn, flight.previous)
                    flight.appended_batch = appended
                    flight.appended.set()
                    if flight.previous is not None:
                        await self.committed.lock(conn, flight.expected)
                    if appended is not None:
                        await self.ingestor.write_index(appended, db=conn)  # producers got their acks already
                    await self.committed.advance(conn, batch.last, batch.count)
        finally:
            flight.appended.set()

    async def _append(self, batch: JudgedBatch, conn, previous: _InFlight | None) -> Appended | None:
        if batch.unknown:
            await self.ingestor.record_rejected_many(batch.unknown, via="nats", db=conn)
        if not batch.judged:
            return None
        earlier = previous.appended_batch.seqs() if previous is not None and previous.appended_batch else None
        return await self.ingestor.append_many(batch.judged, via="nats", db=conn, earlier=earlier)

    async def _finish(self, flight: _InFlight) -> None:
        """Wait for a pipelined batch; its failure is raised (the batch behind it is then abandoned
        and everything is read again from the committed position)."""
        await flight.task
        self.position = flight.batch.last
        self.handled_total += flight.batch.count
        log.debug("inbox.batch", messages=flight.batch.count, position=flight.batch.last,
                  ms=round((time.perf_counter() - flight.started) * 1000, 1))

    async def _is_known(self, workspace: str) -> bool:
        try:
            return await self.known_workspace(workspace)
        except DATABASE_UNAVAILABLE as err:
            raise IngestUnavailable(f"workspaces cannot be read: {err}") from err

    async def _store(
        self, judged: list[tuple[str, Judged]], unknown: list[tuple[str, bytes, str]], db=None
    ) -> None:
        if judged:
            await self.ingestor.ingest_many(judged, via="nats", db=db)
        if unknown:
            await self.ingestor.record_rejected_many(unknown, via="nats", db=db)

    async def _purge(self) -> None:
        try:
            await self.js.purge_stream(self.stream, seq=self.position + 1)
            self.purged = self.position
        except (asyncio.TimeoutError, nats.errors.Error) as err:
            log.warning("inbox.purge_failed", error=str(err) or repr(err))

    async def _retire_work_queue_inbox(self) -> None:
        """Turn an older version's WorkQueue inbox into today's Limits stream, losing nothing."""
        if (await self.js.stream_info(self.stream)).config.retention != RetentionPolicy.WORK_QUEUE:
            return
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                # Under the position lock: only one process retires it, the others then find a Limits stream.
                await self.committed.load(self.pool)
                await self.committed.hold(conn)
                info = await self.js.stream_info(self.stream)
                if info.config.retention != RetentionPolicy.WORK_QUEUE:
                    return
                log.warning("inbox.retiring_work_queue", messages=info.state.messages)
                try:
                    await self.js.consumer_info(self.stream, INBOX_CONSUMER)
                except nats.js.errors.NotFoundError:
                    await self.js.add_consumer(
                        self.stream,
                        ConsumerConfig(durable_name=INBOX_CONSUMER, filter_subject=self.subjects,
                                       ack_policy=AckPolicy.EXPLICIT, ack_wait=5.0),
                    )
                # No more intake: producers get no ack and retry until the Limits inbox exists.
                info.config.subjects = [self.subjects.rsplit(".", 1)[0] + "-retired.*"]
                await self.js.update_stream(info.config)
                sub = await self.js.pull_subscribe_bind(INBOX_CONSUMER, self.stream)
                try:
                    while (await self.js.stream_info(self.stream)).state.messages:
                        try:
                            messages = await sub.fetch(1000, timeout=1.0)
                        except nats.errors.TimeoutError:
                            continue  # delivered earlier and not acked: back after ack_wait
                        judged, unknown = _judge(messages, await self._known_workspaces(messages))
                        await self._store(judged, unknown)  # committed by the pool before the acks
                        for msg in messages:
                            await msg.ack()
                finally:
                    # Also when stopped midway: a pull subscription left behind holds up the
                    # connection's drain (as the rules worker's timer consumer did, 8cb4328).
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                await self.js.delete_stream(self.stream)
                await self.js.add_stream(self.config)
                await self.committed.rewind(conn)
                log.warning("inbox.retired_work_queue")


@dataclass
class _InFlight:
    """A batch in its pipelined transaction."""

    batch: JudgedBatch
    expected: int  # the position the batch before leaves
    previous: "_InFlight | None"
    appended: asyncio.Event = field(default_factory=asyncio.Event)  # its events are in the log (or it failed)
    appended_batch: Appended | None = None
    task: asyncio.Task = field(init=False)
    started: float = field(default_factory=time.perf_counter)


@dataclass
class JudgedBatch:
    """A batch of the inbox, judged, waiting for its transaction."""

    judged: list[tuple[str, Judged]]
    unknown: list[tuple[str, bytes, str]]  # (workspace, body, reason): no such workspace
    last: int  # the batch's last inbox sequence
    count: int


def _judge(messages, known: dict[str, bool]) -> tuple[list[tuple[str, Judged]], list[tuple[str, bytes, str]]]:
    judged: list[tuple[str, Judged]] = []
    unknown: list[tuple[str, bytes, str]] = []
    for msg in messages:
        workspace = workspace_of_subject(msg.subject)
        if known[workspace]:
            judged.append((workspace, judge(msg.data)))
        else:
            unknown.append((workspace[:64], msg.data, f"workspace: unknown workspace {workspace!r}"))
    return judged, unknown


_running: set[asyncio.Task] = set()


def start_inbox(ingestor: Ingestor, known_workspace: KnownWorkspace) -> InboxReader:
    """Start the inbox reader in the running loop; ``reader.stop()`` ends it."""
    reader = InboxReader(ingestor, known_workspace)
    task = asyncio.get_running_loop().create_task(reader.run())
    _running.add(task)
    task.add_done_callback(_running.discard)
    return reader
