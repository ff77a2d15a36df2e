"""Which events of a batch are first copies: the one copy of each (workspace, source, id) that every
read model counts (CONTRACT.md section 5, "Duplicates"), judged against ``event_index``, which keeps
for ever the lowest sequence of each key. The projector and the rules worker both ask it."""

from __future__ import annotations

import asyncpg

from events.log import EventKey, LoggedEvent, index_key


# Look every key up first (one index probe each: a join would hash the whole index), and write
# only the keys that are missing or whose indexed copy is later. The ingest API has usually
# indexed the batch already: an upsert of every key would lock and rewrite those rows for nothing.
# event_index is keyed by a digest of (workspace, source, id) (migration 015, ``index_key``): one
# bytea and one bigint array cost less in all than the JSON document of three texts that the keys
# travelled as before (docs/performance.md, item 35).
_FIRST_COPIES = """
WITH incoming AS (
    SELECT * FROM unnest($1::bytea[], $2::bigint[]) AS t(key, seq)
), looked_up AS (
    SELECT incoming.*, (SELECT e.seq FROM event_index e WHERE e.key = incoming.key) AS known_seq
    FROM incoming
), indexed AS (
    INSERT INTO event_index AS known (key, seq)
    SELECT key, seq FROM looked_up WHERE known_seq IS NULL OR known_seq > seq
    ON CONFLICT (key) DO UPDATE SET seq = excluded.seq WHERE excluded.seq < known.seq
)
SELECT seq FROM looked_up WHERE known_seq < seq
"""


INDEX_KEYS = "first_copies"  # the batch's key columns, in a PreparedBatch


def index_keys(batch: list[LoggedEvent], earlier: frozenset[EventKey] = frozenset()) -> tuple[list[tuple[EventKey, int]], set[EventKey]]:
    """Each (workspace, source, id) of the batch with its lowest seq (the candidates for a first
    copy), and every key of the batch. Keys in ``earlier`` (those of the batch before, still in its
    transaction) are left out: their copies here are later ones, and looking them up would wait for
    that transaction's index rows."""
    seen: dict[EventKey, int] = {}
    for logged in batch:
        event = logged.event
        seen.setdefault((logged.workspace, event.source, event.id), logged.seq)
    candidates = [(key, seq) for key, seq in seen.items() if key not in earlier] if earlier else list(seen.items())
    return candidates, set(seen)


# The sequences of a stretch of the log that event_index names: each is the first copy of its key.
_NAMED = "SELECT seq FROM event_index WHERE seq BETWEEN $1 AND $2"
# How many it names: enough when the batch holds every sequence of the stretch (the usual case:
# readers take the whole log), and no row to decode for each event.
_NAMED_COUNT = "SELECT count(*) FROM event_index WHERE seq BETWEEN $1 AND $2"


async def first_copies(conn: asyncpg.Connection, batch: list[LoggedEvent]) -> list[LoggedEvent]:
    """Drop every event whose (workspace, source, id) was stored before, however long ago.

    Usually the ingest side has indexed the whole batch already; then one range scan of
    ``event_index`` by sequence proves it, and no key is looked up. That takes every event being a
    candidate (no key twice in the batch, none in the batch before, whose lowering of an index row
    may not be committed yet): an index row names the lowest sequence of its key that anyone has
    indexed, and every lower copy in the log was met, and indexed, by this reader (the projector,
    the rules worker) in a committed batch before this one.

    Otherwise each candidate key is looked up. The SELECT sees the index as it was before this
    statement, so a copy indexed by the ingest API with its own sequence counts as first, and a
    lower one already there wins. When every event is a first copy, the answer is ``batch`` itself
    (with what was prepared for it).
    """
    candidates, _ = getattr(batch, "prepared", {}).get(INDEX_KEYS) or index_keys(batch)
    if not candidates:  # an empty batch, or every key in the batch before
        return []
    seqs = [seq for _, seq in candidates]
    if len(candidates) == len(batch):
        low, high = min(seqs), max(seqs)
        if high - low + 1 == len(seqs):  # the whole stretch: all named iff as many named as events
            if await conn.fetchval(_NAMED_COUNT, low, high) == len(seqs):
                return batch
        elif {row["seq"] for row in await conn.fetch(_NAMED, low, high)}.issuperset(seqs):
            return batch
    keys = [index_key(*key) for key, _ in candidates]
    earlier = {row["seq"] for row in await conn.fetch(_FIRST_COPIES, keys, seqs)}
    if not earlier and len(seqs) == len(batch):
        return batch
    firsts = set(seqs) - earlier
    return [logged for logged in batch if logged.seq in firsts]
