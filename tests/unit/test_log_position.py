"""A reader that another process fences (a second projector, rules worker or inbox reader beside a
live one) tries again less and less often. Two projectors no longer meet here: the second waits
for the writer's session lock (tests/integration/test_projector_standby.py)."""

from __future__ import annotations

import asyncio

import pytest

from services.log_position import BACKOFF_PAUSES, Backoff, Fenced


@pytest.fixture
def slept(monkeypatch) -> list[float]:
    """asyncio.sleep, recorded instead of waited for."""
    pauses: list[float] = []

    async def sleep(seconds: float, result=None):
        pauses.append(seconds)
        return result

    monkeypatch.setattr(asyncio, "sleep", sleep)
    return pauses


def test_the_pauses_grow_to_five_seconds_and_start_again_once_it_got_on(slept):
    backoff = Backoff("reader.fenced")

    async def main() -> None:
        for _ in range(6):
            await backoff.pause()
        backoff.got_on()
        await backoff.pause()

    asyncio.run(main())
    assert slept == [0.5, 1.0, 2.0, 5.0, 5.0, 5.0, 0.5]
    assert BACKOFF_PAUSES[-1] == 5.0


@pytest.mark.parametrize("reader", ["projector", "rules"])
def test_a_fenced_reader_tries_again_less_and_less_often(slept, reader):
    """Each try reads a batch of the log for nothing: the projector tried every 0.5 s for ever (an
    audit counted 46 in a run), and the rules worker still did after the projector's fix."""
    from services.projector.runner import Projector
    from services.rules.worker import RulesWorker

    tries: list[int] = []

    async def fenced() -> None:
        tries.append(len(slept))
        process.position = 100 * len(tries)  # each try loads the position the live one has moved on
        if len(tries) == 5:
            process.stop()
        raise Fenced("position is 9, expected 3")

    if reader == "projector":
        process = Projector.__new__(Projector)
        process.name, process.applied_total, process._stopping = "standby", 0, asyncio.Event()
        process._run_from_committed_position = fenced
        run = process._project
    else:
        process = RulesWorker.__new__(RulesWorker)
        process.applied_batches, process._stopping, process._over = 0, asyncio.Event(), asyncio.Event()
        run = lambda: process._forever("log", fenced)  # noqa: E731

    asyncio.run(run())
    assert slept[:4] == [0.5, 1.0, 2.0, 5.0]
