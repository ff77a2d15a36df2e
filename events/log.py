"""The log on JetStream: stream and subject names, and how a logged event is framed.

One stream, ``TOUCHLINE_LOG``, holds every accepted event of every workspace under
``touchline.log.{ws}``; its stream sequence is the ``seq`` that ingest answers and
``min_seq`` waits for. The message body is the event's structured-mode CloudEvent JSON,
as the producer sent it (so unknown fields and exact decimals survive); the workspace is the
subject's last token, and the time Touchline received it travels in a header.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from typing import Mapping

import msgspec

from events.catalog import Envelope, decode_event
from events.upcasting import CATALOG_VERSION, UNSTAMPED_VERSION, upcast_json

LOG_STREAM = "TOUCHLINE_LOG"
MAX_SEQ = 2**63 - 1  # the largest sequence: JetStream's are 64-bit, PostgreSQL's columns bigint
LOG_SUBJECTS = "touchline.log.>"
INBOX_STREAM = "TOUCHLINE_INBOX"
INBOX_SUBJECTS = "touchline.in.*"

HEADER_RECEIVED_AT = "Touchline-Received-At"
HEADER_MSG_ID = "Nats-Msg-Id"
# The catalog version that judged the event (events/upcasting.py); absent means version 1.
HEADER_CATALOG_VERSION = "Touchline-Catalog-Version"


EventKey = tuple[str, str, str]  # (workspace, source, id): an event's identity, for ever


def log_subject(workspace: str) -> str:
    return f"touchline.log.{workspace}"


def inbox_subject(workspace: str) -> str:
    return f"touchline.in.{workspace}"


@functools.lru_cache(maxsize=4096)  # once a workspace, not once an event
def workspace_of_subject(subject: str) -> str:
    return subject.rsplit(".", 1)[-1]


def event_digest(workspace: str, source: str, event_id: str) -> bytes:
    """The SHA-256 of an event's (workspace, source, id). Its hex is the event's ``Nats-Msg-Id``
    (JetStream's short-term dedupe key); its first ``INDEX_KEY_BYTES`` are its key in
    ``event_index`` (the permanent one), as SQL's ``event_key(workspace, source, id)`` computes."""
    return hashlib.sha256(f"{workspace}\x00{source}\x00{event_id}".encode()).digest()


INDEX_KEY_BYTES = 16


def index_key_of(digest: bytes) -> bytes:
    """An event's key in ``event_index``, from its ``event_digest``."""
    return digest[:INDEX_KEY_BYTES]


def index_key(workspace: str, source: str, event_id: str) -> bytes:
    return index_key_of(event_digest(workspace, source, event_id))


def message_id(workspace: str, source: str, event_id: str) -> str:
    return event_digest(workspace, source, event_id).hex()


def arrival_headers(received_at: dt.datetime) -> dict[str, str]:
    """The log headers every event received at ``received_at`` shares (all but ``Nats-Msg-Id``)."""
    return {HEADER_RECEIVED_AT: received_at.isoformat(), HEADER_CATALOG_VERSION: str(CATALOG_VERSION)}


def log_headers(digest: bytes, arrival: dict[str, str]) -> dict[str, str]:
    """A logged event's headers: its ``Nats-Msg-Id`` (the hex of its ``event_digest``) and its
    arrival's (``arrival_headers``, shared by every event of a request)."""
    return {HEADER_MSG_ID: digest.hex(), **arrival}


class LoggedEvent(msgspec.Struct, frozen=True):
    """An accepted event as the log holds it: its position, workspace, arrival and content."""

    seq: int
    workspace: str
    received_at: dt.datetime
    event: Envelope
    raw: bytes


# A batch's events share their arrival time: parse each distinct one once.
_received_at = functools.lru_cache(maxsize=256)(dt.datetime.fromisoformat)


def decode_logged(seq: int, subject: str, headers: Mapping[str, str] | None, body: bytes) -> LoggedEvent:
    """A logged event in today's catalog shape: an older one is upcast first (``raw`` is then
    the upcast JSON; the log itself is never rewritten)."""
    headers = headers or {}
    received = headers.get(HEADER_RECEIVED_AT)
    body = upcast_json(body, int(headers.get(HEADER_CATALOG_VERSION, UNSTAMPED_VERSION)))
    return LoggedEvent(
        seq=seq,
        workspace=workspace_of_subject(subject),
        received_at=_received_at(received) if received else dt.datetime.now(dt.timezone.utc),
        event=decode_event(body),
        raw=body,
    )
