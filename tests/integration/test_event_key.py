"""event_index's key (migration 015) is computed in Python by the ingest side and the projector, and
in SQL by ``event_key()`` (the migration's conversion of old rows, and people): both must agree,
or an event indexed one way is not found the other way and is stored twice."""

from __future__ import annotations

import asyncio
import uuid
from importlib import resources

import asyncpg

from events.log import index_key, message_id
from services.store.db import create_pool

KEYS = [
    ("acme", "/shop/a", "e1"),
    ("acme", "/shop/a", "e10"),
    ("acme", "/shop/a1", "0"),  # the separator keeps ("/shop/a", "10") and ("/shop/a1", "0") apart
    ("acme", "/shop/a", "10"),
    ("ws-ü", "/läden/ß", "ідентифікатор-😀"),
    ("w", "", ""),
]


def test_sql_event_key_is_the_python_index_key(stack):
    async def run() -> list[bytes]:
        pool = await create_pool(stack.servers.database_url, max_size=1)
        try:
            return [await pool.fetchval("SELECT event_key($1, $2, $3)", *key) for key in KEYS]
        finally:
            await pool.close()

    from_sql = asyncio.run(run())
    assert from_sql == [index_key(*key) for key in KEYS]
    assert len(set(from_sql)) == len(KEYS)
    assert all(message_id(*key).startswith(sql.hex()) for key, sql in zip(KEYS, from_sql))


def test_migration_rekeys_an_existing_index_without_losing_a_row(stack):
    """Migration 015 run on event_index as migrations 001 and 013 left it, in a schema of its own."""
    migration = resources.files("services.store.migrations").joinpath("015_event_index_by_key.sql").read_text()
    schema = f"migration_{uuid.uuid4().hex[:8]}"
    old_rows = [(*key, seq) for seq, key in enumerate(KEYS, start=1)]

    async def run():
        conn = await asyncpg.connect(stack.servers.database_url)
        try:
            await conn.execute(f"CREATE SCHEMA {schema}; SET search_path = {schema}")
            await conn.execute(
                "CREATE TABLE event_index (workspace text NOT NULL, source text NOT NULL, id text NOT NULL,"
                " seq bigint NOT NULL, PRIMARY KEY (workspace, source, id));"
                " CREATE INDEX event_index_by_seq ON event_index (seq)"
            )
            await conn.executemany("INSERT INTO event_index VALUES ($1, $2, $3, $4)", old_rows)
            await conn.execute(migration)
            rows = await conn.fetch("SELECT key, seq FROM event_index")
            indexes = await conn.fetch(
                "SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename = 'event_index'", schema)
            return rows, {row["indexname"] for row in indexes}
        finally:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            await conn.close()

    rows, indexes = asyncio.run(run())
    assert {row["key"]: row["seq"] for row in rows} == {index_key(*key): seq for *key, seq in old_rows}
    assert indexes == {"event_index_pkey", "event_index_by_seq"}
