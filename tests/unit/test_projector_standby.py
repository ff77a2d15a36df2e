"""A projector beside a live writer (a standby): fenced at every try, it tries less and less often."""

from __future__ import annotations

import asyncio


def test_a_fenced_projector_tries_again_less_and_less_often_as_a_standby():
    """Beside a live writer a second projector is fenced at every try, and each try reads a batch of
    the log for nothing: it used to try every 0.5 s for ever (an audit counted 46 in a run)."""
    from services.projector import runner

    tries: list[float] = []

    async def fenced(self) -> None:
        tries.append(asyncio.get_running_loop().time())
        raise runner.Fenced("position is 9, expected 3")

    async def main() -> None:
        projector = runner.Projector.__new__(runner.Projector)
        projector.name, projector.applied_total, projector._stopping = "standby", 0, asyncio.Event()
        projector._run_from_committed_position = fenced.__get__(projector)
        running = asyncio.create_task(projector.run())
        await asyncio.sleep(4.0)
        projector.stop()
        await asyncio.wait_for(running, 6)

    asyncio.run(main())
    gaps = [round(later - earlier, 1) for earlier, later in zip(tries, tries[1:])]
    assert gaps[:3] == [0.5, 1.0, 2.0], gaps
