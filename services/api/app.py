"""The HTTP API (CONTRACT.md sections 2-4): a thin Litestar adapter over the ingestor and read models."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Annotated

import asyncpg
import msgspec
from litestar import Litestar, Request, delete, get, post
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.params import Parameter

from events.validation import MAX_BATCH_BYTES, is_workspace_id
from projections import contacts as contact_model
from projections import followups as followup_model
from projections.ladder import CONTACT_STATUSES, STAGES
from services.api import auth, docs
from services.api.common import (
    choice,
    Snapshot,
    ApiError,
    MinSeq,
    WaitMs,
    check_limit,
    ContactSegment,
    authorized,
    contact_of,
    bad_value_response,
    check_seq,
    error_response,
    json_response,
    one_of,
    page_size,
    read_connection,
    services_of,
    allowed_methods,
    query_names,
    before_handler,
    wait_applied,
    unavailable_response,
    unexpected_response,
)
from services import gc_tuning
from services.api.ingest_body import Refused, read_events
from services.ingest import IngestUnavailable, OutcomeUnknown, Result
from services.status import StatusReport, status_report
from services.store import readiness
from services.store.db import RETRYABLE

# --- health, workspaces, tokens ---------------------------------------------------------


@get(
    "/v1/health",
    summary="200 once every service is ready",
    responses={503: ResponseSpec(readiness.Readiness, generate_examples=False,
                                 description="Some service is not ready: the same report, `ready` false.")},
)
async def health(request: Request) -> readiness.Readiness:
    report = await readiness.report(services_of(request).pool, services_of(request).nc)
    # A 503 says when to look again, like every 503 of the API.
    return json_response(report) if report.ready else json_response(report, 503, {"Retry-After": "1"})  # type: ignore[return-value]


class WorkspaceIn(msgspec.Struct):
    id: str


class WorkspaceOut(msgspec.Struct):
    id: str


class TokenIn(msgspec.Struct):
    scopes: Annotated[list[str], msgspec.Meta(
        description=f"At least one of {', '.join(auth.SCOPES)}; `admin` may also ingest and read in its workspace.")]


class TokenOut(msgspec.Struct):
    token: str
    id: str  # what lists and revokes it
    workspace: str
    scopes: list[str]


class TokenList(msgspec.Struct):
    tokens: list[auth.TokenRecord]


@post(
    "/v1/workspaces",
    summary="Create a workspace (operator admin token)",
    status_code=201,
    security=docs.BEARER,
    responses=docs.errors(400, 401, 403, 409, 503, said=docs.OPERATOR_SAID, examples=docs.OPERATOR_EXAMPLES),
    guards=[authorized("admin", in_workspace=False)],
)
async def create_workspace(request: Request, data: WorkspaceIn) -> WorkspaceOut:
    if not is_workspace_id(data.id):
        raise ApiError(400, "id: a workspace id is 1-64 of a-z 0-9 -")
    if not await auth.create_workspace(services_of(request).pool, data.id):
        raise ApiError(409, f"workspace {data.id!r} exists")
    return json_response(WorkspaceOut(data.id), 201)  # type: ignore[return-value]


@post(
    "/v1/workspaces/{ws:str}/tokens",
    summary="Create a token; it is shown once",
    status_code=201,
    security=docs.BEARER,
    responses=docs.WORKSPACE_ERRORS,
    guards=[authorized("admin")],
)
async def create_token(request: Request, ws: str, data: TokenIn) -> TokenOut:
    if problem := auth.invalid_scopes(data.scopes):
        raise ApiError(400, f"scopes: {problem}")
    token = await auth.create_token(services_of(request).pool, ws, data.scopes)
    return json_response(TokenOut(token, auth.token_id(token), ws, sorted(set(data.scopes))), 201)  # type: ignore[return-value]


@get(
    "/v1/workspaces/{ws:str}/tokens",
    summary="The workspace's tokens: id, scopes, when made and when revoked (never the token itself)",
    security=docs.BEARER,
    responses=docs.WORKSPACE_ERRORS,
    guards=[authorized("admin")],
)
async def list_tokens(request: Request, ws: str, min_seq: MinSeq = None, wait_ms: WaitMs = 5000) -> TokenList:
    await wait_applied(request, min_seq, wait_ms)  # not a read model, but every read takes min_seq (section 4)
    return json_response(TokenList(await auth.list_tokens(services_of(request).pool, ws)))  # type: ignore[return-value]


@delete(
    "/v1/workspaces/{ws:str}/tokens/{token_id:str}",
    summary="Revoke a token: refused everywhere within 5 s; answers its record",
    security=docs.BEARER,
    status_code=200,
    responses=docs.errors(400, 401, 403, 404, 503, said={404: "Unknown workspace, or no token of this id in it."}),
    guards=[authorized("admin")],
)
async def revoke_token(
    request: Request,
    ws: str,
    token_id: Annotated[str, Parameter(description="The token's `id`, as its creation and the list answer it",
                                       schema_extra={"pattern": "^" + auth.TOKEN_ID.pattern + "$"})],
) -> auth.TokenRecord:
    if not auth.TOKEN_ID.fullmatch(token_id):
        # Never echoed when it looks like a token itself: the answer may end up in a log.
        shown = "a token, not its id" if token_id.startswith(auth.TOKEN_PREFIX) else repr(token_id[:40])
        raise ApiError(400, f"token_id: expected the {2 * auth.TOKEN_ID_BYTES} hex digits a token's `id` is, got {shown}")
    record, _ = await auth.revoke_token(services_of(request).pool, ws, token_id)
    if record is None:
        raise ApiError(404, f"no token {token_id!r} in workspace {ws!r}")
    services_of(request).tokens.forget(token_id)
    return json_response(record)  # type: ignore[return-value]


# --- events in --------------------------------------------------------------------------


class IngestAnswer(msgspec.Struct):
    results: list[Result]
    last_seq: int | None


@post(
    "/v1/workspaces/{ws:str}/events",
    summary="Ingest one CloudEvent or a batch; answered once accepted events are durably logged",
    description=(
        "200 with one result per event (accepted, duplicate or rejected, with the field at fault), even when"
        " some are rejected. A request refused whole (400, 413, 415) keeps its body in the rejected list."
        " The body may be compressed (Content-Encoding gzip or deflate); the limits hold once decompressed."
        " 504: the log took the write but did not confirm it (10 s for the write, then 60 s of asking again,"
        " 70 s in all); it may be stored. Retrying the same request is always safe."
    ),
    status_code=200,
    security=docs.BEARER,
    responses=docs.INGEST_ERRORS,
    # The body is read by the handler (ingest_body.read_events), not by Litestar: its schema is documentation only.
    operation_class=docs.IngestOperation,
    # Read and limited by ingest_body.read_body, which keeps the start of a refused body.
    request_max_body_size=2**40,
    guards=[authorized("ingest")],
)
async def ingest_events(request: Request, ws: str) -> IngestAnswer:
    ingestor = services_of(request).ingestor
    try:
        judged = await read_events(request)
    except Refused as refused:
        try:
            await ingestor.record_rejected(ws, [(refused.kept, str(refused.detail))], via="http")
        except IngestUnavailable as err:
            raise ApiError(503, str(err), headers={"Retry-After": "1"}) from None
        raise
    try:
        results = await ingestor.ingest(ws, judged, via="http")
    except OutcomeUnknown as err:
        raise ApiError(504, str(err), headers={"Retry-After": "1"}) from None
    except IngestUnavailable as err:
        raise ApiError(503, str(err), headers={"Retry-After": "1"}) from None
    seqs = [result.seq for result in results if result.seq is not None]
    return json_response(IngestAnswer(results, max(seqs) if seqs else None))  # type: ignore[return-value]


# --- reading ----------------------------------------------------------------------------


@get(
    "/v1/workspaces/{ws:str}/contacts/{contact:str}",
    summary="One contact's funnel stage, touches and deals",
    security=docs.BEARER,
    responses=docs.READ_ERRORS,
    guards=[authorized("read")],
)
async def get_contact(
    request: Request,
    ws: str,
    contact: ContactSegment,
    min_seq: MinSeq = None,
    wait_ms: WaitMs = 5000,
    snapshot: Snapshot = None,
) -> contact_model.ContactView:
    contact = contact_of(request, contact)
    await wait_applied(request, min_seq, wait_ms, snapshot)
    async with read_connection(request, snapshot) as conn:
        view = await contact_model.query(conn, ws, contact)
    if view is None:
        raise ApiError(404, f"unknown contact {contact!r}")
    return json_response(view)  # type: ignore[return-value]


class ContactPage(msgspec.Struct):
    contacts: list[contact_model.ContactView]
    next: str | None


StageFilter = choice(STAGES, "Only contacts at this stage")
StatusFilter = choice(CONTACT_STATUSES, "Only contacts of this status")


@get(
    "/v1/workspaces/{ws:str}/contacts",
    summary="A page of contacts, ordered by contact id",
    security=docs.BEARER,
    responses=docs.READ_ERRORS,
    guards=[authorized("read")],
)
async def list_contacts(
    request: Request,
    ws: str,
    stage: StageFilter = None,
    status: StatusFilter = None,
    limit: page_size(1000) = 100,
    after: Annotated[str | None, Parameter(description="The page after this contact id: the `next` of the page before")] = None,
    min_seq: MinSeq = None,
    wait_ms: WaitMs = 5000,
    snapshot: Snapshot = None,
) -> ContactPage:
    stage, status = one_of("stage", stage, STAGES), one_of("status", status, CONTACT_STATUSES)
    check_limit(limit, 1000)
    await wait_applied(request, min_seq, wait_ms, snapshot)
    async with read_connection(request, snapshot) as conn:
        rows = await conn.fetch(
            f"SELECT c.contact, c.state, {contact_model.WON_ELSEWHERE} FROM contacts c WHERE c.workspace = $1"
            " AND ($2::text IS NULL OR c.stage = $2) AND ($3::text IS NULL OR c.status = $3)"
            " AND ($4::text IS NULL OR c.contact > $4) ORDER BY c.contact LIMIT $5",
            ws,
            stage,
            status,
            after,
            limit + 1,
        )
        open_followups = await followup_model.open_counts(conn, ws, [row["contact"] for row in rows[:limit]])
    page = [
        contact_model.render(row["contact"], contact_model.decode_state(row["state"]), open_followups.get(row["contact"], 0),
                             row["won_elsewhere"] or ())
        for row in rows[:limit]
    ]
    return json_response(ContactPage(page, page[-1].contact if len(rows) > limit else None))  # type: ignore[return-value]


class RejectedItem(msgspec.Struct, omit_defaults=True):
    id: int
    received_at: dt.datetime
    via: str
    reason: str
    body: str  # as text; bytes that are not UTF-8 shown as U+FFFD
    body_base64: str | None = None  # only when the body is not UTF-8 text: its exact bytes

    @classmethod
    def of(cls, row) -> RejectedItem:
        raw = bytes(row["body"])
        try:
            return cls(row["id"], row["received_at"], row["via"], row["reason"], raw.decode())
        except UnicodeDecodeError:
            return cls(row["id"], row["received_at"], row["via"], row["reason"], raw.decode("utf-8", "replace"),
                       base64.b64encode(raw).decode())


class RejectedPage(msgspec.Struct):
    rejected: list[RejectedItem]
    next: int | None


@get(
    "/v1/workspaces/{ws:str}/rejected",
    summary="Rejected input, newest first, with raw body and reason",
    security=docs.BEARER,
    responses=docs.READ_ERRORS,
    guards=[authorized("read")],
)
async def list_rejected(
    request: Request,
    ws: str,
    limit: page_size(1000) = 100,
    before: Annotated[int | None, Parameter(description="The page of items older than this `id`: the `next` of the page before")] = None,
    min_seq: MinSeq = None,
    wait_ms: WaitMs = 5000,
) -> RejectedPage:
    check_limit(limit, 1000)
    check_seq("before", before)
    await wait_applied(request, min_seq, wait_ms)
    rows = await services_of(request).pool.fetch(
        "SELECT id, received_at, via, reason, body FROM rejected WHERE workspace = $1"
        " AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        ws,
        before,
        limit + 1,
    )
    items = [RejectedItem.of(row) for row in rows[:limit]]
    return json_response(RejectedPage(items, items[-1].id if len(rows) > limit else None))  # type: ignore[return-value]


@get(
    "/v1/status",
    summary="Each projector's applied sequence, lag, recent rate and writing process; the log's last sequence;"
            " the NATS inbox's backlog (the operator's admin token)",
    security=docs.BEARER,
    responses=docs.OPERATOR_ERRORS,
    guards=[authorized("admin", in_workspace=False)],
)
async def status(request: Request, min_seq: MinSeq = None, wait_ms: WaitMs = 5000) -> StatusReport:
    await wait_applied(request, min_seq, wait_ms)  # as every read: the contract's section 4
    services = services_of(request)
    return json_response(await status_report(services.pool, services.nc.jetstream()))  # type: ignore[return-value]


ROUTES = [health, create_workspace, create_token, list_tokens, revoke_token, ingest_events, get_contact, list_contacts, list_rejected, status]


def all_routes() -> list:
    """The spine's routes plus each capability's own module of routes."""
    from services.api import read_models

    from services.api import audit
    from services.api import followups

    return list(ROUTES) + read_models.ROUTES + audit.ROUTES + followups.ROUTES


def create_app(services_factory, on_shutdown=()) -> Litestar:
    """``services_factory`` is awaited at start-up and returns the Services the handlers use."""

    async def start(app: Litestar) -> None:
        app.state.services = await services_factory()
        gc_tuning.collect_less()

    app = Litestar(
        route_handlers=all_routes(),
        on_startup=[start],
        on_shutdown=list(on_shutdown),
        before_request=before_handler,
        exception_handlers={
            HTTPException: error_response,
            **{kind: unavailable_response for kind in RETRYABLE},
            asyncpg.DataError: bad_value_response,
            Exception: unexpected_response,
        },
        request_max_body_size=MAX_BATCH_BYTES,
        openapi_config=OpenAPIConfig(title="Touchline", version="1.0.0", path="/docs", components=docs.COMPONENTS),
        debug=False,
    )
    docs.add_event_schemas(app.openapi_schema)
    docs.add_retry_after(app.openapi_schema)
    docs.add_workspace_pattern(app.openapi_schema)
    docs.add_query_values_only(app.openapi_schema)
    docs.add_values(app.openapi_schema)
    app.state.allowed_methods = allowed_methods(app.routes)
    app.state.query_names = query_names(app.routes)
    return app

