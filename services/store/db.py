"""PostgreSQL access: a pool that survives server restarts, and versioned migrations."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.parse
from importlib import resources
from typing import Awaitable, Callable, TypeVar

import asyncpg
import structlog

log = structlog.get_logger()
T = TypeVar("T")

# Errors after which the whole transaction is worth running again: a dropped, restarting or
# crashed server, a serialization conflict, the server's disk full or its connections taken. None
# is an event's fault: the projector and the rules worker wait and retry rather than park the
# events they were applying (a full disk parked every event the outage met). Not the statement's
# own limits either (a statement_timeout, temp_file_limit, out of memory): those would fail the
# same batch for ever, where event by event may pass.
RETRYABLE = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.DiskFullError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.InterfaceError,
    # "cannot switch to state 12; another operation is in progress": a connection the server
    # dropped in the middle of an operation (a restart), met again by the next one.
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
    OSError,
)
# What a write to PostgreSQL fails with when the database is down, restarting or refusing it:
# ingest answers these 503 (nothing stored) or defers the index (the events are in the log).
UNAVAILABLE = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError)


# Every session of ours asks the kernel to start writing what it wrote after each 256 kB, as
# PostgreSQL's own checkpointer and background writer do by default (its backends do not). A
# catch-up or a load evicts hundreds of MB of dirty pages from shared buffers; left in the page
# cache, the kernel wrote them out 30 s later in one burst, and reads served meanwhile stalled for
# up to 34 ms (docs/performance.md, item 34).
SESSION_SETTINGS = {"backend_flush_after": "256kB"}


Reset = Callable[[asyncpg.Connection], Awaitable[None]]


def without_password(database_url: str) -> str:
    """A PostgreSQL URL safe to log: its password left out, in the user part and in the query; a
    key=value connection string is not echoed at all."""
    if "://" not in database_url:
        return "(a connection string)"
    parts = urllib.parse.urlsplit(database_url)
    user, _, host = parts.netloc.rpartition("@")
    netloc = f"{user.partition(':')[0]}@{host}" if user else host
    query = urllib.parse.urlencode([(name, value) for name, value in urllib.parse.parse_qsl(parts.query)
                                    if name != "password"], safe="/")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


async def create_pool(
    url: str, *, min_size: int = 1, max_size: int = 8, deadline: float = 60.0, reset: Reset | None = None,
    database_may_come: bool = True,
) -> asyncpg.Pool:
    """Connect with retries: a PostgreSQL in crash recovery refuses connections for a while.
    ``reset``: what a connection going back to the pool runs (asyncpg's default: a reset query).
    ``database_may_come``: a missing database is waited for too, as a service starting beside the
    embedded PostgreSQL that makes it; an admin command says at once that it is missing."""
    started = time.monotonic()
    waited_for = RETRYABLE + ((asyncpg.exceptions.InvalidCatalogNameError,) if database_may_come else ())
    while True:
        try:
            return await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, command_timeout=60,
                                             server_settings=SESSION_SETTINGS, reset=reset)
        except waited_for as err:
            if time.monotonic() - started > deadline:
                raise
            log.warning("postgres.unavailable", error=str(err))
            await asyncio.sleep(0.5)


def refusal_advice(err: Exception) -> str:
    """The line a command or a service stops with when PostgreSQL refuses its connection for good
    (a role, a password, a database that is not there), as ``nats_io.NatsRefused.advice`` for NATS."""
    return f"PostgreSQL refused the connection ({err}); check TOUCHLINE_DATABASE_URL"


async def with_retry(pool: asyncpg.Pool, work: Callable[[asyncpg.Connection], Awaitable[T]], *, attempts: int = 30) -> T:
    """Run ``work`` in one transaction; run it again whole if the connection broke."""
    for attempt in range(attempts):
        try:
            async with pool.acquire() as conn:
                async with conn.transaction():
                    return await work(conn)
        except RETRYABLE as err:
            if attempt == attempts - 1:
                raise
            log.warning("postgres.retry", error=str(err), attempt=attempt + 1)
            await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
    raise AssertionError("unreachable")


def _migrations() -> list[tuple[int, str, str]]:
    found = []
    for entry in resources.files("services.store.migrations").iterdir():
        match = re.match(r"^(\d+)_(.+)\.sql$", entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text()))
    return sorted(found)


async def migrate(pool: asyncpg.Pool) -> list[int]:
    """Apply pending migrations once, whoever else is starting at the same moment."""
    applied: list[int] = []
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(7215001)")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in _migrations():
                if version in done:
                    continue
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
                applied.append(version)
    if applied:
        log.info("postgres.migrated", versions=applied)
    return applied
