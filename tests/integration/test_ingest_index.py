"""The ingest side's write of the permanent dedupe index (``Ingestor._index``): a key indexed
already with a lower sequence answers that sequence as a duplicate, whatever the request published."""

from __future__ import annotations

import asyncio
import uuid

from services.ingest import Digests, Ingestor
from services.nats_io import connect_client
from services.store.db import create_pool

# Sequences far above any the shared test log reaches: the projector's first-copy proof counts the
# index rows in a range of the log's sequences, and made-up rows there would fool it.
BASE = 10**15


def test_index_write_answers_the_lowest_sequence_of_each_key(stack):
    workspace = f"ws-index-{uuid.uuid4().hex[:8]}"
    earlier, later, fresh = ("/test", "earlier"), ("/test", "later"), ("/test", "fresh")

    async def run() -> tuple[dict, dict]:
        nc = await connect_client(stack.servers.nats_url)
        pool = await create_pool(stack.servers.database_url, max_size=2)
        try:
            # Indexed before this request's write, as by a concurrent request or the projector:
            # one copy below the sequences this request got, one above.
            await pool.execute(
                "INSERT INTO event_index (key, seq) VALUES (event_key($1, $2, $3), $6), (event_key($1, $4, $5), $7)",
                workspace, *earlier, *later, BASE + 5, BASE + 900,
            )
            keys = [(workspace, *earlier), (workspace, *later), (workspace, *fresh)]
            outcome = await Ingestor(nc, pool)._index(keys, [(BASE + n, False) for n in (100, 101, 102)], Digests())
            return outcome, {  # id -> the seq the index now holds
                key[2]: await pool.fetchval("SELECT seq FROM event_index WHERE key = event_key($1, $2, $3)", *key)
                for key in keys
            }
        finally:
            await pool.close()
            await nc.close()

    outcome, stored = asyncio.run(run())
    assert outcome == {
        (workspace, *earlier): (BASE + 5, True),  # the earlier copy stays the first: this one is a duplicate
        (workspace, *later): (BASE + 101, False),  # this copy is now the first, and the index says so
        (workspace, *fresh): (BASE + 102, False),
    }
    assert stored == {"earlier": BASE + 5, "later": BASE + 101, "fresh": BASE + 102}
