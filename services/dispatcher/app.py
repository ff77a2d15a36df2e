"""The dispatcher: takes follow-up and alert commands off the JetStream work queue and carries them out.

For each command: append ``touchline.followup.requested`` / ``touchline.alert.raised`` to the log
(id = the derived follow-up or alert id, so it is stored once however often the command comes),
then POST it to the workspace's webhook when one is configured (signed, see webhooks.py). The
message is acked only after both effects are durable; on failure it is nak'ed with a delay
(transient failures are retried with backoff), and after too many attempts it is parked in the
dead-letter stream with its error, then acked. Nothing is ever ``term()``-ed unseen.

It is a FastStream NATS subscriber: one durable pull consumer (``dispatcher``) on the WorkQueue
stream, shared by every dispatcher process, with manual acks (FastStream's default policy would
``term()`` the command on any exception, deleting it from a WorkQueue stream). FastStream also
gives the AsyncAPI description of the NATS side: ``touchline asyncapi`` (with the configured NATS
address) or ``faststream docs gen services.dispatcher.app:app`` (with an example address).

Each command is carried out in a task of its own (``CommandsInFlight``), not in the subscriber's handler:
FastStream fetches a pull consumer's next batch only once every handler of the last one has
returned, so one workspace's webhook that took its whole timeout to answer held up every other
workspace's follow-ups as long (an outside audit: 19 s for a workspace without a webhook).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
import httpx
import msgspec
import structlog
from faststream import AckPolicy, FastStream
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from faststream.nats.security import NatsToken, NatsUserPassword
from faststream.specification import AsyncAPI
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from pydantic import Field, WithJsonSchema

from events import catalog as c
from events.log import workspace_of_subject
from events.schema import EXTERNAL_TYPES, inline_event_schema, inline_schema
from projections.followups import AlertView, CausedBy, FollowupView, alert_cause
from events.commands import (
    COMMANDS_STREAM,
    COMMANDS_SUBJECTS,
    DEADLETTER_STREAM,
    Command,
    RULES_SOURCE,
    RaiseAlert,
    RequestFollowup,
    decode_command,
)
from services import webhooks
from services.dispatcher import deadletter
from services.ingest import Ingestor, IngestUnavailable
from services.nats_io import nats_connection
from services.runtime.loop import cancel_and_wait
from services.settings import Settings

log = structlog.get_logger()

CONSUMER = "dispatcher"
# A command that fails for another reason than its webhook (log or database unavailable, a bug)
# is retried with these delays, then parked.
COMMAND_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
COMMAND_MAX_ATTEMPTS = 10
# Redelivery when a dispatcher dies holding a message comes after the consumer's ack wait
# (Settings.dispatcher_ack_wait). Parking is always our decision (at the workspace's
# max_attempts), so max_deliver is only a far backstop.
MAX_DELIVER = 100

_encode = msgspec.json.Encoder(decimal_format="string").encode


def consumer_config(ack_wait: float) -> ConsumerConfig:
    # No BackOff: JetStream counts a delayed nak against the backoff step of that delivery (the
    # redelivery comes after delay - ack_wait + backoff[n]), which stretched a webhook's own
    # backoff_seconds by 30, 90, ... s. A message whose dispatcher died comes back after ack_wait.
    return ConsumerConfig(
        durable_name=CONSUMER,
        ack_wait=ack_wait,
        max_deliver=MAX_DELIVER,
        max_ack_pending=1000,
    )


async def update_consumer(js: JetStreamContext) -> None:
    """Bring a consumer made by an earlier version (with a BackOff) to today's settings; FastStream
    only creates a missing one, and uses one that exists as it is."""
    try:
        info = await js.consumer_info(COMMANDS_STREAM, CONSUMER)
    except nats.js.errors.NotFoundError:
        return
    if info.config.backoff:
        info.config.backoff = None
        await js.add_consumer(COMMANDS_STREAM, config=info.config)
        log.info("dispatcher.consumer_updated", consumer=CONSUMER, removed="backoff")


# Commands of one workspace carried out at once by one dispatcher: its others wait their turn
# without holding up other workspaces'. How many wait in all is bounded by the consumer's
# max_ack_pending (``consumer_config``): the server delivers no more than that unsettled.
IN_FLIGHT_PER_WORKSPACE = 8


class CommandsInFlight:
    """Commands being carried out beside the subscriber, each acked or nak'ed by its own task.

    From the moment it is taken until it is settled, a command's message is kept from redelivery
    (``in_progress`` at once, then every third of the ack wait), while it waits for its turn too: a
    command that waited out the ack wait was posted a second time, by a redelivered copy (an
    outside audit). A workspace has at most ``IN_FLIGHT_PER_WORKSPACE`` carried out at once; the
    subscriber never waits, so one workspace's backlog to a receiver that does not answer leaves
    the others flowing (a dispatcher-wide limit of 256, taken before the workspace's turn, let
    300 commands of one workspace stall all others for 90 s: the last re-check)."""

    def __init__(self, ack_wait: float, per_workspace: int = IN_FLIGHT_PER_WORKSPACE) -> None:
        self.ack_wait = ack_wait
        self.per_workspace = per_workspace
        self.workspaces: dict[str, asyncio.Semaphore] = {}
        self.tasks: set[asyncio.Task] = set()

    def start(self, work: Coroutine, raw, workspace: str) -> None:
        task = asyncio.create_task(self._run(work, asyncio.create_task(self._keep(raw)), workspace))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, work: Coroutine, keeping: asyncio.Task, workspace: str) -> None:
        turn = self.workspaces.setdefault(workspace, asyncio.Semaphore(self.per_workspace))
        try:
            async with turn:
                await work
        except Exception:  # noqa: BLE001 - handle_message settles its message itself; this is a bug of ours
            log.exception("dispatcher.command_failed")
        finally:
            work.close()  # never started, if cancelled while waiting for its turn
            keeping.cancel()

    async def _keep(self, raw) -> None:
        while True:
            try:
                await raw.in_progress()
            except Exception:  # noqa: BLE001 - the connection is gone: redelivery will tell
                return
            await asyncio.sleep(self.ack_wait / 3)

    async def stop(self) -> None:
        """Abandon what is in flight: unacked, each command comes back after the ack wait (its
        log append is idempotent, its webhook says the same delivery id again)."""
        await cancel_and_wait(*self.tasks)


@dataclass
class Outcome:
    seq: int | None
    delivered: bool


class Dispatcher:
    """The effects of one command; the FastStream handler below only decodes, calls this and acks."""

    def __init__(self, pool: asyncpg.Pool, ingestor: Ingestor, http: httpx.AsyncClient) -> None:
        self.pool = pool
        self.ingestor = ingestor
        self.http = http

    async def execute(self, command: RequestFollowup | RaiseAlert, retried: bool = False) -> Outcome:
        """``retried``: the command came back (a failed delivery's retry, or a redelivery)."""
        event, item_id = logged_event(command)
        result = await self.ingestor.append_internal(command.workspace, event)
        hook = await webhooks.webhook_of(self.pool, command.workspace)
        if hook is None:
            if retried and await webhooks.delivery_status(self.pool, command.workspace, item_id) == "failing":
                # Its webhook was removed between two attempts: parked (``handle_message``), so that
                # it can be re-driven once one is registered again. It was dropped without a word.
                raise webhooks.DeliveryFailed("the workspace's webhook was removed before this was delivered")
            return Outcome(result.seq, False)
        if await webhooks.delivery_status(self.pool, command.workspace, item_id) == "delivered":
            return Outcome(result.seq, False)
        body = webhook_body(command, result.seq)
        status = await webhooks.post(self.http, hook, body, item_id=item_id, event_type=c.type_name(event))
        await webhooks.record(self.pool, command.workspace, item_id, "delivered", http_status=status)
        return Outcome(result.seq, True)


def logged_event(command: RequestFollowup | RaiseAlert) -> tuple[c.Envelope, str]:
    if isinstance(command, RequestFollowup):
        event = c.FollowupRequested(
            specversion="1.0",
            id=command.followup_id,
            source=RULES_SOURCE,
            time=command.trigger_time,
            subject=command.contact,
            data=c.FollowupRequestedData(
                followup_id=command.followup_id,
                rule=command.rule,
                reason=command.reason,
                due_at=command.due_at,
                caused_by_source=command.caused_by_source,
                caused_by_id=command.caused_by_id,
                trigger_time=command.trigger_time,
            ),
        )
        return event, command.followup_id
    event = c.AlertRaised(
        specversion="1.0",
        id=command.alert_id,
        source=RULES_SOURCE,
        time=command.at,
        data=c.AlertRaisedData(
            alert_id=command.alert_id,
            rule=command.rule,
            reason=command.reason,
            campaign_id=command.campaign_id,
            goal_id=command.goal_id,
            caused_by_source=command.caused_by_source,
            caused_by_id=command.caused_by_id,
        ),
    )
    return event, command.alert_id


def webhook_body(command: RequestFollowup | RaiseAlert, seq: int | None) -> bytes:
    """The JSON a webhook receives: the follow-up (or alert) as the API lists it, plus its log seq."""
    if isinstance(command, RequestFollowup):
        followup = FollowupView(command.followup_id, command.contact, command.rule, command.reason, command.due_at,
                                "open", CausedBy(command.caused_by_source, command.caused_by_id))
        return _encode({"type": "touchline.followup.requested", "workspace": command.workspace, "seq": seq,
                        "followup": followup})
    alert = AlertView(command.alert_id, command.rule, command.reason, command.at,
                      alert_cause(command.caused_by_source, command.caused_by_id),
                      campaign_id=command.campaign_id, goal_id=command.goal_id)
    return _encode({"type": "touchline.alert.raised", "workspace": command.workspace, "seq": seq, "alert": alert})


async def handle_message(dispatcher: Dispatcher, broker: NatsBroker, msg: NatsMessage) -> str:
    """Carry out one command and settle its message; returns what happened (for logs and tests)."""
    raw = msg.raw_message
    attempt = raw.metadata.num_delivered
    subject = raw.subject
    try:
        command = decode_command(msg.body)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        await deadletter.park(broker, subject, msg.body, stage="decode", error=str(err), attempts=attempt)
        await msg.ack()
        return "parked"
    bound = log.bind(workspace=command.workspace, command=command.command_id, attempt=attempt)
    try:
        await dispatcher.execute(command, retried=attempt > 1)
    except webhooks.DeliveryFailed as err:
        hook = await webhooks.webhook_of(dispatcher.pool, command.workspace)
        max_attempts = hook.max_attempts if hook else 1
        item_id = logged_event(command)[1]
        if attempt >= max_attempts:
            await webhooks.record(dispatcher.pool, command.workspace, item_id, "parked", error=str(err), http_status=err.status)
            await deadletter.park(broker, subject, msg.body, stage="webhook", error=str(err), attempts=attempt)
            await msg.ack()
            bound.warning("dispatcher.parked", stage="webhook", error=str(err))
            return "parked"
        await webhooks.record(dispatcher.pool, command.workspace, item_id, "failing", error=str(err), http_status=err.status)
        delay = hook.backoff(attempt) if hook else 1.0
        await msg.nack(delay=delay)
        bound.info("dispatcher.webhook_retry", error=str(err), in_s=delay)
        return "retry"
    except Exception as err:  # noqa: BLE001 - the log, the database, a bug: retry, then park
        error = f"{type(err).__name__}: {err}"
        if attempt >= COMMAND_MAX_ATTEMPTS:
            try:
                await deadletter.park(broker, subject, msg.body, stage="command", error=error, attempts=attempt)
            except Exception:  # noqa: BLE001 - cannot park either: leave it for redelivery
                bound.error("dispatcher.park_failed", error=error)
                await msg.nack(delay=COMMAND_BACKOFF[-1])
                return "retry"
            await msg.ack()
            bound.error("dispatcher.parked", stage="command", error=error)
            return "parked"
        delay = COMMAND_BACKOFF[min(attempt, len(COMMAND_BACKOFF)) - 1]
        await msg.nack(delay=delay)
        level = bound.warning if isinstance(err, IngestUnavailable) else bound.error
        level("dispatcher.retry", error=error, in_s=delay)
        return "retry"
    await raw.ack_sync()  # acked only now that the log append and the delivery are durable
    return "done"


EXAMPLE_NATS_URL = "nats://127.0.0.1:4222"

CommandPayload = Annotated[dict, WithJsonSchema({
    **inline_schema(Command),
    "description": "A command of the rules worker, JSON tagged by `command` (events/commands.py); `Nats-Msg-Id` is its"
                   " `command_id`. `touchline.cmd.request_followup` asks for a follow-up with a seller,"
                   " `touchline.cmd.raise_alert` for an alert; the dispatcher logs it as an event"
                   " (`touchline.followup.requested`, `touchline.alert.raised`), then posts it to the workspace's webhook.",
}), Field(title="Command")]


class ProducerCredentials(NatsUserPassword):
    """How a producer connects, for the AsyncAPI description only (never used to connect)."""

    def __init__(self) -> None:
        super().__init__("producer-USER", "PASSWORD")

    def get_schema(self) -> dict[str, dict[str, Any]]:
        return {"nats-user-password": {
            "type": "userPassword",
            "description": (
                "A producer's user and password, from `touchline token create --workspace W --scope ingest --nats`,"
                " which also prints its `inbox_prefix`: connect with it too, or the publish acks never arrive."
                " Revoked with `touchline token revoke --workspace W --nats USER`."
            ),
        }}


def build(servers: str | list[str] = EXAMPLE_NATS_URL, dispatcher: Dispatcher | None = None, *,
          ack_wait: float = Settings.dispatcher_ack_wait, in_flight: CommandsInFlight | None = None,
          server_description: str | None = None, documented_security: NatsUserPassword | None = None) -> FastStream:
    """The FastStream application: the broker, the command subscriber and the dead-letter publisher.
    ``in_flight``: where the commands are carried out (the caller stops it before the broker).
    ``server_description`` and ``documented_security``: what the AsyncAPI description says of the
    server and of how to connect to it (an application built with them is for its description only)."""
    servers, credentials = nats_connection(servers)
    security = documented_security or (
        NatsUserPassword(credentials["user"], credentials["password"]) if "user" in credentials
        else NatsToken(credentials["token"]) if "token" in credentials else None)
    broker = NatsBroker(servers, security=security, max_reconnect_attempts=-1, reconnect_time_wait=0.5, logger=None,
                        description=server_description)
    deadletter.register_publisher(broker, CommandPayload)
    in_flight = in_flight or CommandsInFlight(ack_wait)

    @broker.subscriber(
        COMMANDS_SUBJECTS,
        stream=JStream(COMMANDS_STREAM, declare=False),
        durable=CONSUMER,
        config=consumer_config(ack_wait),
        pull_sub=PullSub(batch_size=8, timeout=1.0),
        ack_policy=AckPolicy.MANUAL,
        title="touchline.cmd.{workspace}:dispatch",
        description=(
            "Follow-up and alert commands from the rules worker (JSON, tagged by `command`:"
            " `touchline.cmd.request_followup` or `touchline.cmd.raise_alert`); WorkQueue stream"
            f" {COMMANDS_STREAM}, durable pull consumer `{CONSUMER}` shared by every dispatcher,"
            f" manual acks, retried with backoff, parked in {DEADLETTER_STREAM} after repeated failure."
        ),
    )
    async def dispatch(body: CommandPayload, msg: NatsMessage) -> None:
        if dispatcher is None:
            raise RuntimeError("this application was built for its description only")
        in_flight.start(handle_message(dispatcher, broker, msg), msg.raw_message, workspace_of_subject(msg.raw_message.subject))

    return FastStream(
        broker,
        specification=AsyncAPI(
            title="Touchline (NATS side)",
            version="1.0.0",
            description="The NATS side of Touchline: events in, the log, follow-up commands, dead letters.",
        ),
    )


def event_payload(title: str, description: str, types: tuple[type[c.Envelope], ...]) -> Any:
    """A message type for FastStream's AsyncAPI description: the catalog's JSON Schema of one event
    of ``types`` (events/schema.py). FastStream takes payload schemas from pydantic, which takes
    this one as it is but looks every ``$ref`` up among its own definitions: so it has none."""
    return Annotated[dict, WithJsonSchema({**inline_event_schema(types), "description": description}),
                     Field(title=title)]


InboxEventPayload = event_payload(
    "CloudEvent",
    "One event in CloudEvents 1.0 structured mode (JSON), of a type of the catalog (its `type`).",
    EXTERNAL_TYPES,
)
LoggedEventPayload = event_payload(
    "LoggedEvent",
    "An accepted event as received (structured mode), or one the dispatcher wrote.",
    c.ALL_TYPES,
)


def describe(nats_url: str | None = None) -> FastStream:
    """The whole NATS side for its AsyncAPI description: the dispatcher's channels, plus the way
    in and the log, which the API's inbox reader and the projector read with ordered consumers
    (not FastStream subscribers), so they are described here and never subscribed. The server is
    ``nats_url`` (without credentials), else an example address, said to be one."""
    if nats_url:
        application = build(nats_url, documented_security=ProducerCredentials())
    else:
        application = build(documented_security=ProducerCredentials(), server_description=(
            "An example address: the description was made without a NATS URL (TOUCHLINE_NATS_URL, or the"
            " embedded server of a running `touchline up`)."
        ))
    broker = application.broker

    @broker.subscriber(
        "touchline.in.{workspace}",
        title="touchline.in.{workspace}:ingest",
        description=(
            "The NATS way in (CONTRACT.md section 3): producers publish one structured-mode CloudEvent"
            " per message with JetStream acks (stream TOUCHLINE_INBOX, Limits retention; atomic batches"
            " allowed). An ack means durably in the inbox; the API's inbox reader then judges each event"
            " exactly once (position committed in PostgreSQL) into the log or the rejected list."
            " Connect with the user, password and inbox prefix of `touchline token create --workspace W"
            " --scope ingest --nats` (without the prefix the publish is stored but its ack never arrives);"
            " an event is at most 64 KiB; leave Nats-Msg-Id unset: Touchline deduplicates by source and id"
            " for ever, and the inbox, shared by every workspace's producers, drops a message whose"
            " Nats-Msg-Id it saw in the last 100 ms (its ack saying duplicate)."
        ),
    )
    async def ingest(body: InboxEventPayload) -> None:
        raise RuntimeError("described only: the inbox is read by services/inbox.py")

    broker.publisher(
        "touchline.log.{workspace}",
        title="touchline.log.{workspace}:append",
        description=(
            "The log (stream TOUCHLINE_LOG, fsynced, deny delete/purge): every accepted event, body as"
            " received, headers Nats-Msg-Id, Touchline-Received-At, Touchline-Catalog-Version (the"
            " workspace is the subject's last token). Its stream sequence is the seq of ingest answers and min_seq."
        ),
        schema=LoggedEventPayload,
    )
    return application


# For `faststream docs gen services.dispatcher.app:app`: the description needs no server.
app = describe()


