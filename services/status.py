"""How far each projector has got: applied sequence, lag behind the log, recent rate, which
process writes it; and how far the NATS inbox reader has moved producers' messages into the log.

Shared by ``GET /v1/status`` and ``touchline status``. The rate is sampled in PostgreSQL by a
trigger on ``projector_positions`` (migration 004): at most every 5 s a batch that moves the
position records the events applied per second since the previous sample. A projector that
has applied nothing for a while reports the rate since its last sample, which falls to 0.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import asyncpg
import msgspec
import nats.js.errors
from nats.js import JetStreamContext

from events.log import INBOX_STREAM
from services.nats_io import last_log_seq
from services.projector.runner import LEAD_KEY_PREFIX

SAMPLE_FRESH_SECONDS = 10.0


class ProjectorStatus(msgspec.Struct):
    name: str
    applied_seq: Annotated[int, msgspec.Meta(description="The log sequence every read model has applied.")]
    lag: Annotated[int, msgspec.Meta(description="log_last_seq - applied_seq (the log is shared by all workspaces).")]
    rate_eps: Annotated[float, msgspec.Meta(description="Events applied per second lately.")]
    events_applied: int
    parked: Annotated[int, msgspec.Meta(description="Events set aside (undecodable, or failing in a read model), not redriven.")]
    updated_at: dt.datetime
    writer: Annotated[str | None, msgspec.Meta(
        description="The process writing it (`touchline projector on HOST pid PID`); null when none runs.")]


class InboxStatus(msgspec.Struct):
    last_seq: Annotated[int, msgspec.Meta(description="The inbox stream's last message (what producers' acks name).")]
    judged_seq: Annotated[int, msgspec.Meta(description="How far the inbox reader has moved messages into the log or the rejected list.")]
    pending: Annotated[int, msgspec.Meta(description="Acked by JetStream, not judged yet.")]
    updated_at: dt.datetime | None


class StatusReport(msgspec.Struct):
    """`GET /v1/status` and `touchline status --json`."""

    log_last_seq: int
    projectors: list[ProjectorStatus]
    inbox: InboxStatus


async def status_report(pool: asyncpg.Pool, js: JetStreamContext) -> StatusReport:
    last = await last_log_seq(js)
    rows = await pool.fetch(
        "SELECT name, position, applied, updated_at, rate_applied, rate_at, rate_eps, now() AS now"
        " FROM projector_positions ORDER BY name"
    )
    writers = await projector_writers(pool)
    parked = {
        r["projector"]: r["n"]
        for r in await pool.fetch(
            "SELECT projector, count(*) AS n FROM parked_events WHERE redriven_at IS NULL GROUP BY projector"
        )
    }
    projectors = []
    for r in rows:
        since_sample = (r["now"] - r["rate_at"]).total_seconds()
        if since_sample <= SAMPLE_FRESH_SECONDS:
            rate = r["rate_eps"]
        else:
            rate = (r["applied"] - r["rate_applied"]) / since_sample if since_sample > 0 else 0.0
        projectors.append(ProjectorStatus(
            name=r["name"],
            applied_seq=r["position"],
            lag=max(0, last - r["position"]),
            rate_eps=round(rate, 1),
            events_applied=r["applied"],
            parked=parked.get(r["name"], 0),
            updated_at=r["updated_at"].astimezone(dt.timezone.utc),
            writer=writers.get(r["name"]),
        ))
    return StatusReport(last, projectors, await _inbox(pool, js))


async def projector_writers(pool: asyncpg.Pool) -> dict[str, str]:
    """Which process writes each projector's read models: the ``application_name`` of the session
    that holds its writer's lock (``services.projector.runner``). A projector without one has no
    live process; its standbys, if any, hold nothing. A session lock's 64-bit key is kept in
    pg_locks as two 32-bit halves."""
    rows = await pool.fetch(
        "WITH keys AS (SELECT name, hashtextextended($1 || name, 0) AS k FROM projector_positions)"
        " SELECT keys.name, coalesce(nullif(a.application_name, ''), 'pid ' || l.pid"
        "   || coalesce(' from ' || host(a.client_addr), '')) AS writer"
        " FROM keys JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
        "  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        "  AND l.classid = ((keys.k >> 32) & 4294967295)::oid AND l.objid = (keys.k & 4294967295)::oid"
        " LEFT JOIN pg_stat_activity a ON a.pid = l.pid",
        LEAD_KEY_PREFIX,
    )
    return {row["name"]: row["writer"] for row in rows}


async def _inbox(pool: asyncpg.Pool, js: JetStreamContext) -> InboxStatus:
    """The NATS way in: how far the inbox reader has moved producers' messages into the log or the
    rejected list. A producer's ack counts the inbox's messages, not the log's: ``pending`` is what
    was acked and is not yet judged (it stayed hidden while a reader was stuck)."""
    try:
        last = (await js.stream_info(INBOX_STREAM)).state.last_seq
    except nats.js.errors.NotFoundError:  # no API has started yet
        last = 0
    row = await pool.fetchrow("SELECT position, updated_at FROM inbox_positions WHERE name = 'main'")
    position = row["position"] if row is not None else 0
    return InboxStatus(last, position, max(0, last - position),
                       row["updated_at"].astimezone(dt.timezone.utc) if row is not None else None)
