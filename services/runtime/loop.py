"""The event loop of every long-running process: uvloop where it is installed (not on Windows).

The services run their own ``main`` coroutine (uvicorn's ``serve()`` inside it, FastStream and
nats-py beside it), so uvicorn's ``loop="uvloop"`` setting never applied: they all ran on
asyncio's pure-Python selector loop, whose transports, handles and timers were a large share of an
API worker's time per request (docs/performance.md)."""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run(main)
    return uvloop.run(main)


async def cancel_and_wait(*tasks: asyncio.Task, grace: float = 5.0) -> None:
    """Cancel the tasks and wait until every one has ended.

    Python 3.11's ``asyncio.wait_for`` loses a cancellation that arrives just as what it waits for
    completes (gh-86296, fixed in 3.12): the task carries on as if never cancelled, and a plain
    ``gather`` after ``cancel()`` then waits for ever (a stop that hung the test suite in CI). A
    task still running after ``grace`` seconds is cancelled again; one that is merely slow to clean
    up loses the rest of its clean-up rather than the process its stop."""
    pending = {task for task in tasks if not task.done()}
    for task in pending:
        task.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=grace)
        for task in pending:
            task.cancel()
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: the caller decides what a failure means
