"""The ingest side's write of the permanent dedupe index (``Ingestor._index``): a key indexed
already with a lower sequence answers that sequence as a duplicate, whatever the request published."""

from __future__ import annotations

import asyncio
import uuid

from services.ingest import Ingestor
from services.nats_io import connect_client
from services.store.db import create_pool


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
                "INSERT INTO event_index (workspace, source, id, seq) VALUES ($1, $2, $3, 5), ($1, $4, $5, 900)",
                workspace, *earlier, *later,
            )
            keys = [(workspace, *earlier), (workspace, *later), (workspace, *fresh)]
            outcome = await Ingestor(nc, pool)._index(keys, [(100, False), (101, False), (102, False)])
            rows = await pool.fetch("SELECT id, seq FROM event_index WHERE workspace = $1", workspace)
            return outcome, {row["id"]: row["seq"] for row in rows}
        finally:
            await pool.close()
            await nc.close()

    outcome, stored = asyncio.run(run())
    assert outcome == {
        (workspace, *earlier): (5, True),  # the earlier copy stays the first: this one is a duplicate
        (workspace, *later): (101, False),  # this copy is now the first, and the index says so
        (workspace, *fresh): (102, False),
    }
    assert stored == {"earlier": 5, "later": 101, "fresh": 102}
