"""The inbox reader (services/inbox.py) on a stream of its own: exactly once with two readers,
after a failed commit, and when it meets the WorkQueue inbox of an older version."""

from __future__ import annotations

import asyncio
import json
import uuid

import nats
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from events.log import LOG_STREAM, log_subject
from services.inbox import INBOX_CONSUMER, InboxReader
from services.ingest import Ingestor
from services.store.db import create_pool
from tests.support import event
from services.nats_io import connect_client


def scratch_inbox(retention: RetentionPolicy = RetentionPolicy.LIMITS) -> StreamConfig:
    tag = uuid.uuid4().hex[:8]
    return StreamConfig(name=f"TEST_INBOX_{tag}", subjects=[f"test{tag}.in.*"], retention=retention,
                        storage=StorageType.FILE, allow_atomic=True)


def bodies(workspace: str, count: int) -> tuple[list[bytes], int, int]:
    """``count`` events with every 10th resent and every 7th invalid: (bodies, distinct valid, invalid)."""
    out, valid, invalid = [], set(), 0
    for n in range(count):
        if n % 7 == 3:
            out.append(json.dumps(event("sales.deal.won", f"c{n}", deal_id="d", amount="lots", currency="EUR")).encode())
            invalid += 1
            continue
        body = event("marketing.engaged", f"c{n % 50}", channel="instagram", action="like")
        body["id"] = f"{workspace}-{n - n % 10 if n % 10 == 5 else n}"
        valid.add(body["id"])
        out.append(json.dumps(body).encode())
    return out, len(valid), invalid


async def logged_ids(js, workspace: str) -> list[str]:
    """The ids of the workspace's logged events from the tests' source, copies included."""
    info = await js.stream_info(LOG_STREAM, subjects_filter=log_subject(workspace))
    total = (info.state.subjects or {}).get(log_subject(workspace), 0)
    sub = await js.subscribe(log_subject(workspace), ordered_consumer=True, stream=LOG_STREAM)
    ids = []
    for _ in range(total):
        body = json.loads((await sub.next_msg(timeout=10)).data)
        if body["source"] == "/test":
            ids.append(body["id"])
    await sub.unsubscribe()
    return ids


async def retention(js, stream: str) -> RetentionPolicy | None:
    try:
        return (await js.stream_info(stream)).config.retention
    except nats.js.errors.NotFoundError:  # between the old inbox's deletion and the new one
        return None


async def run_readers(servers, config: StreamConfig, workspace: str, payloads: list[bytes], readers: int,
                      *, fail_first_commit: bool = False, create: bool = True) -> dict:
    name = f"test-{config.name}"
    opened, tasks = [], []
    admin = await connect_client(servers.nats_url)
    js = admin.jetstream()
    pool = await create_pool(servers.database_url, max_size=4)
    try:
        if create:
            await js.add_stream(config)
        subject = config.subjects[0].replace("*", workspace)
        for body in payloads:
            await js.publish(subject, body, stream=config.name)
        last = (await js.stream_info(config.name)).state.last_seq
        for _ in range(readers):
            nc = await connect_client(servers.nats_url)
            reader_pool = await create_pool(servers.database_url, max_size=4)
            opened.append((nc, reader_pool))

            async def known(ws: str) -> bool:
                return ws == workspace

            reader = InboxReader(Ingestor(nc, reader_pool), known, name=name, batch_max=400, config=config)
            if fail_first_commit:
                advance, failed = reader.committed.advance, []

                async def fail_once(conn, *args, advance=advance, failed=failed):
                    if not failed:
                        failed.append(True)
                        raise ConnectionResetError("PostgreSQL went away before the commit")
                    await advance(conn, *args)

                reader.committed.advance = fail_once
            tasks.append((reader, asyncio.create_task(reader.run())))
        async with asyncio.timeout(90):
            while await retention(js, config.name) != RetentionPolicy.LIMITS:
                await asyncio.sleep(0.05)
            last = min(last, (await js.stream_info(config.name)).state.last_seq)  # 0 once recreated
            while (await pool.fetchval("SELECT position FROM inbox_positions WHERE name = $1", name) or 0) < last:
                await asyncio.sleep(0.05)
            while (await js.stream_info(config.name)).state.messages:  # purged once idle
                await asyncio.sleep(0.1)
        info = await js.stream_info(config.name)
        logged = await logged_ids(js, workspace)
        return {
            "logged": logged,
            "rejected": await pool.fetchval("SELECT count(*) FROM rejected WHERE workspace = $1", workspace),
            "indexed": await pool.fetchval(
                "SELECT count(*) FROM event_index WHERE key IN"
                " (SELECT event_key($1, '/test', id) FROM unnest($2::text[]) AS id)", workspace, list(set(logged))),
            "retention": info.config.retention,
            "subjects": info.config.subjects,
            "js": js,
        }
    finally:
        for reader, task in tasks:
            reader.stop()
            task.cancel()
        await asyncio.gather(*(task for _, task in tasks), return_exceptions=True)
        for nc, reader_pool in opened:
            await nc.close()
            await reader_pool.close()
        await pool.close()
        await admin.close()


def test_two_readers_move_each_inbox_message_once(stack):
    ws, _ = stack.new_workspace()
    payloads, valid, invalid = bodies(ws, 3000)
    found = asyncio.run(run_readers(stack.servers, scratch_inbox(), ws, payloads, readers=2))
    # Each event once in the log and the index; each refusal kept once (a second reader that handled
    # a batch again would keep its refusals twice: they are not deduplicated).
    assert len(found["logged"]) == len(set(found["logged"])) == found["indexed"] == valid
    assert found["rejected"] == invalid


def test_a_batch_whose_commit_failed_is_handled_again_without_doubles(stack):
    ws, _ = stack.new_workspace()
    payloads, valid, invalid = bodies(ws, 900)
    found = asyncio.run(run_readers(stack.servers, scratch_inbox(), ws, payloads, readers=1, fail_first_commit=True))
    assert len(found["logged"]) == len(set(found["logged"])) == found["indexed"] == valid
    assert found["rejected"] == invalid


def test_a_work_queue_inbox_of_an_older_version_is_drained_then_recreated_as_limits(stack):
    ws, _ = stack.new_workspace()
    config = scratch_inbox()
    payloads, valid, invalid = bodies(ws, 1200)

    async def old_inbox() -> None:
        nc = await connect_client(stack.servers.nats_url)
        js = nc.jetstream()
        old = StreamConfig(name=config.name, subjects=config.subjects, retention=RetentionPolicy.WORK_QUEUE,
                           storage=StorageType.FILE)
        await js.add_stream(old)
        await js.add_consumer(config.name, ConsumerConfig(durable_name=INBOX_CONSUMER, filter_subject=config.subjects[0],
                                                          ack_policy=AckPolicy.EXPLICIT))
        await nc.close()

    asyncio.run(old_inbox())
    # The old inbox holds the first 1000 messages when the reader starts (published by run_readers).
    found = asyncio.run(run_readers(stack.servers, config, ws, payloads[:1000], readers=1, create=False))
    assert found["retention"] == RetentionPolicy.LIMITS and found["subjects"] == config.subjects
    # ...and the recreated one takes the rest.
    found = asyncio.run(run_readers(stack.servers, config, ws, payloads[1000:], readers=1))
    assert len(found["logged"]) == len(set(found["logged"])) == found["indexed"] == valid
    assert found["rejected"] == invalid
