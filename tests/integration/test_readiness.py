"""Health counts a service ready only while it beats; a service that can tell its own connection is
gone stops beating (the dispatcher's broker, which FastStream can give up on for good: an outside
audit saw health report a dispatcher that consumed nothing)."""

from __future__ import annotations

import asyncio

import pytest

from services.store import readiness
from services.store.db import create_pool


async def _beats(pool, service: str) -> int:
    return await pool.fetchval("SELECT count(*) FROM service_heartbeats WHERE service = $1", service)


@pytest.mark.asyncio
async def test_a_service_beats_only_while_it_says_it_is_alive(stack):
    pool = await create_pool(stack.servers.database_url, max_size=2)
    connected = False

    async def alive() -> bool:
        return connected

    beating = asyncio.create_task(readiness.heartbeat(pool, "readiness-test", alive=alive))
    try:
        await asyncio.sleep(0.5)
        assert await _beats(pool, "readiness-test") == 0
        connected = True
        for _ in range(50):
            if await _beats(pool, "readiness-test"):
                break
            await asyncio.sleep(0.1)
        assert await _beats(pool, "readiness-test") == 1
    finally:
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
        await pool.execute("DELETE FROM service_heartbeats WHERE service = 'readiness-test'")
        await pool.close()
