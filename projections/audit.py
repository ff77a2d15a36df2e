"""The audit trail: every accepted event about a contact, in log order (CONTRACT.md section 4).

The projector hands every read model first copies only, so duplicates never appear here, and
rejected input never reaches the log. The envelope is stored in today's catalog shape (an older
event is upcast on the way in, see events/upcasting.py), unknown fields included.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
import msgspec

from events.log import LoggedEvent

_INSERT = """
INSERT INTO contact_events (workspace, contact, seq, received_at, envelope)
SELECT workspace, contact, seq, received_at, envelope::jsonb
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::text[])
    AS t(workspace, contact, seq, received_at, envelope)
ON CONFLICT (workspace, contact, seq) DO NOTHING
"""


_encode = msgspec.json.encode


def entry_raw(seq: int, received_at: dt.datetime, envelope: str) -> msgspec.Raw:
    """The public form of one entry: the structured CloudEvent (envelope and data, numbers exactly
    as stored) with ``seq`` and ``received_at`` added beside its attributes."""
    head = b'{"seq":' + _encode(seq) + b',"received_at":' + _encode(received_at.astimezone(dt.timezone.utc))
    body = envelope.strip().encode()
    return msgspec.Raw(head + (b"," + body[1:] if body != b"{}" else b"}"))


async def trail(conn: asyncpg.Connection, workspace: str, contact: str, after: int | None = None,
                limit: int | None = None) -> list[asyncpg.Record]:
    """(seq, received_at, envelope as JSON text) of the contact's events after ``after``, in log order."""
    return await conn.fetch(
        "SELECT seq, received_at, envelope::text AS envelope FROM contact_events"
        " WHERE workspace = $1 AND contact = $2 AND ($3::bigint IS NULL OR seq > $3) ORDER BY seq LIMIT $4",
        workspace,
        contact,
        after,
        limit,
    )


class ContactEventsProjection:
    name = "audit"
    tables = ("contact_events",)

    async def apply(self, conn: asyncpg.Connection, batch: list[LoggedEvent]) -> None:
        rows = [
            (logged.workspace, logged.event.subject, logged.seq, logged.received_at, logged.raw.decode())
            for logged in batch
            if logged.event.contact_event and logged.event.subject is not None
        ]
        if rows:
            await conn.execute(_INSERT, *map(list, zip(*rows)))
