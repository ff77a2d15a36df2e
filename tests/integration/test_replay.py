"""Replay, snapshots, verify, the audit trail and status, against real servers and the real CLI."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
import sys
import threading
import time

import asyncpg

from events.log import HEADER_CATALOG_VERSION, HEADER_RECEIVED_AT, LOG_STREAM, log_subject
from projections import contacts as contact_model
from tests.histories import first_copies, history
from tests.support import ADMIN_TOKEN, event, settle, touchline_cli, without_followups
from services.nats_io import connect_client

READ_ENDPOINTS = ("contacts", "funnel", "touches", "goals", "attribution")


def cli(stack, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return touchline_cli(*args, env=stack.env, timeout=timeout)


def cli_ok(stack, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``cli`` that must succeed; what it said is the failure's message."""
    done = cli(stack, *args, timeout=timeout)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def wait_applied(stack, ws: str, auth: dict, seq: int) -> None:
    answer = stack.get(f"/v1/workspaces/{ws}/rejected", auth, min_seq=seq, wait_ms=60000)
    assert answer.status_code == 200, answer.text


def read_everything(stack, ws: str, auth: dict, **params) -> dict:
    """Every read model of a workspace as the API answers it."""
    answers = {}
    for name in READ_ENDPOINTS:
        extra = {"as_of": "2026-11-10T00:00:00Z"} if name == "goals" else {}
        if name == "contacts":
            extra = {"limit": 1000}
        answer = stack.get(f"/v1/workspaces/{ws}/{name}", auth, **extra, **params)
        assert answer.status_code == 200, (name, answer.text)
        answers[name] = answer.json()
    return answers


