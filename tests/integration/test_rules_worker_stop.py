"""Stopping the rules worker leaves no subscription behind for the connection's drain to wait on."""

from __future__ import annotations

import asyncio

from services.rules.worker import RulesWorker
from tests.support import connected


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
            worker = RulesWorker(nc.jetstream(), pool, name="test-rules-stop")
            task = asyncio.create_task(worker.run())
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
