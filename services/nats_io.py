"""NATS wiring: connect, declare the streams, read the log in order."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import urllib.parse

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

INBOX_DUPLICATE_WINDOW = 0.1  # seconds: nats-server refuses less than 100 ms
# A Limits stream, not a work queue: on a work queue with fsync every ack is a synced removal,
# which held the drain near 1,000 messages/s. The inbox reader (services/inbox.py) reads it with an
# ordered consumer from its position committed in PostgreSQL and purges what it has committed.
INBOX_STREAM_CONFIG = StreamConfig(
    name=INBOX_STREAM,
    description="Touchline: CloudEvents published by producers, waiting to be judged",
    subjects=[INBOX_SUBJECTS],
    retention=RetentionPolicy.LIMITS,
    storage=StorageType.FILE,
    # JetStream drops a message whose Nats-Msg-Id the stream saw within this window, and the one
    # inbox holds every workspace's producers: with two minutes, a producer of one workspace could
    # publish another's (guessable) ids first and have that workspace's events acked as duplicates
    # and never stored (an outside audit). The server's minimum; Touchline dedupes by (source, id)
    # for ever in PostgreSQL, so a producer's retry stored twice is judged a duplicate anyway.
    duplicate_window=INBOX_DUPLICATE_WINDOW,
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


def nats_connection(url: str | list[str]) -> tuple[list[str], dict[str, str]]:
    """The servers of TOUCHLINE_NATS_URL without credentials, and the credentials as connect
    options (``user`` and ``password``, or ``token``), percent-escapes decoded (a password with ``@``).

    nats-py uses a URL's own credentials for that URL only: a server the cluster announced, which
    a client reconnects to when its own node dies, was tried without any and refused
    ("Authorization Violation"), and FastStream's broker takes that refusal as fatal (an outside
    audit on a 3-node cluster: the dispatcher stopped for good). As options they go to every server.
    The first credentials named are the cluster's."""
    servers: list[str] = []
    credentials: dict[str, str] = {}
    for server in nats_servers(url):
        parts = urllib.parse.urlsplit(server)
        if "://" not in server or "@" not in parts.netloc:
            servers.append(server)
            continue
        userinfo, host = parts.netloc.rsplit("@", 1)
        servers.append(urllib.parse.urlunsplit(parts._replace(netloc=host)))
        if userinfo and not credentials:
            user, has_password, password = userinfo.partition(":")
            credentials = ({"user": urllib.parse.unquote(user), "password": urllib.parse.unquote(password)}
                           if has_password else {"token": urllib.parse.unquote(user)})
    return servers, credentials


class NatsRefused(Exception):
    """NATS refused the credentials, or its certificate is not trusted: no attempt will do better."""

    def __init__(self, err: Exception) -> None:
        super().__init__(str(err))
        self.err = err

    def advice(self) -> str:
        hint = ("set SSL_CERT_FILE to the CA that signed its certificate" if isinstance(self.err, ssl.SSLCertVerificationError)
                else "check the user and password of TOUCHLINE_NATS_URL")
        return f"NATS refused the connection ({str(self.err).removeprefix('nats: ')}); {hint}"


def _is_refusal(err: Exception) -> bool:
    # Not any SSLError: an EOF in the handshake of a server restarting is waited out.
    text = str(err).lower()
    return isinstance(err, ssl.SSLCertVerificationError) or "authorization" in text or "authentication" in text


async def connect_unless_refused(url: str | list[str], **options) -> TapClient:
    """``connect_client``, which waits out a NATS that is not there yet, but not a refusal: that
    raises NatsRefused at once. nats-py tries again for each of its attempts and servers (a
    service's, for ever) and never says why: an outside audit's CLI waited for minutes on a wrong
    password, and a service logged "Authorization Violation" twice a second for good."""
    refused: asyncio.Future = asyncio.get_running_loop().create_future()
    error_cb = options.pop("error_cb", None)

    async def on_error(err: Exception) -> None:
        if _is_refusal(err) and not refused.done():
            refused.set_result(err)
        if error_cb is not None:
            await error_cb(err)

    connecting = asyncio.ensure_future(connect_client(url, error_cb=on_error, **options))
    await asyncio.wait({connecting, refused}, return_when=asyncio.FIRST_COMPLETED)
    if connecting.done():
        refused.cancel()
        return connecting.result()
    connecting.cancel()
    with contextlib.suppress(BaseException):
        await connecting
    raise NatsRefused(refused.result())


async def connect(url: str, name: str) -> Client:
    """Connect and keep reconnecting for ever: an outage must not end a service (a refusal of its
    credentials at the start does: NatsRefused)."""

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

    nc = await connect_unless_refused(
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
    servers, credentials = nats_connection(url)
    await nc.connect(servers, **credentials, **options)
    return nc


# "stream configuration update can not change retention policy to/from workqueue"
RETENTION_CHANGE_REFUSED = 10052


async def ensure_streams(js: JetStreamContext, *configs: StreamConfig, replicas: int | None = None) -> None:
    """Every stream declared as this release wants it. Its replicas are ``replicas`` when given,
    else what an existing stream has: a service's start must not undo an operator's R3 (an update
    without ``num_replicas`` is taken as 1)."""
    for config in configs or DEFAULT_STREAMS:
        if replicas is not None:
            config = dataclasses.replace(config, num_replicas=replicas)
        try:
            await _declare(js, config, replicas)
        except nats.js.errors.APIError as err:
            if replicas is None or err.err_code not in REPLICAS_REFUSED:
                raise
            raise SystemExit(f"touchline: TOUCHLINE_NATS_REPLICAS={replicas}: NATS refused it for stream"
                             f" {config.name}: {err.description}") from None


# "replicas > 1 not supported in non-clustered mode", "insufficient resources" (fewer nodes).
REPLICAS_REFUSED = (10074, 10023)


async def _declare(js: JetStreamContext, config: StreamConfig, replicas: int | None) -> None:
    """Create the stream, or update it to ``config`` (keeping its replicas unless they are given)."""
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        if replicas is None:
            existing = await js.stream_info(config.name)
            config = dataclasses.replace(config, num_replicas=existing.config.num_replicas)
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