def differences(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def assert_same(a, b) -> None:
    found = differences(a, b)
    assert not found, found[:10]


def sql(stack, query: str, *args):
    async def run():
        conn = await asyncpg.connect(stack.servers.database_url)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def stream_states(stack) -> dict[str, int]:
    async def run():
        nc = await connect_client(stack.servers.nats_url)
        try:
            js = nc.jetstream()
            return {info.config.name: info.state.last_seq for info in await js.streams_info()}
        finally:
            await nc.close()

    return asyncio.run(run())


def settled_streams(stack, quiet: float = 1.5, timeout: float = 30) -> dict[str, int]:
    """Stream positions once nothing has moved for ``quiet`` seconds (rules, timers, dispatcher):
    not a workspace's pipeline settled (``settle`` is), but the other workspaces quiet too."""
    deadline = time.monotonic() + timeout
    last, since = stream_states(stack), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = stream_states(stack)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    return last


def row_addresses(stack, ws: str) -> dict[str, list[str]]:
    """Where each of the workspace's read-model rows is stored (a rewritten row moves)."""
    return {
        table: [row["ctid"] for row in sql(stack, f"SELECT ctid::text FROM {table} WHERE workspace = $1 ORDER BY ctid", ws)]
        for table in ("contacts", "contact_events", "touch_events", "deals", "funnel_gaps")
    }


def live_history(stack, seed: int = 7, size: int = 400):
    ws, auth = stack.new_workspace()
    events = history(seed, size)
    rng = random.Random(seed)
    sent = events + [dict(rng.choice(events)) for _ in range(40)]  # duplicates too
    last = 0
    for start in range(0, len(sent), 100):
        last = max(last, stack.ingest(ws, auth, sent[start:start + 100]))
    settle(stack, ws, auth)
    return ws, auth, events, last


def test_rebuild_of_a_live_built_workspace_verifies_clean_and_keeps_every_answer(stack):
    ws, auth, _, _ = live_history(stack)
    before = read_everything(stack, ws, auth)
    verified = cli(stack, "replay", "--workspace", ws, "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "verified" in verified.stdout
    rows_before = row_addresses(stack, ws)
    rebuilt = cli(stack, "replay", "--workspace", ws)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "rebuilt workspace" in rebuilt.stdout and "events/s" in rebuilt.stdout
    assert "the read models matched the log" in rebuilt.stdout, rebuilt.stdout
    assert_same(read_everything(stack, ws, auth), before)
    # Rebuilt right, nothing was rewritten: every row is where it was.
    assert row_addresses(stack, ws) == rows_before
    cli_ok(stack, "replay", "--workspace", ws, "--verify")
    # No scratch schema is left behind.
    assert not sql(stack, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'touchline\\_%'")


def test_verify_compares_an_event_holding_a_number_past_postgresqls_range(stack):
    """1e-20000 in a field the catalog does not know is kept as written; --verify read the audit
    trail's envelopes as jsonb, whose numerics end at 16,383 decimal places, and stopped with
    "value overflows numeric format" (an outside audit)."""
    ws, auth = stack.new_workspace()
    stack.ingest(ws, auth, [event("marketing.engaged", "rita", channel="web", action="click", amount=12.5)])
    body = json.dumps(event("sales.lead.qualified", "quinn", note="NOTE")).replace('"NOTE"', "1e-20000")
    answer = stack.http.post(f"/v1/workspaces/{ws}/events", content=body,
                             headers={**auth, "Content-Type": "application/cloudevents+json"})
    assert answer.json()["results"][0]["status"] == "accepted", answer.text
    trail = stack.get(f"/v1/workspaces/{ws}/contacts/quinn/events", auth, min_seq=answer.json()["last_seq"])
    assert b'"note":1e-20000' in trail.content.replace(b" ", b"")
    # Envelopes stored before migration 011 hold jsonb's text of the event (its keys reordered, other
    # spaces): the same event, another text than a rebuild writes, and no difference.
    sql(stack, "UPDATE contact_events SET envelope = envelope::jsonb::json WHERE workspace = $1 AND contact = 'rita'", ws)
    verified = cli(stack, "replay", "--workspace", ws, "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "verified" in verified.stdout


# A replay that builds a scratch schema and is then killed with SIGKILL before it can drop it.
_BUILD_AND_HANG = """
import asyncio, sys
from services import replay
from services.nats_io import connect_client
from services.runtime import loop
from services.store.db import create_pool

async def main(nats_url, database_url, workspace, schema):
    nc = await connect_client(nats_url)
    pool = await create_pool(database_url, max_size=1)
    async with pool.acquire() as conn:
        await replay.Build(conn, nc.jetstream(), workspace, schema).create()
        print("built", flush=True)
        await asyncio.sleep(3600)

loop.run(main(*sys.argv[1:]))
"""


def test_a_killed_replays_scratch_schema_is_dropped_by_the_next_replay_and_a_running_ones_is_not(stack):
    ws, _, _, _ = live_history(stack, seed=11, size=60)
    killed = subprocess.Popen(
        [sys.executable, "-c", _BUILD_AND_HANG, stack.servers.nats_url, stack.servers.database_url, ws,
         "touchline_rebuild_killed00001"],
        env=stack.env, stdout=subprocess.PIPE, text=True,
    )
    running = subprocess.Popen(
        [sys.executable, "-c", _BUILD_AND_HANG, stack.servers.nats_url, stack.servers.database_url, ws,
         "touchline_verify_running0001"],
        env=stack.env, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert killed.stdout.readline().strip() == "built"
        assert running.stdout.readline().strip() == "built"
        killed.kill()  # SIGKILL: nothing of it runs again
        killed.wait(timeout=30)
        scratch = "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'touchline\\_%' ORDER BY 1"
        assert [row[0] for row in sql(stack, scratch)] == ["touchline_rebuild_killed00001", "touchline_verify_running0001"]

        rebuilt = cli(stack, "replay", "--workspace", ws)
        assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
        assert [row[0] for row in sql(stack, scratch)] == ["touchline_verify_running0001"]
    finally:
        for process in (killed, running):
            process.kill()
            process.wait(timeout=30)
    cli_ok(stack, "replay", "--workspace", ws, "--verify")
    assert not sql(stack, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'touchline\\_%'")


def test_verify_reports_a_corrupted_row_in_plain_words_and_rebuild_repairs_it(stack):
    ws, auth = stack.new_workspace()
    last = stack.ingest(ws, auth, [
        event("marketing.engaged", "dana", channel="email", action="view"),
        event("marketing.lead.captured", "dana", channel="email"),
        event("marketing.engaged", "eli", channel="email", action="click"),
    ])
    wait_applied(stack, ws, auth, last)
    settle(stack, ws, auth)
    sql(stack, "UPDATE contacts SET stage = 'customer' WHERE workspace = $1 AND contact = 'dana'", ws)
    sql(stack, "DELETE FROM contacts WHERE workspace = $1 AND contact = 'eli'", ws)
    verified = cli(stack, "replay", "--workspace", ws, "--verify")
    assert verified.returncode == 1, verified.stdout + verified.stderr
    out = verified.stdout
    assert 'contacts: contact dana: stage: live "customer", rebuilt "lead"' in out, out
    assert "contacts: contact eli: rebuilt from the log but missing from the live read model" in out, out
    repaired = cli(stack, "replay", "--workspace", ws)
    assert repaired.returncode == 0, repaired.stderr
    # dana's row changed, eli's missing: said, as an auditor needs it (an outside audit: not said).
    assert "2 read-model row(s) differed from the log and were set right" in repaired.stdout, repaired.stdout
    cli_ok(stack, "replay", "--workspace", ws, "--verify")
    dana = stack.get(f"/v1/workspaces/{ws}/contacts/dana", auth).json()
    assert dana["stage"] == "lead"


def test_until_seq_and_until_time_match_the_state_at_that_prefix(stack):
    ws, auth = stack.new_workspace()
    events = history(11, 300)
    first, second = events[:150], events[150:]
    first_logged = stack.ingest(ws, auth, first)
    settle(stack, ws, auth)
    middle = stream_states(stack)[LOG_STREAM]
    then = read_everything(stack, ws, auth)
    time.sleep(0.05)
    stack.ingest(ws, auth, second + first[:20])
    settle(stack, ws, auth)
    assert read_everything(stack, ws, auth) != then

    snap = cli(stack, "replay", "--workspace", ws, "--until-seq", str(middle), "--name", "half")
    assert snap.returncode == 0, snap.stdout + snap.stderr
    assert read_everything(stack, ws, auth, snapshot="half") == then
    # The oracle: the contact fold of the log's prefix, first copies only.
    oracle = contact_model.views(first_copies(first))
    for contact, view in oracle.items():
        answer = stack.get(f"/v1/workspaces/{ws}/contacts/{contact}", auth, snapshot="half")
        expected = json.loads(json.dumps(view, default=_json_default))
        assert without_followups(answer.json()) == without_followups(expected), contact

    # --until TIME: everything received by the time the first half was received.
    trail = stack.get(f"/v1/workspaces/{ws}/contacts/{first[0]['subject']}/events", auth).json()["events"]
    received = max(e["received_at"] for e in trail if e["seq"] <= middle)
    by_time = cli(stack, "replay", "--workspace", ws, "--until", received)
    assert by_time.returncode == 0, by_time.stdout + by_time.stderr
    name = by_time.stdout.split("snapshot ")[1].split(" ")[0]
    assert read_everything(stack, ws, auth, snapshot=name) == then
    # It stands where the first event it left out (received later: the second half, or a follow-up
    # the dispatcher logged after T) begins, not at the end of what it read: an outside audit got
    # 200s for a min_seq of an event the snapshot did not hold.
    assert stack.get(f"/v1/workspaces/{ws}/funnel", auth, snapshot=name, min_seq=first_logged).status_code == 200
    assert stack.get(f"/v1/workspaces/{ws}/funnel", auth, snapshot=name, min_seq=middle + 1).status_code == 400

    assert stack.get(f"/v1/workspaces/{ws}/funnel", auth, snapshot="nope").status_code == 404
    # A snapshot never moves: min_seq within it is answered at once, past it refused (it waited
    # for the live projector, then answered a 503 "stale" that no retry could ever change).
    assert stack.get(f"/v1/workspaces/{ws}/funnel", auth, snapshot="half", min_seq=middle).status_code == 200
    beyond = stack.get(f"/v1/workspaces/{ws}/funnel", auth, snapshot="half", min_seq=middle + 1, wait_ms=0)
    assert beyond.status_code == 400 and beyond.json()["error"].startswith(
        f"min_seq: snapshot 'half' stands at log seq {middle}"), beyond.text
    future = cli(stack, "replay", "--workspace", ws, "--until-seq", str(stream_states(stack)[LOG_STREAM] + 1000))
    assert future.returncode == 2 and "the log ends at seq" in future.stderr, future.stderr
    lower = stack.get(f"/v1/workspaces/{ws}/funnel", auth, **{"from": "2020-01-01t00:00:00z"})
    assert lower.status_code == 200, lower.text
    other, other_auth = stack.new_workspace()
    assert stack.get(f"/v1/workspaces/{other}/funnel", other_auth, snapshot="half").status_code == 404
    listed = cli(stack, "snapshot", "list", "--workspace", ws)
    assert "half" in listed.stdout
    cli_ok(stack, "snapshot", "drop", "half", "--workspace", ws)
    assert stack.get(f"/v1/workspaces/{ws}/funnel", auth, snapshot="half").status_code == 404


def _json_default(value):
    import datetime as dt

    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    if hasattr(value, "__struct_fields__"):
        return {name: getattr(value, name) for name in value.__struct_fields__}
    raise TypeError(type(value))


def test_rebuild_during_live_ingest_loses_and_double_counts_nothing(stack):
    ws, auth = stack.new_workspace()
    events = [
        event("marketing.engaged", f"c{n % 500}", f"2026-11-{1 + n % 20:02d}T10:00:00Z",
              channel=("email", "phone")[n % 2], action="view", id=f"x{n}")
        for n in range(30000)
    ]
    base = stack.ingest(ws, auth, events[:20000])
    wait_applied(stack, ws, auth, base)
    done: dict[str, int] = {}

    def keep_ingesting() -> None:
        # New events and, now and then, duplicates of old ones, while the rebuild runs.
        last = 0
        for start in range(20000, 30000, 500):
            batch = events[start:start + 500] + events[start - 20000:start - 19990]
            last = max(last, stack.ingest(ws, auth, batch))
        done["last"] = last

    writer = threading.Thread(target=keep_ingesting)
    writer.start()
    rebuilt = cli(stack, "replay", "--workspace", ws)
    writer.join()
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    wait_applied(stack, ws, auth, done["last"])
    page = stack.get(f"/v1/workspaces/{ws}/contacts", auth, limit=1000).json()["contacts"]
    assert len(page) == 500
    assert sum(c["touches"]["total"] for c in page) == 30000
    assert all(c["touches"]["total"] == 60 for c in page)
    cli_ok(stack, "replay", "--workspace", ws, "--verify")


def test_replay_emits_no_commands_and_writes_nothing_to_any_stream(stack):
    ws, auth = stack.new_workspace()
    last = stack.ingest(ws, auth, [
        event("marketing.engaged", "zoe", channel="instagram", action="like"),
        event("marketing.lead.captured", "zoe", channel="instagram"),
        event("sales.deal.won", "zoe", deal_id="d1", amount="90", currency="EUR"),
    ])
    settle(stack, ws, auth)
    before = settled_streams(stack)
    for args in ((), ("--verify",), ("--until-seq", str(last))):
        cli_ok(stack, "replay", "--workspace", ws, *args)
    assert stream_states(stack) == before


def test_audit_trail_lists_accepted_events_in_log_order_without_duplicates_or_rejects(stack):
    ws, auth = stack.new_workspace()
    won = event("sales.deal.won", "ivy", "2026-11-03T10:00:00Z", deal_id="d1", amount="120.50", currency="EUR")
    answer = stack.send(ws, auth, [
        event("marketing.engaged", "ivy", "2026-11-05T10:00:00Z", channel="email", action="open", note="kept"),
        won,
        dict(won),
        event("sales.deal.won", "ivy", deal_id="d2", amount="ten", currency="EUR"),
        event("marketing.engaged", "max", channel="email", action="open"),
    ]).json()
    wait_applied(stack, ws, auth, answer["last_seq"])
    settle(stack, ws, auth)  # the follow-ups the dispatcher records are part of the trail too
    trail = stack.get(f"/v1/workspaces/{ws}/contacts/ivy/events", auth)
    assert trail.status_code == 200, trail.text
    everything = trail.json()["events"]
    events = [e for e in everything if e["type"] != "touchline.followup.requested"]
    assert [e["type"] for e in events] == ["touchline.marketing.engaged", "touchline.sales.deal.won"]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert events[0]["data"] == {"channel": "email", "action": "open", "note": "kept"}
    assert events[1]["data"]["amount"] == "120.50" and events[1]["id"] == won["id"]
    assert all(e["received_at"].endswith("Z") for e in events)
    assert stack.get(f"/v1/workspaces/{ws}/contacts/nobody/events", auth).status_code == 404
    other, other_auth = stack.new_workspace()
    assert stack.get(f"/v1/workspaces/{ws}/contacts/ivy/events", other_auth).status_code == 403

    lines = cli(stack, "audit", "--workspace", ws, "ivy", "--json")
    assert lines.returncode == 0, lines.stderr
    assert [json.loads(line) for line in lines.stdout.splitlines()] == everything
    table = cli(stack, "audit", "--workspace", ws, "ivy")
    assert table.returncode == 0 and "sales.deal.won" in table.stdout and "120.50" in table.stdout


def test_status_reports_position_lag_and_rate(stack):
    ws, auth = stack.new_workspace()
    last = stack.ingest(ws, auth, [event("marketing.engaged", "st", channel="email", action="view")])
    wait_applied(stack, ws, auth, last)
    answer = stack.http.get("/v1/status", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert answer.status_code == 200
    body = answer.json()
    main = next(p for p in body["projectors"] if p["name"] == "main")
    assert body["log_last_seq"] >= main["applied_seq"] >= last
    assert main["lag"] == body["log_last_seq"] - main["applied_seq"] and main["rate_eps"] >= 0
    # Which process writes: the stack's one projector process, by the name its lock's session has.
    assert main["writer"] == f"touchline projector on {socket.gethostname()} pid {stack.projector.pid}"[:63]
    # The NATS way in: what producers had acked and the inbox reader has not yet judged.
    inbox = body["inbox"]
    assert inbox.keys() == {"last_seq", "judged_seq", "pending", "updated_at"}
    assert inbox["pending"] == inbox["last_seq"] - inbox["judged_seq"] >= 0
    assert stack.http.get("/v1/status", headers=auth).status_code == 403
    printed = cli(stack, "status", "--json")
    assert printed.returncode == 0, printed.stderr
    printed_main = next(p for p in json.loads(printed.stdout)["projectors"] if p["name"] == "main")
    assert printed_main.keys() == main.keys()
    assert printed_main["updated_at"].endswith("Z") and "T" in printed_main["updated_at"]  # as the API writes it
    table = cli(stack, "status")
    assert table.returncode == 0 and "parked" in table.stdout and " UTC" in table.stdout, table.stdout
    assert "NATS inbox: " in table.stdout and "acked and not yet judged" in table.stdout, table.stdout
    assert f"pid {stack.projector.pid}" in table.stdout, table.stdout


def test_a_log_written_by_the_previous_catalog_version_replays_into_todays_read_models(stack):
    """Version 0 events (engaged with `medium`, money in `amount_cents`) go straight into the log,
    as the previous version's ingest wrote them; the live projector and replay read them upcast."""
    ws, auth = stack.new_workspace()
    old = [
        event("marketing.engaged", "olga", "2026-10-01T09:00:00Z", medium="email", action="click", id="v0-1"),
        event("sales.offer.made", "olga", "2026-10-02T09:00:00Z", deal_id="d1", amount_cents=129900, currency="EUR",
              id="v0-2"),
        event("sales.deal.won", "olga", "2026-10-03T09:00:00Z", deal_id="d1", amount_cents=129900, currency="EUR",
              id="v0-3"),
        event("sales.deal.refunded", "olga", "2026-10-04T09:00:00Z", deal_id="d1", amount_cents=50, currency="EUR",
              id="v0-4"),
    ]

    async def write_old_log() -> int:
        nc = await connect_client(stack.servers.nats_url)
        try:
            js = nc.jetstream()
            seq = 0
            for body in old:
                ack = await js.publish(log_subject(ws), json.dumps(body).encode(), stream=LOG_STREAM, headers={
                    HEADER_CATALOG_VERSION: "0", HEADER_RECEIVED_AT: "2026-10-05T00:00:00+00:00",
                })
                seq = ack.seq
            return seq
        finally:
            await nc.close()

    last = asyncio.run(write_old_log())
    wait_applied(stack, ws, auth, last)
    olga = stack.get(f"/v1/workspaces/{ws}/contacts/olga", auth).json()
    assert olga["stage"] == "customer" and olga["status"] == "won"
    assert olga["touches"]["by_channel"] == {"direct": 1, "email": 1}
    assert olga["revenue"] == {"EUR": "1298.50"}
    cli_ok(stack, "replay", "--workspace", ws, "--verify")
    cli_ok(stack, "replay", "--workspace", ws)
    assert without_followups(stack.get(f"/v1/workspaces/{ws}/contacts/olga", auth).json()) == without_followups(olga)
    trail = stack.get(f"/v1/workspaces/{ws}/contacts/olga/events", auth).json()["events"]
    assert trail[0]["data"]["channel"] == "email" and trail[2]["data"]["amount"] == "1299.00"
