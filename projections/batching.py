"""A batch's pure work done before its transaction.

A projection splits ``apply(conn, batch)`` into ``prepare(batch)`` (no I/O: decode-level work,
folds, the rows and column arrays to write) and the writes. The projector and replay prepare
the next batch while PostgreSQL is still applying the current one (``prepare_batch`` in
services/projector/runner.py) and hand ``apply`` a :class:`PreparedBatch`; any other caller
(re-drive, a test) passes a plain list and ``apply`` prepares it itself. Either way the same code
computes the rows.
"""

from __future__ import annotations

from typing import Any, Protocol

import asyncpg

from events.log import LoggedEvent


class Projection(Protocol):
    """A read model: folds a batch of first-copy events into its tables, in the caller's transaction."""

    name: str
    # Every table it writes: what a replay builds in its scratch schema and swaps in.
    tables: tuple[str, ...]
    # True if it only adds rows keyed by the event or adds to counters, so that a pipelined batch
    # may write it before the batch ahead has committed (services/projector/runner.py ``_commit``).
    before_lock: bool

    def prepare(self, batch: list[LoggedEvent]) -> Any: ...

    async def apply(self, conn: asyncpg.Connection, batch: list[LoggedEvent]) -> None: ...


class PreparedBatch(list):
    """Events (``LoggedEvent``) with what each projection's ``prepare`` made of exactly them, by name."""

    def __init__(self, events: list[LoggedEvent]) -> None:
        super().__init__(events)
        self.prepared: dict[str, Any] = {}


def prepared(projection: Projection, batch: list[LoggedEvent]) -> Any:
    """``projection.prepare(batch)``, taken from the batch when the runner has already computed it."""
    done = getattr(batch, "prepared", None)
    if done is not None and projection.name in done:
        return done[projection.name]
    return projection.prepare(batch)
