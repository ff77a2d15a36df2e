"""Health counts a service ready only while it beats; a service that can tell its own connection is
gone stops beating (the dispatcher's broker, which FastStream can give up on for good: an outside
audit saw health report a dispatcher that consumed nothing)."""

from __future__ import annotations

import asyncio
import signal

import psutil
import pytest

from services.runtime.embedded import EmbeddedPostgres
from services.store import readiness
from services.store.db import create_pool, migrate


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


class _NoNats:
    """Health's NATS check alone says false; this test is about PostgreSQL's."""

    is_connected = False


def test_health_answers_while_postgresql_is_frozen(tmp_path):
    """A SIGSTOPped PostgreSQL (postmaster and backends) kept /v1/health from answering at all for
    as long as the freeze lasted (an outside audit): now it says postgres false within its bound."""
    postgres = EmbeddedPostgres(tmp_path)
    url = postgres.start()

    async def check() -> tuple[bool, bool, bool]:
        pool = await create_pool(url, max_size=2)
        try:
            await migrate(pool)
            before = (await readiness.report(pool, _NoNats())).checks["postgres"]
            server = psutil.Process(int(next(postgres.root.rglob("postmaster.pid")).read_text().split()[0]))
            frozen_processes = [server, *server.children(recursive=True)]
            for process in frozen_processes:
                process.send_signal(signal.SIGSTOP)
            try:
                # Bounded by the test too: before, this waited for the thaw.
                frozen = (await asyncio.wait_for(readiness.report(pool, _NoNats()), 10)).checks["postgres"]
            finally:
                for process in frozen_processes:
                    process.send_signal(signal.SIGCONT)
            after = (await readiness.report(pool, _NoNats())).checks["postgres"]
            return before, frozen, after
        finally:
            await asyncio.wait_for(pool.close(), 10)

    try:
        assert asyncio.run(check()) == (True, False, True)
    finally:
        postgres.stop()
