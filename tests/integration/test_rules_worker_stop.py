"""Stopping the rules worker leaves no subscription behind for the connection's drain to wait on; a
second one waits as a standby."""

from __future__ import annotations

import asyncio

from services.nats_io import last_log_seq
from services.rules.worker import RulesWorker
from services.store.db import create_pool
from tests.support import Servers, connected


def test_a_stopped_rules_worker_holds_no_subscription(servers):
    """Its timer consumer is a pull subscription. An idle fetch's expiry notice could arrive after
    the fetch gave up and stay in that subscription's queue, and `serve`'s drain then waited 3 s for
    it and printed a CancelledError traceback at every stop after a quiet minute. Cancelled as
    `serve` cancels it, the worker gives every subscription back first."""

    def queued(nc) -> int:
        """Subscriptions whose messages wait in a queue for their reader (the others, nats-py's
        own reply subscriptions, hand each message to a callback at once)."""
        return sum(1 for sub in nc._subs.values() if sub._cb is None)

    async def run() -> tuple[int, int]:
        async with connected(servers, "test-rules-stop") as (nc, pool):
            # From the log's end: the shared log's events are other tests' business (from 0 it
            # wrote their rules state and commands over again).
            await pool.execute("INSERT INTO rules_positions (name, position) VALUES ($1, $2) ON CONFLICT (name)"
                               " DO UPDATE SET position = excluded.position", "test-rules-stop",
                               await last_log_seq(nc.jetstream()))
            worker = RulesWorker(nc.jetstream(), pool, name="test-rules-stop")
            task = asyncio.create_task(worker.run())
            await wait_until(lambda: queued(nc) >= 2, 60)  # the log reader and the timer consumer
            await asyncio.sleep(2.5)  # the timer consumer has been fetching, idle, for a while
            running = queued(nc)
            task.cancel()
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)
            left = queued(nc)
            await asyncio.wait_for(nc.drain(), 2)
            return running, left

    running, left = asyncio.run(run())
    assert running >= 2  # the log reader and the timer consumer
    assert left == 0


def test_a_second_rules_worker_waits_as_a_standby_and_takes_over_when_the_writer_stops(tmp_path):
    """Fenced only by the position's row lock, two rules workers took turns, each fencing the other
    and reading batches for nothing (an outside audit ran two beside `up`). The writer now holds a
    session lock, as the projector's does; the other waits for it. Servers of its own: a worker
    takes fired timers from the one durable consumer, which the suite's other tests' timers use."""
    name = "test-rules-standby"
    servers = Servers(tmp_path)

    async def run() -> tuple[list[str], list[str]]:
        async with connected(servers, name) as (nc, pool):
            other_pool = await create_pool(servers.database_url, max_size=3)
            js = nc.jetstream()
            # From the log's end: the shared log's events are other tests' business.
            await pool.execute("INSERT INTO rules_positions (name, position) VALUES ($1, $2) ON CONFLICT (name)"
                               " DO UPDATE SET position = excluded.position", name, await last_log_seq(js))
            workers = {"first": RulesWorker(js, pool, name=name, wait=0.1),
                       "second": RulesWorker(js, other_pool, name=name, wait=0.1)}
            reads: list[str] = []
            for label, worker in workers.items():
                def counted(worker=worker, label=label, reading=worker._run_from_committed_position):
                    reads.append(label)
                    return reading()
                worker._run_from_committed_position = counted
            first = asyncio.create_task(workers["first"].run())
            await wait_until(lambda: reads == ["first"])
            second = asyncio.create_task(workers["second"].run())
            await asyncio.sleep(2.0)  # a standby tries again after 0.5 s, then 1 s
            beside_a_writer = list(reads)
            workers["first"].stop()
            await asyncio.wait_for(first, 10)
            await wait_until(lambda: len(reads) == 2)  # within 2 s of the writer's end
            workers["second"].stop()
            await asyncio.wait_for(second, 10)
            await other_pool.close()
            return beside_a_writer, reads

    try:
        beside_a_writer, reads = asyncio.run(run())
    finally:
        servers.stop()
    assert beside_a_writer == ["first"]  # the second never read the log beside a live writer
    assert reads == ["first", "second"]


async def wait_until(check, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)
