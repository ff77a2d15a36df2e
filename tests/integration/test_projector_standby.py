"""A second process of the same projector waits as a standby while the writer lives, and takes over
when it stops (README, "Running it for real").

Fenced only by the position's row lock, two live projector processes took turns as the writer,
and a batch's work before its row lock met the other's in a deadlock (an outside audit ran two:
three deadlocks in 10,000 events, logged as "postgres_unavailable"). The writer now holds a
session lock for as long as it projects."""

from __future__ import annotations

import asyncio
import json

import pytest

from projections.audit import ContactEventsProjection
from services.log_position import writer_name
from services.projector.runner import Projector
from services.status import projector_writers as writers
from services.store.db import create_pool
from tests.integration.test_poison import append_raw, projector_of_our_own
from tests.support import event


async def _until_at(pool, name: str, seq: int, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while (await pool.fetchval("SELECT position FROM projector_positions WHERE name = $1", name)) < seq:
            await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_a_second_projector_waits_as_a_standby_and_takes_over_when_the_writer_stops(stack):
    ws, _ = stack.new_workspace()
    name = "standby-test"
    url = stack.servers.nats_url

    async def append(count: int) -> int:
        seqs = [await append_raw(url, ws, json.dumps(event("marketing.engaged", f"c{n}", channel="ig",
                                                               action="view")).encode()) for n in range(count)]
        return seqs[-1]

    async with projector_of_our_own(stack, name) as (js, pool, _):
        other_pool = await create_pool(stack.servers.database_url, max_size=4)
        writer = Projector(name, [ContactEventsProjection()], js, pool, wait=0.1, batch_max=5)
        standby = Projector(name, [ContactEventsProjection()], js, other_pool, wait=0.1, batch_max=5)
        standby_reads: list[int] = []
        reading = standby._run_from_committed_position

        async def counted() -> None:
            standby_reads.append(standby.position)
            await reading()

        standby._run_from_committed_position = counted
        writing = asyncio.create_task(writer.run())
        waiting = None
        try:
            await _until_at(pool, name, await append(12))
            waiting = asyncio.create_task(standby.run())
            last = await append(30)
            await _until_at(pool, name, last)
            await asyncio.sleep(1.0)  # a standby tries again after 0.5 s, then 1 s
            assert standby_reads == []  # it never read the log, nor wrote, beside a live writer
            assert (await writers(pool)).get(name) == writer_name("projector")  # one process: both are this one

            writer.stop()
            await asyncio.wait_for(writing, 10)
            last = await append(8)
            await _until_at(pool, name, last)  # within 2 s of the writer's end
            assert (await writers(pool)).get(name) == writer_name("projector")
            assert len(standby_reads) == 1
            rows = await pool.fetchval("SELECT count(*) FROM contact_events WHERE workspace = $1", ws)
            assert rows == 12 + 30 + 8  # each event once, whoever wrote it
        finally:
            for projector, task in ((writer, writing), (standby, waiting)):
                projector.stop()
                if task is not None:
                    await asyncio.wait_for(task, 10)
            await other_pool.close()
        assert name not in await writers(pool)  # none running: `touchline status` says so
