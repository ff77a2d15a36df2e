"""Readiness: service heartbeats, and the read-your-writes wait behind ``?min_seq=N``."""

from __future__ import annotations

import asyncio
from typing import Annotated, Awaitable, Callable
import os
import socket
import time

import asyncpg
import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NatsClient

from services.store.db import UNAVAILABLE as DATABASE_UNAVAILABLE

log = structlog.get_logger()

# The service kinds that must be beating for /v1/health to say ready.
REQUIRED_SERVICES = ("projector", "rules", "dispatcher")
HEARTBEAT_SECONDS = 2.0
STALE_AFTER_SECONDS = 10.0


def instance_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def heartbeat(pool: asyncpg.Pool, service: str, alive: Callable[[], Awaitable[bool]] | None = None) -> None:
    """Beat until cancelled; a database outage only pauses it. With ``alive``, only while it says
    so: a service whose own connection is gone (the dispatcher's broker) is not ready, and health
    says so within STALE_AFTER_SECONDS instead of reporting it up."""
    instance = instance_name()
    while True:
        if alive is not None and not await alive():
            log.warning("heartbeat.skipped", service=service, reason="not connected")
            await asyncio.sleep(HEARTBEAT_SECONDS)
            continue
        try:
            await pool.execute(
                "INSERT INTO service_heartbeats (service, instance) VALUES ($1, $2)"
                " ON CONFLICT (service, instance) DO UPDATE SET seen_at = now()",
                service,
                instance,
            )
        except DATABASE_UNAVAILABLE as err:
            log.warning("heartbeat.failed", service=service, error=str(err))
        await asyncio.sleep(HEARTBEAT_SECONDS)


# How long health waits for NATS to answer a ping, and for PostgreSQL to answer its query.
NATS_PING_SECONDS = 1.0
POSTGRES_ANSWER_SECONDS = 1.0


async def nats_answers(nc: NatsClient) -> bool:
    """Connected, answering a ping, and with JetStream (``_jetstream_on``): a frozen server (SIGSTOP,
    a stalled disk) keeps the connection open, and health said ready through 15 s of it."""
    if not nc.is_connected:
        return False
    reading = nc._reading_task  # nats-py keeps no public sign of it (test_stream_reader checks it is there)
    if reading is None or reading.done():
        # A read loop that ended on an error leaves the connection "connected" and answering
        # nothing, and flush() then returns at once without a ping.
        return False
    try:
        await nc.flush(timeout=NATS_PING_SECONDS)
    except Exception:  # nats-py's timeout, or the connection closing under the ping
        return False
    return await _jetstream_on(nc)


JETSTREAM_INFO = "$JS.API.INFO"


async def _jetstream_on(nc: NatsClient) -> bool:
    """False only when NATS says it has no JetStream: no server answers its API (a nats-server out of
    disk turns JetStream off and still answers pings, and health said ready while every publish
    timed out: an outside audit). An API slow to answer (a cluster electing its leader, a user not
    allowed to ask) is left to the ping's word."""
    try:
        await nc.request(JETSTREAM_INFO, b"", timeout=NATS_PING_SECONDS)
    except nats.errors.NoRespondersError:
        return False
    except Exception:  # noqa: BLE001 - not a "no"
        return True
    return True


class Readiness(msgspec.Struct):
    """`GET /v1/health`'s answer."""

    ready: Annotated[bool, msgspec.Meta(description="Every check passed.")]
    checks: Annotated[dict[str, bool], msgspec.Meta(
        description="nats and postgres answer; projector, rules and dispatcher have a live process.")]


async def report(pool: asyncpg.Pool, nc: NatsClient) -> Readiness:
    checks: dict[str, bool] = {"nats": await nats_answers(nc)}
    try:
        alive = await _beating(pool)
        checks["postgres"] = True
    except (*DATABASE_UNAVAILABLE, asyncio.TimeoutError):
        alive, checks["postgres"] = set(), False
    for service in REQUIRED_SERVICES:
        checks[service] = service in alive
    return Readiness(all(checks.values()), checks)


# Health's query of each pool, while it runs. A frozen PostgreSQL (SIGSTOP, a stalled disk) kept
# health from answering at all: asyncpg gives a query it cancelled back to the pool only once the
# server has taken the cancel request, and waiting for that lasted as long as the freeze. So the
# query is waited for POSTGRES_ANSWER_SECONDS and then left to end on its own, answered after the
# thaw, and checks meanwhile wait for that one instead of starting another (one a check piled up,
# each holding or waiting for a connection: a review).
_HEARTBEAT_QUERIES: dict[int, asyncio.Task] = {}


async def _beating(pool: asyncpg.Pool) -> set[str]:
    """The services whose heartbeat is fresh; TimeoutError when PostgreSQL does not say in time."""
    query = _HEARTBEAT_QUERIES.get(id(pool))
    if query is None:
        query = asyncio.ensure_future(pool.fetch(
            "SELECT service FROM service_heartbeats WHERE seen_at > now() - make_interval(secs => $1)",
            STALE_AFTER_SECONDS))
        _HEARTBEAT_QUERIES[id(pool)] = query

        def done(query: asyncio.Task) -> None:
            _HEARTBEAT_QUERIES.pop(id(pool), None)
            query.cancelled() or query.exception()  # its error is a waiting check's, or no one's

        query.add_done_callback(done)
    rows = await asyncio.wait_for(asyncio.shield(query), POSTGRES_ANSWER_SECONDS)
    return {row["service"] for row in rows}


async def applied_seq(pool: asyncpg.Pool) -> int:
    """The log position every read model has applied: the slowest projector's."""
    return await pool.fetchval("SELECT coalesce(min(position), 0) FROM projector_positions")


async def wait_applied(pool: asyncpg.Pool, min_seq: int, timeout: float) -> int:
    deadline = time.monotonic() + max(0.0, timeout)
    delay = 0.002
    while True:
        applied = await applied_seq(pool)
        if applied >= min_seq or time.monotonic() >= deadline:
            return applied
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.05)
