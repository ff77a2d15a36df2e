"""Poison events: parked with error and position, the rest goes on, re-driven after a fix."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time

import pytest

from events.log import LOG_STREAM, log_subject
from projections.contacts import ContactsProjection
from projections.followups import FollowupsProjection
from projections.registry import all_projections
from services import replay
from services.cli.audit import replay_summary
from services.nats_io import last_log_seq
from services.parking import redrive, waiting
from services.projector.runner import Projector
from services.store.db import create_pool
from tests.support import event, settle, touchline_cli
from services.nats_io import connect_client


async def append_raw(url: str, workspace: str, body: bytes) -> int:
    """Write straight into the log, as a bug or an older/newer producer might have."""
    nc = await connect_client(url)
    ack = await nc.jetstream().publish(log_subject(workspace), body, stream=LOG_STREAM)
    await nc.close()
    return ack.seq


def test_an_undecodable_event_is_parked_and_the_projector_goes_on(stack):
    ws, auth = stack.new_workspace()
    poison = json.dumps(event("sales.deal.exploded", "zed")).encode()
    bad_seq = asyncio.run(append_raw(stack.servers.nats_url, ws, poison))
    last = stack.ingest(ws, auth, [event("marketing.engaged", "zed", channel="ig", action="like")])
    contact = stack.get(f"/v1/workspaces/{ws}/contacts/zed", auth, min_seq=last)
    assert contact.status_code == 200 and contact.json()["touches"]["total"] == 1
    # The rules worker went on past the poison too: the like still gets its follow-up.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not stack.get(f"/v1/workspaces/{ws}/followups", auth).json():
        time.sleep(0.2)
    assert [f["rule"] for f in stack.get(f"/v1/workspaces/{ws}/followups", auth).json()] == ["hot-engagement"]
    main = next(p for p in stack.get("/v1/status", stack.admin()).json()["projectors"] if p["name"] == "main")
    assert main["parked"] >= 1
    listed = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "parked", "list"],
        env={**stack.env, "COLUMNS": "250"}, capture_output=True, text=True, timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert str(bad_seq) in listed.stdout and ws[:10] in listed.stdout
    assert "rules" in listed.stdout  # the rules worker set it aside as well
    as_json = subprocess.run([sys.executable, "-m", "services.cli.main", "parked", "list", "--json"],
                             env=stack.env, capture_output=True, text=True, timeout=60)
    parked = [json.loads(line) for line in as_json.stdout.splitlines()]
    ours = [item for item in parked if item["seq"] == bad_seq]
    assert {item["projector"] for item in ours} >= {"main", "rules"} and all(item["workspace"] == ws for item in ours)
    assert all(item["parked_at"].endswith("Z") for item in ours)


def test_a_replay_leaves_out_an_undecodable_event_as_the_live_projector_does_and_says_so(stack):
    """`touchline replay` of a workspace whose log holds an event this code cannot decode (one the
    live projector parked) ended in a traceback, rebuild, verify and snapshot alike: the audit of
    that workspace's past was impossible until the code could read every event."""
    ws, auth = stack.new_workspace()
    stack.ingest(ws, auth, [event("marketing.engaged", "zed", channel="ig", action="like")])
    bad_seq = asyncio.run(append_raw(stack.servers.nats_url, ws, json.dumps(event("sales.deal.exploded", "zed")).encode()))
    last = stack.ingest(ws, auth, [event("sales.deal.won", "zed", deal_id="d1", amount="120.00", currency="EUR")])
    before = stack.get(f"/v1/workspaces/{ws}/contacts/zed", auth, min_seq=settle(stack, ws, auth)).json()
    said = f"1 event(s) this version cannot decode left out, as the live projector leaves them out (log seq {bad_seq};"
    for args in (("replay", "--workspace", ws), ("replay", "--workspace", ws, "--verify"),
                 ("replay", "--workspace", ws, "--until-seq", str(last))):
        done = touchline_cli(*args, env=stack.env)
        assert done.returncode == 0 and said in " ".join(done.stdout.split()), (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
    assert "the read models matched the log" in touchline_cli("replay", "--workspace", ws, env=stack.env).stdout
    assert stack.get(f"/v1/workspaces/{ws}/contacts/zed", auth).json() == before
    snapshot = stack.get(f"/v1/workspaces/{ws}/contacts/zed", auth, snapshot=f"seq-{last}").json()
    assert snapshot["deals_won"] == before["deals_won"] == 1 and snapshot["touches"] == before["touches"]


class BuggyContacts(ContactsProjection):
    """The contact read model with a bug that a subject named "boom" triggers."""

    async def apply(self, conn, batch):
        if any(logged.event.subject == "boom" for logged in batch):
            raise ValueError("bug: cannot handle boom")
        await super().apply(conn, batch)


@contextlib.asynccontextmanager
async def projector_of_our_own(stack, name: str):
    """(js, pool, log position): the live projector stopped, so that the rows a test's own projector
    writes are its alone; restarted afterwards."""
    nc = await connect_client(stack.servers.nats_url)
    js = nc.jetstream()
    pool = await create_pool(stack.servers.database_url, max_size=4)
    stack.projector.stop()
    try:
        start = await last_log_seq(js)
        await pool.execute("INSERT INTO projector_positions (name, position) VALUES ($1, $2)", name, start)
        yield js, pool, start
    finally:
        # The test's events are in the read models already, by its own projector: the live one,
        # stopped at the log's end before them, moves past them too. Applying them again, it met
        # their audit rows, parked every one of them, a second or more each, and a later test
        # that projects from the live position waited for all of that (timed out under load).
        own = await pool.fetchval("SELECT position FROM projector_positions WHERE name = $1", name)
        await pool.execute("UPDATE projector_positions SET position = $1 WHERE name = $2 AND position = $3",
                           own, replay.LIVE_PROJECTOR, start)
        await pool.execute("DELETE FROM projector_positions WHERE name = $1", name)
        await pool.close()
        await nc.close()
        stack.restart_projector(kill=False)


async def project_until(projector: Projector, last: int) -> None:
    running = asyncio.create_task(projector.run())
    while projector.position < last:
        await asyncio.sleep(0.05)
    projector.stop()
    await asyncio.wait_for(running, 10)


@pytest.mark.asyncio
async def test_a_projection_bug_parks_one_event_and_redrive_applies_it_after_the_fix(stack):
    ws, auth = stack.new_workspace()
    name = "poison-test"
    async with projector_of_our_own(stack, name) as (js, pool, _):
        last = stack.ingest(ws, auth, [
            event("marketing.engaged", "ok-1", channel="ig", action="view"),
            event("marketing.engaged", "boom", channel="ig", action="view"),
            event("marketing.engaged", "ok-2", channel="ig", action="view"),
        ])
        await project_until(Projector(name, [BuggyContacts()], js, pool, wait=0.1), last)

        parked = await waiting(pool, name)
        assert [(row["seq"], row["workspace"]) for row in parked] == [(last - 1, ws)]
        assert "cannot handle boom" in parked[0]["error"]
        contacts = {r["contact"] for r in await pool.fetch("SELECT contact FROM contacts WHERE workspace = $1", ws)}
        assert contacts == {"ok-1", "ok-2"}

        assert await redrive(pool, js, name, [BuggyContacts()]) == {last - 1: parked[0]["error"]}
        assert await redrive(pool, js, name, [ContactsProjection()]) == {last - 1: None}
        assert await waiting(pool, name) == []
        contacts = {r["contact"] for r in await pool.fetch("SELECT contact FROM contacts WHERE workspace = $1", ws)}
        assert contacts == {"ok-1", "boom", "ok-2"}


@pytest.mark.asyncio
async def test_a_failing_batch_in_the_pipeline_is_applied_alone_and_the_rest_exactly_once(stack):
    """Batches overlap (the next one's audit and touch rows are written before the position lock);
    a batch that fails there is applied again event by event while the one behind it is dropped
    and read again: every row once, the poison parked."""
    from projections.audit import ContactEventsProjection
    from projections.touches import TouchesProjection

    ws, auth = stack.new_workspace()
    name = "pipeline-test"
    async with projector_of_our_own(stack, name) as (js, pool, _):
        contacts = [f"c{n}" if n != 23 else "boom" for n in range(60)]
        last = stack.ingest(ws, auth, [event("marketing.engaged", c, channel="ig", action="view") for c in contacts]
                            + [event("marketing.engaged", "c5", channel="ig", action="view", id=f"again-{n}")
                               for n in range(3)])
        projections = [BuggyContacts(), ContactEventsProjection(), TouchesProjection()]
        await project_until(Projector(name, projections, js, pool, wait=0.1, batch_max=10), last)

        first = last - len(contacts) - 2  # one request: one atomic batch, contiguous seqs
        boom = first + contacts.index("boom")
        assert [row["seq"] for row in await waiting(pool, name)] == [boom]
        stored = {r["contact"] for r in await pool.fetch("SELECT contact FROM contacts WHERE workspace = $1", ws)}
        assert stored == set(contacts) - {"boom"}
        audit = await pool.fetch("SELECT seq FROM contact_events WHERE workspace = $1 AND seq <= $2 ORDER BY seq", ws, last)
        assert [r["seq"] for r in audit if r["seq"] >= first] == [seq for seq in range(first, last + 1) if seq != boom]
        touches = await pool.fetchval("SELECT count(*) FROM touch_events WHERE workspace = $1 AND source = '/test'", ws)
        channel = await pool.fetchval("SELECT marketing FROM touch_channels WHERE workspace = $1", ws)
        assert touches == channel == 62


class BuggyFollowups(FollowupsProjection):
    """The last read model, with two bugs that come after every other read model has written the
    batch: PostgreSQL fails "boom" (the transaction aborted), asyncpg refuses "bang"'s argument
    before sending it (its DataError: no connection's trouble, not to be retried)."""

    async def apply(self, conn, batch):
        await super().apply(conn, batch)
        subjects = {logged.event.subject for logged in batch}
        if "boom" in subjects:
            await conn.execute("SELECT 1 / 0")
        if "bang" in subjects:
            await conn.execute("SELECT $1::int", "not a number")


def with_bugs() -> list:
    return [BuggyFollowups() if isinstance(p, FollowupsProjection) else p for p in all_projections()]


async def workspace_rows(pool, ws: str) -> dict[str, list]:
    return {table: sorted(map(tuple, await pool.fetch(f"SELECT * FROM {table} WHERE workspace = $1", ws)), key=repr)
            for table in replay.read_model_tables()}


@pytest.mark.asyncio
async def test_a_replay_leaves_out_what_the_live_projector_parked_and_refuses_to_leave_out_what_it_applied(stack):
    """A replay stopped at the first event a read model failed on, ending in its error, where the
    live projector parks it and goes on: a workspace could be neither rebuilt, nor verified, nor
    read as of a past moment until the bug was fixed. Now it leaves out what the live projector
    parked, says so, takes off the parked list what it applies, and refuses to stand on leaving
    out what the live projector applied (another version's code)."""
    ws, auth = stack.new_workspace()
    contacts = ("ok-1", "boom", "bang", "ok-2")
    nc = await connect_client(stack.servers.nats_url)
    pool = await create_pool(stack.servers.database_url, max_size=4)
    stack.projector.stop()
    try:
        js = nc.jetstream()
        last = stack.ingest(ws, auth, [event("marketing.engaged", c, channel="ig", action="view") for c in contacts])
        boom, bang = last - 2, last - 1  # one request: one atomic batch, contiguous seqs
        live = Projector(replay.LIVE_PROJECTOR, with_bugs(), js, pool, wait=0.1)
        await asyncio.wait_for(project_until(live, last), 60)
        assert [row["seq"] for row in await waiting(pool, replay.LIVE_PROJECTOR) if row["workspace"] == ws] == [boom, bang]
        parked_live = await workspace_rows(pool, ws)
        assert {row[1] for row in parked_live["contacts"]} == {"ok-1", "ok-2"}

        stats, differences = await replay.verify(pool, js, ws, projections=with_bugs())
        assert differences == [] and stats.failed == [boom, bang] and stats.not_parked == stats.parked_applied == []
        assert f"2 event(s) a read model failed to apply left out, as the live projector leaves them out (log seq {boom}, {bang};" \
            in replay_summary(stats)
        stats = await replay.rebuild(pool, js, ws, projections=with_bugs())
        assert (stats.failed, stats.rows_replaced) == ([boom, bang], 0)
        snapshot = await replay.build_snapshot(pool, js, ws, "buggy", until_seq=last, projections=with_bugs())
        assert snapshot.failed == [boom, bang] and snapshot.not_parked == []

        # The bugs fixed: the replay applies what was parked, and a rebuild takes it off the list.
        stats, differences = await replay.verify(pool, js, ws)
        assert stats.parked_applied == [boom, bang] and {d.key.get("contact") for d in differences} >= {"boom", "bang"}
        stats = await replay.rebuild(pool, js, ws)
        assert stats.failed == [] and stats.parked_applied == [boom, bang] and stats.rows_replaced > 0
        assert "taken off the parked list" in replay_summary(stats, rebuilt=True)
        assert [row for row in await waiting(pool, replay.LIVE_PROJECTOR) if row["workspace"] == ws] == []
        fixed = await workspace_rows(pool, ws)
        assert {row[1] for row in fixed["contacts"]} == set(contacts)

        # The bugs back (an older version's replay): leaving out what the live projector applied is refused.
        for attempt in (replay.rebuild(pool, js, ws, projections=with_bugs()),
                        replay.build_snapshot(pool, js, ws, "buggy-again", until_seq=last, projections=with_bugs())):
            with pytest.raises(replay.UnlikeLive, match=f"log seq {boom}, {bang}: this code failed to apply"):
                await attempt
        assert await workspace_rows(pool, ws) == fixed
        stats, _ = await replay.verify(pool, js, ws, projections=with_bugs())
        assert stats.not_parked == [boom, bang] and "yet the live projector applied 2 of them" in replay_summary(stats)
    finally:
        await pool.close()
        await nc.close()
        stack.restart_projector(kill=False)


class Unwritten:
    """A read model that writes nothing: a second projector beside the live one, harmlessly."""

    name = "unwritten"
    tables = ("contacts",)
    before_lock = False

    def prepare(self, batch):
        return None

    async def apply(self, conn, batch):
        pass


@pytest.mark.asyncio
async def test_an_idle_projector_analyzes_read_models_that_grew(stack):
    """Until autovacuum's next visit (a minute), a freshly loaded workspace would be planned as empty."""
    ws, auth = stack.new_workspace()
    nc = await connect_client(stack.servers.nats_url)
    pool = await create_pool(stack.servers.database_url, max_size=2)
    name = "analyze-test"
    count = "SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'contacts'"
    try:
        await pool.execute("INSERT INTO projector_positions (name, position) VALUES ($1, $2)", name,
                           await last_log_seq(nc.jetstream()))
        before = await pool.fetchval(count)
        last = stack.ingest(ws, auth, [event("marketing.engaged", f"c{n}", channel="ig", action="view") for n in range(5)])
        projector = Projector(name, [Unwritten()], nc.jetstream(), pool, wait=0.1, analyze_after=5)
        running = asyncio.create_task(projector.run())
        deadline = time.monotonic() + 30
        while (await pool.fetchval(count)) == before and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        projector.stop()
        await asyncio.wait_for(running, 10)
        assert projector.position >= last
        assert await pool.fetchval(count) > before
    finally:
        await pool.execute("DELETE FROM projector_positions WHERE name = $1", name)
        await pool.close()
        await nc.close()
