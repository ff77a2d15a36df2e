"""Health says NATS is down when it stops answering, not only when its connection closes."""

from __future__ import annotations

import asyncio
import os
import signal

from nats.errors import TimeoutError as NatsTimeout
import psutil

from services.runtime.embedded import EmbeddedNats
from services.nats_io import connect_client
from services.store.db import create_pool
from services.store.readiness import report


def test_health_reports_a_frozen_nats_as_not_ready(servers, tmp_path):
    """A SIGSTOPped NATS keeps its connections open: /v1/health said ready through 15 s of it."""
    nats = EmbeddedNats(tmp_path)
    url = nats.start()

    async def check() -> tuple[bool, bool, bool]:
        nc = await connect_client(url)
        pool = await create_pool(servers.database_url, max_size=1)
        try:
            before = (await report(pool, nc)).checks["nats"]
            os.kill(nats.process.pid, signal.SIGSTOP)
            # kill() returns before every thread of the server has stopped: a PONG written in
            # that moment passed the check (seen once in five runs).
            while psutil.Process(nats.process.pid).status() != psutil.STATUS_STOPPED:
                await asyncio.sleep(0.001)
            try:
                frozen = (await report(pool, nc)).checks["nats"]
            finally:
                os.kill(nats.process.pid, signal.SIGCONT)
            await asyncio.sleep(0.2)
            after = (await report(pool, nc)).checks["nats"]
            # The frozen check's ping was given up on; its PONG, late, ended the client's reading
            # for good, while health went on saying ready.
            try:
                await nc.jetstream(timeout=3).account_info()
                answering = True
            except NatsTimeout:
                answering = False
            return before, frozen, after, answering
        finally:
            await pool.close()
            await nc.close()

    try:
        assert asyncio.run(check()) == (True, False, True, True)
    finally:
        nats.stop()
