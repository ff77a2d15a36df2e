"""Poison events: park what cannot be applied, go on with the rest, re-drive after a fix.

The projector and the rules worker park here (``parked_events``, one row per reader and sequence).
A parked event keeps only its position: the log still holds the event itself, so re-driving
reads it back from JetStream by sequence. Every read model is a fold that does not depend on
the order events are applied in, so applying a parked event later gives the same state as
applying it in its place.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import structlog
from nats.js import JetStreamContext

from events.log import LOG_STREAM, LoggedEvent, decode_logged, workspace_of_subject
from projections.batching import Projection
from services.first_copies import first_copies
from services.store.db import RETRYABLE

log = structlog.get_logger()


@dataclass(frozen=True)
class Poison:
    seq: int
    workspace: str
    error: str


def decode_messages(messages) -> tuple[list[LoggedEvent], list[Poison]]:
    """The log messages as events; those this code cannot decode become poison to park."""
    batch: list[LoggedEvent] = []
    poisons: list[Poison] = []
    for msg in messages:
        try:
            batch.append(decode_logged(msg.seq, msg.subject, msg.headers, msg.data))
        except Exception as err:  # a shape this code does not know
            poisons.append(Poison(msg.seq, workspace_of_subject(msg.subject), f"cannot decode: {err!r}"))
    return batch, poisons


async def apply_one_by_one(conn: asyncpg.Connection, reader: str, projections: list[Projection],
                           events: list[LoggedEvent]) -> list[Poison]:
    """Each event applied by every projection in a savepoint of its own, after its batch failed:
    the events that fail again become poison (the traceback to the log, the error kept), the others
    are applied. The projector parks the poison; a replay leaves it out just the same, so that a
    rebuild gives what the live read models hold."""
    poisons: list[Poison] = []
    for logged in events:
        try:
            async with conn.transaction():
                for projection in projections:
                    await projection.apply(conn, [logged])
        except RETRYABLE:  # the database's trouble, not the event's: the caller tries the batch again
            raise
        except Exception as err:
            log.error("events.apply_failed", reader=reader, seq=logged.seq, workspace=logged.workspace, exc_info=err)
            poisons.append(Poison(logged.seq, logged.workspace, repr(err)))
    return poisons


async def park(conn: asyncpg.Connection, projector: str, poisons: list[Poison]) -> None:
    if not poisons:
        return
    log.error("events.parked", reader=projector, seqs=[p.seq for p in poisons], error=poisons[0].error)
    await conn.executemany(
        "INSERT INTO parked_events (projector, seq, workspace, error) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (projector, seq) DO UPDATE SET error = excluded.error, attempts = parked_events.attempts + 1,"
        " redriven_at = NULL",
        [(projector, p.seq, p.workspace, p.error[:4000]) for p in poisons],
    )


async def parked_seqs(conn: asyncpg.Connection, projector: str, workspace: str, upto: int) -> set[int]:
    """The workspace's log sequences up to ``upto`` that ``projector`` has parked and not re-driven."""
    rows = await conn.fetch(
        "SELECT seq FROM parked_events WHERE projector = $1 AND workspace = $2 AND seq <= $3 AND redriven_at IS NULL",
        projector, workspace, upto,
    )
    return {row["seq"] for row in rows}


async def mark_redriven(conn: asyncpg.Connection, projector: str, seqs: list[int]) -> None:
    """Parked events now applied to ``projector``'s read models: off the waiting list."""
    await conn.execute(
        "UPDATE parked_events SET redriven_at = now() WHERE projector = $1 AND seq = ANY($2::bigint[])"
        " AND redriven_at IS NULL",
        projector, seqs,
    )


async def waiting(pool: asyncpg.Pool, projector: str | None = None) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT projector, seq, workspace, error, parked_at, attempts FROM parked_events"
        " WHERE redriven_at IS NULL AND ($1::text IS NULL OR projector = $1) ORDER BY projector, seq",
        projector,
    )


async def redrive(pool: asyncpg.Pool, js: JetStreamContext, projector: str, projections, seqs=None) -> dict[int, str | None]:
    """Apply parked events again; returns each seq's new error, or None where it was applied."""
    outcome: dict[int, str | None] = {}
    for row in await waiting(pool, projector):
        if seqs is not None and row["seq"] not in seqs:
            continue
        seq = row["seq"]
        message = await js.get_msg(LOG_STREAM, seq)
        async with pool.acquire() as conn:
            try:
                async with conn.transaction():
                    logged = decode_logged(seq, message.subject, message.headers, message.data)
                    for projection in projections:
                        await projection.apply(conn, await first_copies(conn, [logged]))
                    await mark_redriven(conn, projector, [seq])
                outcome[seq] = None
            except Exception as err:  # the event is still poison: keep it parked with the new error
                await park(conn, projector, [Poison(seq, row["workspace"], repr(err))])
                outcome[seq] = repr(err)
    return outcome
