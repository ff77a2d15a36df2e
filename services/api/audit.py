"""The audit trail over HTTP: every accepted event about a contact, in log order."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import msgspec
from litestar import Request, get
from litestar.params import Parameter

from projections.audit import entry_raw, trail
from services.api import docs
from services.api.common import Snapshot, ApiError, ContactSegment, authorized, check_limit, check_seq, contact_of, json_response, read_connection, wait_applied, MinSeq, WaitMs, page_size


class AuditTrail(msgspec.Struct):
    contact: str
    events: list[msgspec.Raw]
    next: int | None


class AuditEntry(msgspec.Struct, omit_defaults=True):
    """One entry as the trail writes it: the accepted CloudEvent, exactly as stored, with its log
    position and arrival beside its attributes (documentation of ``entry_raw``'s output)."""

    seq: int
    received_at: dt.datetime
    specversion: str
    id: str
    source: str
    type: str
    time: dt.datetime
    subject: str
    data: dict[str, Any]
    datacontenttype: str | None = None


class AuditTrailPage(msgspec.Struct):
    """The answer's shape, for the OpenAPI document; the handler writes ``AuditTrail``."""

    contact: str
    events: list[AuditEntry]
    next: Annotated[int | None, msgspec.Meta(description="The `after` of the next page; null on the last.")]


@get(
    "/v1/workspaces/{ws:str}/contacts/{contact:str}/events",
    summary="The contact's audit trail: every accepted event about it, with seq and received_at, in log order",
    security=docs.BEARER,
    responses=docs.READ_ERRORS,
    guards=[authorized("read")],
)
async def contact_events(
    request: Request,
    ws: str,
    contact: ContactSegment,
    after: Annotated[int | None, Parameter(description="The entries after this `seq`: the `next` of the page before")] = None,
    limit: page_size(10000) = 1000,
    min_seq: MinSeq = None,
    wait_ms: WaitMs = 5000,
    snapshot: Snapshot = None,
) -> AuditTrailPage:
    contact = contact_of(request, contact)
    check_limit(limit, 10000)
    check_seq("after", after)
    await wait_applied(request, min_seq, wait_ms, snapshot)
    async with read_connection(request, snapshot) as conn:
        rows = await trail(conn, ws, contact, after, limit + 1)
    if not rows and after is None:
        raise ApiError(404, f"unknown contact {contact!r}")
    page = rows[:limit]
    events = [entry_raw(row["seq"], row["received_at"], row["envelope"]) for row in page]
    return json_response(AuditTrail(contact, events, page[-1]["seq"] if len(rows) > limit else None))  # type: ignore[return-value]


ROUTES = [contact_events]
