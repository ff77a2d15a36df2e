"""The NATS way in (CONTRACT.md section 3): producers publish structured CloudEvents to
``touchline.in.{ws}`` with JetStream; this subscriber judges each one and moves it into the log
or the rejected list, through the same ingestor as HTTP.

The inbox stream is a work queue: a message leaves it only when acked, and it is acked only
after its event is durably in the log (or its rejection is stored). A crash before the ack
redelivers it; the ingestor's permanent dedupe index makes that harmless.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import structlog
from faststream import AckPolicy, Context
from faststream.nats import ConsumerConfig, JStream, NatsBroker, PullSub
from faststream.nats.message import NatsBatchMessage

from events.log import INBOX_STREAM, workspace_of_subject
from events.validation import is_workspace_id
from services.ingest import Ingestor, LogUnavailable, judge

log = structlog.get_logger()

INBOX_CONSUMER = "touchline-inbox"
# Retry a batch that could not be logged after this long; the log is most likely down.
RETRY_DELAY_SECONDS = 1.0
# nats-py's fetch now and then leaves a delivered message unseen by the client (a pull request
# that outlives the client's wait; nats.py #933, #986): it comes back only after ack_wait. A short
# ack_wait bounds that delay; a batch that takes longer tells the server it is still at work.
ACK_WAIT_SECONDS = 5.0
IN_PROGRESS_EVERY_SECONDS = 2.0


def _keep_raw(message: NatsBatchMessage) -> list[bytes]:
    """Bodies are judged by the ingestor, not decoded by FastStream: invalid JSON must reach it."""
    return [msg.data for msg in message.raw_message]


def register_inbox(broker: NatsBroker, ingestor: Ingestor, known_workspace) -> None:
    """Attach the inbox subscriber to ``broker``; ``known_workspace(ws)`` says if a workspace exists."""

    @broker.subscriber(
        "touchline.in.*",
        stream=JStream(name=INBOX_STREAM, declare=False),
        durable=INBOX_CONSUMER,
        pull_sub=PullSub(batch_size=1000, timeout=0.05, batch=True),
        config=ConsumerConfig(ack_wait=ACK_WAIT_SECONDS),
        ack_policy=AckPolicy.MANUAL,
        decoder=_keep_raw,
        title="touchline.in.{ws}",
        description="Producers publish one structured CloudEvent per message, with JetStream acks.",
    )
    async def on_inbox(bodies: list[bytes], message: NatsBatchMessage = Context("message")) -> None:
        by_workspace: dict[str, list[bytes]] = defaultdict(list)
        for msg in message.raw_message:
            by_workspace[workspace_of_subject(msg.subject)].append(msg.data)
        working = asyncio.create_task(_still_working(message))
        try:
            for workspace, raws in by_workspace.items():
                if is_workspace_id(workspace) and await known_workspace(workspace):
                    await ingestor.ingest(workspace, [judge(raw) for raw in raws], via="nats")
                else:
                    reason = f"workspace: unknown workspace {workspace!r}"
                    await ingestor.record_rejected(workspace[:64], [(raw, reason) for raw in raws], via="nats")
        except LogUnavailable as err:
            log.warning("inbox.retry", error=str(err), messages=len(message.raw_message))
            await message.nack(delay=RETRY_DELAY_SECONDS)
            return
        finally:
            working.cancel()
        await message.ack()


async def _still_working(message: NatsBatchMessage) -> None:
    while True:
        await asyncio.sleep(IN_PROGRESS_EVERY_SECONDS)
        await message.in_progress()
