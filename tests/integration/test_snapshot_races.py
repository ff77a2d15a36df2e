"""Reading a snapshot while it is replaced or dropped (docs/replay.md, "Snapshots"). An outside
audit read snapshots in a loop while another process rebuilt and dropped them: about one read per
drop answered 200 with the *live* numbers (its schema, looked up just before the drop committed,
no longer resolved, and the tables' unqualified names fell through to public), and replacing one
made some reads fail with a deadlock (503)."""

from __future__ import annotations

import asyncio

import httpx

from services import replay
from tests.integration.test_replay import wait_applied
from tests.support import connected, event


def two_states(stack, contacts: int) -> tuple[str, dict, int, int]:
    """A workspace whose log has two states to snapshot: `then` (contacts engaged), `now` (they bought)."""
    ws, auth = stack.new_workspace()
    then = stack.ingest(ws, auth, [event("marketing.engaged", f"c{n}", channel="ads", action="click")
                                   for n in range(contacts)])
    now = stack.ingest(ws, auth, [event("sales.deal.won", f"c{n}", deal_id=f"d{n}", amount="10", currency="EUR")
                                  for n in range(contacts)])
    wait_applied(stack, ws, auth, now)
    return ws, auth, then, now


def test_a_snapshot_read_during_a_drop_or_a_replacement_is_the_snapshot_or_a_404(stack):
    ws, auth, then, now = two_states(stack, 40)
    live = stack.get(f"/v1/workspaces/{ws}/funnel", auth).json()
    paths = [f"/v1/workspaces/{ws}/{what}" for what in ("funnel", "touches", "goals", "contacts")]
    fixed = {"as_of": "2026-11-01T00:00:00Z"}  # the goals' as_of is now by default, which moves
    answers: dict[str, set] = {path: set() for path in paths}
    statuses: list[int] = []

    async def scenario() -> None:
        async with connected(stack.servers, "snapshot-races") as (nc, pool):
            js = nc.jetstream()
            await replay.build_snapshot(pool, js, ws, "racing", until_seq=then)
            snapshot = {path: stack.get(path, auth, snapshot="racing", **fixed).text for path in paths}
            assert snapshot[paths[0]] != stack.get(paths[0], auth).text  # live has moved on since
            stop = asyncio.Event()

            async def read(path: str) -> None:
                async with httpx.AsyncClient(base_url=stack.base, headers=auth, timeout=30) as client:
                    while not stop.is_set():
                        answer = await client.get(path, params={"snapshot": "racing", **fixed})
                        statuses.append(answer.status_code)
                        if answer.status_code == 200:
                            answers[path].add(answer.text)

            readers = [asyncio.create_task(read(path)) for path in paths for _ in range(2)]
            try:
                for _ in range(8):
                    await replay.build_snapshot(pool, js, ws, "racing", until_seq=then)  # replaces it
                    await replay.drop_snapshot(pool, ws, "racing")
                    await asyncio.sleep(0.02)
                    await replay.build_snapshot(pool, js, ws, "racing", until_seq=then)
            finally:
                stop.set()
                await asyncio.gather(*readers)
            for path in paths:
                assert answers[path] == {snapshot[path]}, path  # never the live answer
            await replay.drop_snapshot(pool, ws, "racing")

    asyncio.run(scenario())
    assert set(statuses) <= {200, 404}, sorted(set(statuses))  # no deadlock's 503
    assert statuses.count(200) > 100 and live["stages"] != {}


def test_min_seq_on_a_snapshot_is_judged_against_the_snapshot_the_read_gets(stack):
    """An outside audit: `?min_seq=` was checked against the snapshot before the read held it, so
    a replacement in between gave 200s with the older snapshot's numbers."""
    ws, auth, then, now = two_states(stack, 30)
    path = f"/v1/workspaces/{ws}/funnel"
    seen: dict[int, set] = {200: set(), 400: set()}

    async def scenario() -> None:
        async with connected(stack.servers, "snapshot-min-seq") as (nc, pool):
            js = nc.jetstream()
            await replay.build_snapshot(pool, js, ws, "moving", until_seq=now)
            newer = stack.get(path, auth, snapshot="moving").text
            stop = asyncio.Event()

            async def read() -> None:
                async with httpx.AsyncClient(base_url=stack.base, headers=auth, timeout=30) as client:
                    while not stop.is_set():
                        answer = await client.get(path, params={"snapshot": "moving", "min_seq": now})
                        assert answer.status_code in seen, answer.text
                        seen[answer.status_code].add(answer.text)

            readers = [asyncio.create_task(read()) for _ in range(4)]
            try:
                for _ in range(8):
                    await replay.build_snapshot(pool, js, ws, "moving", until_seq=then)
                    await replay.build_snapshot(pool, js, ws, "moving", until_seq=now)
            finally:
                stop.set()
                await asyncio.gather(*readers)
            assert seen[200] == {newer}  # never the older snapshot's numbers
            assert all("stands at log seq" in text for text in seen[400])
            await replay.drop_snapshot(pool, ws, "moving")

    asyncio.run(scenario())
    assert seen[400] and seen[200]
