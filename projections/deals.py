"""Won deals and refunds of a workspace (CONTRACT.md section 5, "Deals").

A deal (``deal_id``, one namespace per workspace) is won by its earliest ``deal.won`` by
(time, source, id); later reports of the same deal are ignored, whatever order they
arrive in. Every refund counts. Goals and attribution read these tables.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import asyncpg
import msgspec

from events import catalog as c
from events.catalog import Envelope
from events.log import LoggedEvent
from projections.batching import prepared
from projections.ladder import keep_earliest, utc


class Deal(msgspec.Struct, frozen=True):
    deal_id: str
    contact: str
    won_at: dt.datetime
    source: str
    id: str
    amount: Decimal
    currency: str

    @property
    def key(self) -> tuple[dt.datetime, str, str]:
        return (self.won_at, self.source, self.id)


class Refund(msgspec.Struct, frozen=True):
    source: str
    id: str
    deal_id: str
    contact: str
    at: dt.datetime
    amount: Decimal
    currency: str


def won_deal(event: Envelope) -> Deal:
    return Deal(event.data.deal_id, event.subject, utc(event.time), event.source, event.id, event.data.amount,
                event.data.currency)


def refund(event: Envelope) -> Refund:
    return Refund(event.source, event.id, event.data.deal_id, event.subject, utc(event.time), event.data.amount,
                  event.data.currency)


def fold(events: list[Envelope]) -> tuple[dict[str, Deal], list[Refund]]:
    """Won deals by deal_id and every refund, from de-duplicated events; the test oracle."""
    deals: dict[str, Deal] = {}
    refunds: list[Refund] = []
    for event in events:
        if isinstance(event, c.DealWon):
            keep_earliest(deals, event.data.deal_id, won_deal(event))
        elif isinstance(event, c.DealRefunded):
            refunds.append(refund(event))
    return deals, refunds


# --- storage ---------------------------------------------------------------------------

_UPSERT_DEALS = """
INSERT INTO deals AS known (workspace, deal_id, contact, won_at, source, id, amount, currency)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[],
                     $7::numeric[], $8::text[])
ON CONFLICT (workspace, deal_id) DO UPDATE SET
    contact = excluded.contact, won_at = excluded.won_at, source = excluded.source, id = excluded.id,
    amount = excluded.amount, currency = excluded.currency
WHERE (excluded.won_at, excluded.source, excluded.id) < (known.won_at, known.source, known.id)
"""

_INSERT_REFUNDS = """
INSERT INTO refunds (workspace, source, id, deal_id, contact, at, amount, currency)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
                     $7::numeric[], $8::text[])
ON CONFLICT DO NOTHING
"""


def columns(rows: list[tuple], width: int) -> list[list]:
    """Rows to the column arrays that ``unnest`` takes."""
    return [list(column) for column in zip(*rows)] if rows else [[] for _ in range(width)]


class DealsProjection:
    name = "deals"
    tables = ("deals", "refunds")
    before_lock = False  # keeps a deal's earliest win against the one the batch before wrote

    def prepare(self, batch: list[LoggedEvent]) -> tuple[list[tuple], list[tuple]]:
        """Rows for ``_UPSERT_DEALS`` (the earliest report of each deal in the batch) and ``_INSERT_REFUNDS``."""
        deals: dict[tuple[str, str], Deal] = {}
        refunds: list[tuple] = []
        for logged in batch:
            event = logged.event
            if isinstance(event, c.DealWon):
                keep_earliest(deals, (logged.workspace, event.data.deal_id), won_deal(event))
            elif isinstance(event, c.DealRefunded):
                r = refund(event)
                refunds.append((logged.workspace, r.source, r.id, r.deal_id, r.contact, r.at, r.amount, r.currency))
        rows = [(ws, d.deal_id, d.contact, d.won_at, d.source, d.id, d.amount, d.currency)
                for (ws, _), d in deals.items()]
        return rows, refunds

    async def apply(self, conn: asyncpg.Connection, batch: list[LoggedEvent]) -> None:
        rows, refunds = prepared(self, batch)
        if rows:
            await conn.execute(_UPSERT_DEALS, *columns(rows, 8))
        if refunds:
            await conn.execute(_INSERT_REFUNDS, *columns(refunds, 8))
