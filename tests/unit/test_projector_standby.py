"""A projector fenced at every try (another process moves its position) tries less and less often.
Two processes of a projector no longer meet here: the second waits for the writer's session lock
(tests/integration/test_projector_standby.py)."""

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
        running = asyncio.create_task(projector._project())
        await asyncio.sleep(4.0)
        projector.stop()
        await asyncio.wait_for(running, 6)

    asyncio.run(main())
    gaps = [round(later - earlier, 1) for earlier, later in zip(tries, tries[1:])]
    assert gaps[:3] == [0.5, 1.0, 2.0], gaps
