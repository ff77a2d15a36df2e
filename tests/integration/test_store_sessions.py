"""The PostgreSQL sessions every service opens (``services.store.db.create_pool``)."""

from __future__ import annotations

import asyncio

from services.store.db import create_pool


def test_sessions_start_writing_back_what_they_write(servers):
    """A session's writes are pushed to the disk every 256 kB rather than left dirty in the page
    cache, where the kernel wrote a catch-up's hundreds of MB at once, 30 s later, under the reads
    (docs/performance.md, item 34)."""

    async def run() -> list[str]:
        pool = await create_pool(servers.database_url, min_size=2, max_size=2)
        try:
            async with pool.acquire() as first, pool.acquire() as second:
                return [await conn.fetchval("SHOW backend_flush_after") for conn in (first, second)]
        finally:
            await pool.close()

    assert asyncio.run(run()) == ["256kB", "256kB"]
