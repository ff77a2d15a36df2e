"""Touches: every touch (for attribution), counts per channel, and the statistics of
touches before conversion (CONTRACT.md section 5, "Touches" and "Touch statistics").

``touches_before_conversion`` itself is kept per contact by the contact read model; this
module answers ``/touches`` from it (an index-only histogram) and from per-channel counters.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

import asyncpg
import msgspec

from events.catalog import Envelope
from events.log import LoggedEvent
from projections.batching import prepared
from projections import contacts as contact_model
from projections.deals import columns
from projections.ladder import touch_channel, touch_kind, utc
from projections.numbers import median_of_histogram, ratio


class Touch(msgspec.Struct, frozen=True):
    contact: str
    at: dt.datetime
    source: str
    id: str
    kind: str
    channel: str
    campaign_id: str | None


def touch(event: Envelope) -> Touch | None:
    kind = touch_kind(event)
    if kind is None or event.subject is None:
        return None
    campaign = getattr(event.data, "campaign_id", None) if kind == "marketing" else None
    return Touch(event.subject, utc(event.time), event.source, event.id, kind, touch_channel(event), campaign)


def all_touches(events: list[Envelope]) -> list[Touch]:
    return [t for t in map(touch, events) if t is not None]


# --- the answer ------------------------------------------------------------------------


class BeforeConversion(msgspec.Struct):
    customers: int
    histogram: dict[int, int]
    median: float | None
    share_5_to_12: float | None


class ChannelTouches(msgspec.Struct):
    marketing: int
    sales: int


class TouchesView(msgspec.Struct):
    before_conversion: BeforeConversion
    by_channel: dict[str, ChannelTouches]


def view(histogram: dict[int, int], by_channel: dict[str, ChannelTouches]) -> TouchesView:
    customers = sum(histogram.values())
    median = median_of_histogram(histogram)
    in_range = sum(n for touches, n in histogram.items() if 5 <= touches <= 12)
    return TouchesView(
        BeforeConversion(
            customers=customers,
            histogram=dict(sorted(histogram.items())),
            median=None if median is None else float(median),
            share_5_to_12=ratio(in_range, customers),
        ),
        dict(sorted(by_channel.items())),
    )


def reference(events: list[Envelope]) -> TouchesView:
    """/touches from a set of de-duplicated events: the definition in code."""
    states = contact_model.fold(events)
    histogram = Counter(s.touches_before_conversion for s in states.values() if s.touches_before_conversion is not None)
    channels: dict[str, ChannelTouches] = {}
    for t in all_touches(events):
        counts = channels.setdefault(t.channel, ChannelTouches(0, 0))
        setattr(counts, t.kind, getattr(counts, t.kind) + 1)
    return view(dict(histogram), channels)


async def query(conn: asyncpg.Connection, workspace: str) -> TouchesView:
    rows = await conn.fetch(
        "SELECT touches_before_conversion AS n, count(*) AS customers FROM contacts"
        " WHERE workspace = $1 AND touches_before_conversion IS NOT NULL GROUP BY 1",
        workspace,
    )
    channels = await conn.fetch("SELECT channel, marketing, sales FROM touch_channels WHERE workspace = $1", workspace)
    return view(
        {row["n"]: row["customers"] for row in rows},
        {row["channel"]: ChannelTouches(row["marketing"], row["sales"]) for row in channels},
    )


# --- storage ---------------------------------------------------------------------------

# COPY, not INSERT … ON CONFLICT DO NOTHING: the projector hands each first copy over once (its
# position moves in the same transaction), and COPY is about three times faster.
_TOUCH_COLUMNS = ("workspace", "source", "id", "contact", "at", "kind", "channel", "campaign_id")

_COUNT_CHANNELS = """
INSERT INTO touch_channels AS known (workspace, channel, marketing, sales)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])
ON CONFLICT (workspace, channel) DO UPDATE SET
    marketing = known.marketing + excluded.marketing, sales = known.sales + excluded.sales
"""


class TouchesProjection:
    name = "touches"
    tables = ("touch_events", "touch_channels")
    before_lock = True  # rows keyed by the event, and counters

    def prepare(self, batch: list[LoggedEvent]) -> tuple[list[tuple], list[list]]:
        """The touch rows, and the per-channel counts as ``_COUNT_CHANNELS``' columns."""
        rows: list[tuple] = []
        counts: Counter[tuple[str, str, str]] = Counter()
        for logged in batch:
            t = touch(logged.event)
            if t is not None:
                rows.append((logged.workspace, t.source, t.id, t.contact, t.at, t.kind, t.channel, t.campaign_id))
                counts[(logged.workspace, t.channel, t.kind)] += 1
        channels = {(ws, channel) for ws, channel, _ in counts}
        totals = [(ws, ch, counts[(ws, ch, "marketing")], counts[(ws, ch, "sales")]) for ws, ch in sorted(channels)]
        return rows, columns(totals, 4)

    async def apply(self, conn: asyncpg.Connection, batch: list[LoggedEvent]) -> None:
        rows, totals = prepared(self, batch)
        if not rows:
            return
        await conn.copy_records_to_table("touch_events", records=rows, columns=_TOUCH_COLUMNS)
        await conn.execute(_COUNT_CHANNELS, *totals)
