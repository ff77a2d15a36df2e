"""A database that drops a connection mid-operation (a restart) is "unavailable", never an
unexpected error: ingest answers 503 or defers its index, every loop retries (an outside audit met
asyncpg's InternalClientError, "cannot switch to state 12; another operation is in progress", after
a PostgreSQL restart: a 500 for events already stored, and a rules worker that ended)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from services.ingest import Digests, Ingestor, IngestUnavailable
from services.store.db import RETRYABLE, UNAVAILABLE

MID_OPERATION = asyncpg.exceptions.InternalClientError("cannot switch to state 12; another operation (2) is in progress")


class DroppedPool:
    """A pool whose connection the server dropped: every statement fails as asyncpg then fails it."""

    async def fetch(self, *args):
        raise MID_OPERATION


def test_a_connection_dropped_mid_operation_is_unavailable_and_retried():
    assert isinstance(MID_OPERATION, UNAVAILABLE) and isinstance(MID_OPERATION, RETRYABLE)


def test_ingest_meets_it_as_the_index_being_unavailable():
    ingestor = Ingestor.__new__(Ingestor)
    ingestor.pool = DroppedPool()
    key = ("acme", "/shop", "e1")
    with pytest.raises(IngestUnavailable, match="the dedupe index is unavailable"):
        asyncio.run(ingestor._lookup([key], Digests()))
    # After the log append: the events are stored; the index is deferred to the projector.
    assert asyncio.run(ingestor._index([key], [(7, False)], Digests())) == {key: (7, False)}
