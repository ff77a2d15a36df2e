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
from events.validation import TRAIL_FIELDS, trail_fields_given
from projections.batching import prepared

# COPY, not INSERT … ON CONFLICT (about 2.5 times faster here): the projector applies each log
# sequence once (its position moves in the same transaction), so a row is never written twice.
_COLUMNS = ("workspace", "contact", "seq", "received_at", "envelope")


_encode = msgspec.json.encode


def entry_raw(seq: int, received_at: dt.datetime, envelope: str) -> msgspec.Raw:
    """The public form of one entry: the structured CloudEvent (envelope and data, numbers exactly
    as stored) with ``seq`` and ``received_at`` added beside its attributes."""
    head = b'{"seq":' + _encode(seq) + b',"received_at":' + _encode(received_at.astimezone(dt.timezone.utc))
    # Kept as it came (a json column): line breaks can only be whitespace between tokens (JSON
    # strings hold them escaped), and one entry stays one line of a JSON-lines export.
    body = envelope.strip().encode().replace(b"\r", b"").replace(b"\n", b"")
    if trail_fields_given(body):  # logged before ingest refused them: the entry's own fields win
        attributes = _decode_attributes(body)
        body = _encode({name: value for name, value in attributes.items() if name not in TRAIL_FIELDS})
    return msgspec.Raw(head + (b"," + body[1:] if body != b"{}" else b"}"))


_decode_attributes = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode


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
    before_lock = True  # rows keyed by the event, and counters

    def prepare(self, batch: list[LoggedEvent]) -> list[tuple]:
        return [
            (logged.workspace, logged.event.subject, logged.seq, logged.received_at, logged.raw.decode())
            for logged in batch
            if logged.event.contact_event and logged.event.subject is not None
        ]

    async def apply(self, conn: asyncpg.Connection, batch: list[LoggedEvent]) -> None:
        rows = prepared(self, batch)
        if rows:
            await conn.copy_records_to_table("contact_events", records=rows, columns=_COLUMNS)
