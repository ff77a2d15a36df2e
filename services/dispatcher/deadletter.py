"""The dead-letter stream: commands that kept failing, kept with their error, listed and re-driven.

A parked message keeps the command's body exactly; headers say why (``Touchline-Error``), at which
stage (``decode``, ``command``: the log or database, ``webhook``), after how many attempts, and
where it came from. ``touchline deadletter list`` shows them, ``touchline deadletter redrive``
puts them back on the work queue (the dispatcher then tries afresh; its effects are idempotent)
and removes them from the dead-letter stream.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import nats.js.errors
from faststream.nats import JStream, NatsBroker
from nats.js import JetStreamContext

from events.commands import COMMANDS_STREAM, DEADLETTER_STREAM, decode_command, deadletter_subject
from events.log import workspace_of_subject

ERROR = "Touchline-Error"
STAGE = "Touchline-Stage"
ATTEMPTS = "Touchline-Attempts"
ORIGINAL_SUBJECT = "Touchline-Original-Subject"
PARKED_AT = "Touchline-Parked-At"


def register_publisher(broker: NatsBroker, schema: Any = None):
    """Declare the dead-letter subject on the broker, so the AsyncAPI description shows it, with
    ``schema`` as its messages' payload (a parked command's body is the command's)."""
    return broker.publisher(
        "touchline.deadletter.{workspace}",
        stream=JStream(DEADLETTER_STREAM, declare=False),
        title="touchline.deadletter.{workspace}:park",
        description="Commands that kept failing, body unchanged, with Touchline-Error / -Stage / -Attempts headers.",
        schema=schema,
    )


def _header_value(text: str) -> str:
    return " ".join(text.split())[:2000]


async def park(broker: NatsBroker, original_subject: str, body: bytes, *, stage: str, error: str, attempts: int) -> None:
    """Store the command in the dead-letter stream (acked by JetStream) before its original is acked."""
    headers = {
        ERROR: _header_value(error) or "unknown",
        STAGE: stage,
        ATTEMPTS: str(attempts),
        ORIGINAL_SUBJECT: original_subject,
        PARKED_AT: dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    await broker.publish(
        body,
        subject=deadletter_subject(workspace_of_subject(original_subject)),
        headers=headers,
        stream=DEADLETTER_STREAM,
        timeout=10,
    )


@dataclass
class Parked:
    seq: int
    workspace: str
    stage: str
    error: str
    attempts: int
    parked_at: str
    original_subject: str
    command: str
    item_id: str
    body: bytes


async def list_parked(js: JetStreamContext, workspace: str | None = None) -> list[Parked]:
    info = await js.stream_info(DEADLETTER_STREAM)
    out: list[Parked] = []
    if not info.state.messages:
        return out
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(DEADLETTER_STREAM, seq)
        except nats.js.errors.NotFoundError:
            continue
        ws = workspace_of_subject(msg.subject)
        if workspace is not None and ws != workspace:
            continue
        headers = msg.headers or {}
        kind, item_id = "?", "?"
        try:
            command = decode_command(msg.data)
            kind = type(command).__name__
            item_id = getattr(command, "followup_id", None) or getattr(command, "alert_id", "?")
        except Exception:  # noqa: BLE001 - a poison message is listed as it is
            pass
        out.append(Parked(seq, ws, headers.get(STAGE, "?"), headers.get(ERROR, ""), int(headers.get(ATTEMPTS, "0")),
                          headers.get(PARKED_AT, ""), headers.get(ORIGINAL_SUBJECT, ""), kind, item_id, msg.data or b""))
    return out


async def redrive(js: JetStreamContext, parked: list[Parked]) -> int:
    """Put each parked command back on the work queue, then remove it from the dead-letter stream."""
    for item in parked:
        await js.publish(
            item.original_subject,
            item.body,
            stream=COMMANDS_STREAM,
            headers={"Nats-Msg-Id": f"redrive-{item.seq}-{uuid.uuid4().hex}"},
        )
        await js.delete_msg(DEADLETTER_STREAM, item.seq)
    return len(parked)
