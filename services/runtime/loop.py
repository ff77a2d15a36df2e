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
