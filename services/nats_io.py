"""NATS wiring: connect, declare the streams, read the log in order."""

from __future__ import annotations

import nats
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from events.commands import (
    COMMANDS_STREAM,
    COMMANDS_SUBJECTS,
    DEADLETTER_STREAM,
    DEADLETTER_SUBJECTS,
    TIMERS_STREAM,
    TIMERS_SUBJECTS,
)
from events.log import INBOX_STREAM, INBOX_SUBJECTS, LOG_STREAM, LOG_SUBJECTS
from services.stream_reader import OrderedConsumer, TapClient

log = structlog.get_logger()

LOG_STREAM_CONFIG = StreamConfig(
    name=LOG_STREAM,
    description="Touchline: every accepted event, immutable",
    subjects=[LOG_SUBJECTS],
    retention=RetentionPolicy.LIMITS,
    storage=StorageType.FILE,
    duplicate_window=120.0,
    deny_delete=True,
    deny_purge=True,
    allow_atomic=True,
)

# A Limits stream, not a work queue: on a work queue with fsync every ack is a synced removal,
# which held the drain near 1,000 messages/s. The inbox reader (services/inbox.py) reads it with an
# ordered consumer from its position committed in PostgreSQL and purges what it has committed.
INBOX_STREAM_CONFIG = StreamConfig(
    name=INBOX_STREAM,
    description="Touchline: CloudEvents published by producers, waiting to be judged",
    subjects=[INBOX_SUBJECTS],
    retention=RetentionPolicy.LIMITS,
    storage=StorageType.FILE,
    duplicate_window=120.0,
    # Producers may publish many events as one atomic batch (one fsync): far faster than one by one.
    allow_atomic=True,
)

COMMANDS_STREAM_CONFIG = StreamConfig(
    name=COMMANDS_STREAM,
    description="Touchline: follow-up and alert commands from the rules worker, for the dispatcher",
    subjects=[COMMANDS_SUBJECTS],
    retention=RetentionPolicy.WORK_QUEUE,
    storage=StorageType.FILE,
    duplicate_window=120.0,
)

DEADLETTER_STREAM_CONFIG = StreamConfig(
    name=DEADLETTER_STREAM,
    description="Touchline: commands that kept failing, with their error; re-drive with `touchline deadletter`",
    subjects=[DEADLETTER_SUBJECTS],
    retention=RetentionPolicy.LIMITS,
    storage=StorageType.FILE,
)

TIMERS_STREAM_CONFIG = StreamConfig(
    name=TIMERS_STREAM,
    description="Touchline: stalled-offer timers (message schedules, ADR-51) and their firings",
    subjects=[TIMERS_SUBJECTS],
    retention=RetentionPolicy.WORK_QUEUE,
    storage=StorageType.FILE,
    duplicate_window=120.0,
    allow_msg_schedules=True,
)

DEFAULT_STREAMS = (
    LOG_STREAM_CONFIG,
    INBOX_STREAM_CONFIG,
    COMMANDS_STREAM_CONFIG,
    DEADLETTER_STREAM_CONFIG,
    TIMERS_STREAM_CONFIG,
)


def nats_servers(url: str | list[str]) -> list[str]:
    """TOUCHLINE_NATS_URL may name several seed servers of a cluster, comma-separated."""
    if isinstance(url, list):
        return url
    return [server.strip() for server in url.split(",") if server.strip()]


async def connect(url: str, name: str) -> Client:
    """Connect and keep reconnecting for ever: an outage must not end a service."""

    async def on_error(err: Exception) -> None:
        log.warning("nats.error", error=str(err))

    nc: TapClient | None = None

    async def on_disconnect() -> None:
        # nats-py calls this when the service closes its own connection too (every start of `up`
        # and every stop): only a connection lost is worth a warning.
        if nc is None or not nc.is_closed:
            log.warning("nats.disconnected")

    async def on_reconnect() -> None:
        log.info("nats.reconnected")

    nc = await connect_client(
        url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        pending_size=64 * 1024 * 1024,
    )
    return nc


async def connect_client(url: str | list[str], **options) -> TapClient:
    """``nats.connect`` with a client whose parser can feed an ``OrderedConsumer``."""
    nc = TapClient()
    await nc.connect(nats_servers(url), **options)
    return nc


# "stream configuration update can not change retention policy to/from workqueue"
RETENTION_CHANGE_REFUSED = 10052


async def ensure_streams(js: JetStreamContext, *configs: StreamConfig) -> None:
    for config in configs or DEFAULT_STREAMS:
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            try:
                await js.update_stream(config)
            except nats.js.errors.APIError as err:
                if config.name != INBOX_STREAM or err.err_code != RETENTION_CHANGE_REFUSED:
                    raise
                # An inbox from before it became a Limits stream: the inbox reader drains it and
                # recreates it under its position lock (services/inbox.py, retire_work_queue_inbox).
                log.warning("inbox.work_queue_left_for_the_reader", stream=config.name)


async def last_log_seq(js: JetStreamContext) -> int:
    info = await js.stream_info(LOG_STREAM)
    return info.state.last_seq


async def read_log(js: JetStreamContext, start_seq: int, subject: str = LOG_SUBJECTS,
                   stream: str = LOG_STREAM) -> OrderedConsumer:
    """An ordered consumer over ``stream`` from ``start_seq``: strictly in order, no acks, no redelivery."""
    return await OrderedConsumer(js, stream, subject, start_seq).start()
