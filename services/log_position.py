"""How far a reader of a stream has got, and what it does when another process holds that place.

The projector, the rules worker and the NATS inbox reader each keep their position in a row of
PostgreSQL, moved in the same transaction as their effects (``CommittedPosition``), and lock it in
every batch: a second process of the same reader finds it moved and is ``Fenced`` before it has
written anything. A fenced process starts again from the committed position after a ``Backoff``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any, Awaitable, Callable

import asyncpg
import structlog

from services.runtime.loop import cancel_and_wait
from services.store.db import RETRYABLE

log = structlog.get_logger()

# The writer of a reader's effects (the projector's read models, the rules worker's commands) holds
# this session lock, on a connection of its own, for as long as it works; another process of the
# same reader waits as a standby until it is free. The position's row lock alone let two live
# processes take turns, each fencing the other and reading batches for nothing (and a projector's
# batch's work before its row lock met the other's in a deadlock: an outside audit ran two, three
# deadlocks in 10,000 events). The row lock still fences: exactly-once never rests on this.
_TAKE_LEAD = "SELECT pg_try_advisory_lock(hashtextextended($1, 0))"
_LEAVE_LEAD = "SELECT pg_advisory_unlock(hashtextextended($1, 0))"
# The writer's connection names its process (`application_name`, shown by `touchline status`);
# the pool's reset on release (RESET ALL) gives the connection its own name back.
_NAME_WRITER = "SELECT set_config('application_name', $1, false)"


def writer_name(service: str) -> str:
    return f"touchline {service} on {socket.gethostname()} pid {os.getpid()}"[:63]  # PostgreSQL keeps 63 bytes


# A reader fenced again and again (a second process beside a live one) tries less and less often:
# each try reads a batch for nothing (an audit counted 46 tries of a standby projector in a run),
# and a standby still takes over within 5 s of the writer's end.
BACKOFF_PAUSES = (0.5, 1.0, 2.0, 5.0)


class Fenced(RuntimeError):
    """Another process moved this reader's position: start again from where it is."""


class Backoff:
    """The pauses of one reader between tries while it is fenced (or waits as a standby): longer and
    longer, said once at ``first``'s level and then at debug; from the shortest again once it got on."""

    def __init__(self, event: str, first: Callable[..., Any] = log.warning, **fields: Any) -> None:
        self.event, self.first, self.fields = event, first, fields
        self.tries = 0

    def got_on(self) -> None:
        self.tries = 0

    def delay(self) -> float:
        return BACKOFF_PAUSES[min(self.tries, len(BACKOFF_PAUSES) - 1)]

    async def pause(self, **fields: Any) -> None:
        delay = self.delay()
        (self.first if self.tries == 0 else log.debug)(self.event, retry_in_s=delay, **self.fields, **fields)
        self.tries += 1
        await asyncio.sleep(delay)


async def lead(pool: asyncpg.Pool, key: str, service: str, work: Callable[[], Awaitable[None]],
               stopping: asyncio.Event, **fields: Any) -> None:
    """Run ``work`` whenever this process holds the writer's lock ``key``, until ``stopping``; wait
    as a standby meanwhile (``<service>.standby``, trying again after 0.5, 1, 2, then every 5 s).
    ``work`` is cancelled when the lock's connection is lost: a standby may hold the lock then."""
    standby = Backoff(f"{service}.standby", log.info, **fields)
    while not stopping.is_set():
        try:
            async with pool.acquire() as conn:
                if await conn.fetchval(_TAKE_LEAD, key):
                    standby.got_on()
                    await conn.execute(_NAME_WRITER, writer_name(service))
                    try:
                        await _while_held(conn, work, service, fields)
                    finally:
                        with contextlib.suppress(Exception):  # a broken connection holds nothing
                            await conn.fetchval(_LEAVE_LEAD, key)
                    continue
            await standby.pause()
        except RETRYABLE as err:
            log.warning(f"{service}.postgres_unavailable", error=str(err), **fields)
            await asyncio.sleep(1.0)


async def _while_held(conn: asyncpg.Connection, work: Callable[[], Awaitable[None]], service: str,
                      fields: dict[str, Any]) -> None:
    lost = asyncio.Event()

    def on_lost(_conn: asyncpg.Connection) -> None:
        lost.set()

    conn.add_termination_listener(on_lost)  # kept across a release to the pool: removed below
    working = asyncio.create_task(work())
    watch = asyncio.create_task(lost.wait())
    try:
        await asyncio.wait({working, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(working, watch)
        conn.remove_termination_listener(on_lost)
    if working.done() and not working.cancelled():
        working.result()  # its error, if any
    else:
        log.warning(f"{service}.lead_lost", **fields)


class CommittedPosition:
    """How far a log reader has got: one row of ``table`` (name, position, applied), moved in the
    same transaction as the reader's effects, so that the position is exactly what is applied."""

    def __init__(self, table: str, name: str) -> None:
        self.table = table
        self.name = name

    async def load(self, pool: asyncpg.Pool) -> int:
        position = await self.read(pool)
        if position is None:
            await pool.execute(f"INSERT INTO {self.table} (name) VALUES ($1) ON CONFLICT DO NOTHING", self.name)
            position = 0
        return position

    async def read(self, db: asyncpg.Pool | asyncpg.Connection) -> int | None:
        return await db.fetchval(f"SELECT position FROM {self.table} WHERE name = $1", self.name)

    async def hold(self, conn: asyncpg.Connection) -> int | None:
        """Lock the row for this transaction, whatever it holds: the reader's batches wait meanwhile."""
        return await conn.fetchval(f"SELECT position FROM {self.table} WHERE name = $1 FOR UPDATE", self.name)

    async def lock(self, conn: asyncpg.Connection, expected: int) -> int:
        """Lock the row for this transaction; fenced if another process moved it meanwhile."""
        committed = await self.hold(conn)
        if committed != expected:
            raise Fenced(f"position is {committed}, expected {expected}")
        return committed

    async def rewind(self, conn: asyncpg.Connection) -> None:
        """Back to the start (the stream read was recreated); under ``hold`` or ``lock``."""
        await conn.execute(f"UPDATE {self.table} SET position = 0, updated_at = now() WHERE name = $1", self.name)

    async def advance(self, conn: asyncpg.Connection, last: int, applied: int) -> None:
        await conn.execute(
            f"UPDATE {self.table} SET position = $2, applied = applied + $3, updated_at = now() WHERE name = $1",
            self.name,
            last,
            applied,
        )
