"""A batch's pure work done before its transaction.

A projection splits ``apply(conn, batch)`` into ``prepare(batch)`` (no I/O: decode-level work,
folds, the rows and column arrays to write) and the writes. The projector and replay prepare
the next batch while PostgreSQL is still applying the current one (``prepare_batch`` in
services/projector/runner.py) and hand ``apply`` a :class:`PreparedBatch`; any other caller
(re-drive, a test) passes a plain list and ``apply`` prepares it itself. Either way the same code
computes the rows.
"""

from __future__ import annotations

from typing import Any

from events.log import LoggedEvent


class PreparedBatch(list):
    """Events (``LoggedEvent``) with what each projection's ``prepare`` made of exactly them, by name."""

    def __init__(self, events: list[LoggedEvent]) -> None:
        super().__init__(events)
        self.prepared: dict[str, Any] = {}


def prepared(projection: Any, batch: list[LoggedEvent]) -> Any:
    """``projection.prepare(batch)``, taken from the batch when the runner has already computed it."""
    done = getattr(batch, "prepared", None)
    if done is not None and projection.name in done:
        return done[projection.name]
    return projection.prepare(batch)
