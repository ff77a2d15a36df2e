"""How replay builds and swaps (docs/replay.md): in-memory first copies, a swap that writes only
what differs, snapshots as durable and indexed as the live tables, several rebuilds in parallel."""

from __future__ import annotations

import asyncio
import json


from events.log import HEADER_RECEIVED_AT, LOG_STREAM, log_subject
from services import replay
from tests.integration.test_replay import cli, cli_ok, live_history, sql, wait_applied
from tests.support import event, settle
from services.nats_io import connect_client


def publish_to_log(stack, ws: str, copies: list[tuple[dict, str]]) -> int:
    """Write events straight into the log (as if an index write had been lost between two
    copies), each with its own Touchline-Received-At; returns the last sequence."""

    async def run() -> int:
        nc = await connect_client(stack.servers.nats_url)
        try:
            js = nc.jetstream()
            seq = 0
            for body, received_at in copies:
                ack = await js.publish(log_subject(ws), json.dumps(body).encode(), stream=LOG_STREAM,
                                       headers={HEADER_RECEIVED_AT: received_at})
                seq = ack.seq
            return seq
        finally:
            await nc.close()

    return asyncio.run(run())


def test_rebuild_of_a_correct_workspace_rewrites_no_row_and_removes_what_the_log_does_not_give(stack):
    ws, auth, _, _ = live_history(stack, seed=21, size=300)
    versions = "SELECT contact, xmin::text AS xmin, ctid::text AS ctid FROM contacts WHERE workspace = $1 ORDER BY 1"
    before = [tuple(row) for row in sql(stack, versions, ws)]
    assert before
    rebuilt = cli(stack, "replay", "--workspace", ws)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    # Every live row was already right: none was deleted and inserted again.
    assert [tuple(row) for row in sql(stack, versions, ws)] == before

    sql(stack, "INSERT INTO touch_channels (workspace, channel, marketing, sales) VALUES ($1, 'stray', 5, 0)", ws)
    sql(stack, "UPDATE contacts SET stage = 'customer' WHERE workspace = $1 AND contact = $2", ws, before[0][0])
    assert cli(stack, "replay", "--workspace", ws, "--verify").returncode == 1
    cli_ok(stack, "replay", "--workspace", ws)
    assert not sql(stack, "SELECT 1 FROM touch_channels WHERE workspace = $1 AND channel = 'stray'", ws)
    cli_ok(stack, "replay", "--workspace", ws, "--verify")
    after = {row["contact"]: row["xmin"] for row in sql(stack, versions, ws)}
    assert after[before[0][0]] != before[0][1]  # the repaired row was rewritten ...
    assert all(after[contact] == xmin for contact, xmin, _ in before[1:])  # ... and only it


def test_a_second_copy_in_the_log_counts_once_and_stays_out_of_a_snapshot_by_time(stack):
    """The first copy in log order is the one event_index names, even when a later copy carries an
    earlier received-at (clocks of two API processes): replay drops the later copy, as the live
    projector did, and a snapshot --until between the two receptions has neither."""
    ws, auth = stack.new_workspace()
    once = event("marketing.engaged", "ann", channel="email", action="view")
    twice = event("marketing.engaged", "ann", "2026-11-02T10:00:00Z", channel="sms", action="click", id="twice")
    last = publish_to_log(stack, ws, [(once, "2026-11-20T01:00:00+00:00"), (twice, "2026-11-20T12:00:00+00:00"),
                                      (twice, "2026-11-20T06:00:00+00:00")])
    wait_applied(stack, ws, auth, last)
    settle(stack, ws, auth)
    live = stack.get(f"/v1/workspaces/{ws}/contacts/ann", auth).json()
    assert live["touches"]["by_channel"] == {"email": 1, "sms": 1}
    cli_ok(stack, "replay", "--workspace", ws, "--verify")
    cli_ok(stack, "replay", "--workspace", ws)
    assert stack.get(f"/v1/workspaces/{ws}/contacts/ann", auth).json()["touches"] == live["touches"]
    snap = cli(stack, "replay", "--workspace", ws, "--until", "2026-11-20T09:00:00Z", "--name", "between")
    assert snap.returncode == 0, snap.stdout + snap.stderr
    then = stack.get(f"/v1/workspaces/{ws}/contacts/ann", auth, snapshot="between").json()
    assert then["touches"]["by_channel"] == {"email": 1}


def test_a_snapshot_is_durable_and_indexed_like_the_live_tables(stack):
    ws, auth, _, last = live_history(stack, seed=22, size=120)
    snap = cli(stack, "replay", "--workspace", ws, "--until-seq", str(last), "--name", "full")
    assert snap.returncode == 0, snap.stdout + snap.stderr
    schema = replay.snapshot_schema(ws, "full")
    tables = sql(stack, "SELECT relname, relpersistence::text AS relpersistence FROM pg_class WHERE relnamespace = $1::regnamespace"
                        " AND relkind = 'r'", schema)
    assert {row["relname"] for row in tables} == set(replay.read_model_tables())
    assert all(row["relpersistence"] == "p" for row in tables)  # not UNLOGGED: survives a crash
    indexes = "SELECT c.relname, count(*) AS n FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid" \
              " WHERE c.relnamespace = $1::regnamespace GROUP BY 1"
    assert {r["relname"]: r["n"] for r in sql(stack, indexes, schema)} == {
        r["relname"]: r["n"] for r in sql(stack, indexes, "public") if r["relname"] in replay.read_model_tables()
    }


def test_rebuild_many_rebuilds_each_workspace_in_worker_processes(stack):
    first, auth_a, _, _ = live_history(stack, seed=23, size=200)
    second, auth_b, _, _ = live_history(stack, seed=24, size=150)
    expected = sum(
        row["n"] for row in sql(stack, "SELECT count(*) AS n FROM contact_events WHERE workspace = ANY($1)",
                                [first, second])
    )
    seen: list[int] = []
    stats = replay.rebuild_many(stack.servers.nats_url, stack.servers.database_url, [first, second], processes=2,
                                progress=lambda done, _total: seen.append(done))
    assert stats.read >= stats.applied >= expected > 0
    assert seen and seen[-1] == stats.read
    for ws in (first, second):
        cli_ok(stack, "replay", "--workspace", ws, "--verify")
    assert not sql(stack, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'touchline\\_%'")
