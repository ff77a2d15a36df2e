"""How far a reader of a stream has got, and what it does when another process holds that place.

The projector, the rules worker and the NATS inbox reader each keep their position in a row of
PostgreSQL, moved in the same transaction as their effects (``CommittedPosition``), and lock it in
every batch: a second process of the same reader finds it moved and is ``Fenced`` before it has
written anything. A fenced process starts again from the committed position after a ``Backoff``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import asyncpg
import structlog

log = structlog.get_logger()

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
