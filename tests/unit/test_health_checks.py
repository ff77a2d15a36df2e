"""Health's PostgreSQL check while the server does not answer: bounded, and one query at a time."""

from __future__ import annotations

import asyncio

from services.store import readiness


class _NoNats:
    is_connected = False


class _FrozenPool:
    """A pool whose queries wait until it thaws, as asyncpg's do on a SIGSTOPped server."""

    def __init__(self) -> None:
        self.queries = 0
        self.thawed = asyncio.Event()

    async def fetch(self, query: str, *args) -> list[dict]:
        self.queries += 1
        await self.thawed.wait()
        return [{"service": service} for service in readiness.REQUIRED_SERVICES]


def test_checks_during_a_freeze_answer_in_time_and_share_one_query(monkeypatch):
    monkeypatch.setattr(readiness, "POSTGRES_ANSWER_SECONDS", 0.05)

    async def scenario() -> tuple[list[bool], int, bool]:
        pool = _FrozenPool()
        frozen = [(await readiness.report(pool, _NoNats())).checks["postgres"] for _ in range(20)]
        pool.thawed.set()
        after = (await readiness.report(pool, _NoNats())).checks["postgres"]
        return frozen, pool.queries, after

    frozen, queries, after = asyncio.run(scenario())
    # One query a check piled up for as long as the freeze lasted, each holding or waiting for a
    # connection of the pool (a review of the first bound).
    assert (frozen, queries, after) == ([False] * 20, 1, True)
