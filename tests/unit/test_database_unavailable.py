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


@pytest.mark.parametrize(("error", "retried"), [
    (asyncpg.exceptions.DiskFullError("could not extend file: No space left on device"), True),
    (asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"), True),
    (asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"), True),
    (asyncpg.exceptions.CrashShutdownError("terminating connection because of crash of another server process"), True),
    (asyncpg.exceptions.CannotConnectNowError("the database system is starting up"), True),
    # The statement's own limits: the same batch would fail for ever; event by event may pass.
    (asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"), False),
    (asyncpg.exceptions.ConfigurationLimitExceededError("temporary file size exceeds temp_file_limit"), False),
    (asyncpg.exceptions.OutOfMemoryError("out of memory"), False),
    # A read model's own failure.
    (asyncpg.exceptions.DivisionByZeroError("division by zero"), False),
    (asyncpg.exceptions.DataError("invalid input for query argument $1"), False),
    (asyncpg.exceptions.UniqueViolationError("duplicate key value violates unique constraint"), False),
])
def test_the_servers_trouble_is_retried_not_blamed_on_the_event(error, retried):
    """The projector parks an event whose apply fails with anything not retryable: a full disk
    parked every event it met until space was made (then each to redrive by hand)."""
    assert isinstance(error, RETRYABLE) == retried
    if retried:
        assert isinstance(error, UNAVAILABLE)


def test_ingest_meets_it_as_the_index_being_unavailable():
    ingestor = Ingestor.__new__(Ingestor)
    ingestor.pool = DroppedPool()
    key = ("acme", "/shop", "e1")
    with pytest.raises(IngestUnavailable, match="the dedupe index is unavailable"):
        asyncio.run(ingestor._lookup([key], Digests()))
    # After the log append: the events are stored; the index is deferred to the projector.
    assert asyncio.run(ingestor._index([key], [(7, False)], Digests())) == {key: (7, False)}
