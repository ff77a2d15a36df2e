"""A stop must end even when a task loses its cancellation (Python 3.11's wait_for, gh-86296)."""

from __future__ import annotations

import asyncio

from services.runtime.loop import cancel_and_wait


def test_a_task_that_lost_one_cancellation_is_still_stopped():
    async def loses_the_first_cancellation(cancelled: list[int]) -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append(1)
                if len(cancelled) > 1:
                    raise  # as wait_for does when the race is not hit

    async def run() -> tuple[int, bool]:
        cancelled: list[int] = []
        task = asyncio.create_task(loses_the_first_cancellation(cancelled))
        await asyncio.sleep(0)
        await asyncio.wait_for(cancel_and_wait(task, grace=0.05), 5)
        return len(cancelled), task.cancelled()

    assert asyncio.run(run()) == (2, True)


def test_a_failed_task_is_awaited_without_raising():
    async def fails() -> None:
        raise ValueError("boom")

    async def run() -> BaseException | None:
        task = asyncio.create_task(fails())
        await asyncio.sleep(0)
        await cancel_and_wait(task)
        return task.exception()

    assert isinstance(asyncio.run(run()), ValueError)
