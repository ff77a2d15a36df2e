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


def test_health_reports_a_nats_without_jetstream_as_not_ready(servers, tmp_path):
    """A nats-server out of disk turns its JetStream off ("JetStream out of resources, will be
    DISABLED") and still answers pings: health said ready while every publish timed out (an
    outside audit). A server started without JetStream answers the same way."""
    import subprocess

    from services.runtime.embedded import free_port, nats_server_binary, stop_process

    port = free_port()
    server = subprocess.Popen([nats_server_binary(), "-a", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def check() -> dict[str, bool]:
        for _ in range(100):  # until it listens
            try:
                nc = await connect_client(f"nats://127.0.0.1:{port}")
                break
            except Exception:
                await asyncio.sleep(0.1)
        pool = await create_pool(servers.database_url, max_size=1)
        try:
            return (await report(pool, nc)).checks
        finally:
            await pool.close()
            await nc.close()

    try:
        assert asyncio.run(check())["nats"] is False
    finally:
        stop_process(server)
