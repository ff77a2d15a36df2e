"""The workspace-level read models over HTTP: funnel, touches, goals, attribution (CONTRACT.md section 4)."""

from __future__ import annotations

from typing import Annotated

from litestar import Request, get
from litestar.params import Parameter

from projections import attribution, funnel, goals, touches
from services.api import docs
from services.api.common import AsOf, Snapshot, ApiError, authorized, json_response, one_of, parse_time, read_connection, wait_applied, MinSeq, WaitMs


MAX_LOOKBACK_DAYS = 36_500  # a century


@get(
    "/v1/workspaces/{ws:str}/funnel",
    summary="Contacts per stage for a cohort by reached[aware], with conversion and median hours",
    security=docs.BEARER,
    responses=docs.READ_ERRORS,
    guards=[authorized("read")],
)
async def get_funnel(
    request: Request,
    ws: str,
    from_: Annotated[str | None, Parameter(query="from", description="cohort: reached[aware] at or after")] = None,
    to: Annotated[str | None, Parameter(description="cohort: reached[aware] before")] = None,
    campaign: Annotated[str | None, Parameter(description="the campaign of the contact's first campaign touch")] = None,
    min_seq: MinSeq = None,
    wait_ms: WaitMs = 5000,
    snapshot: Snapshot = None,
) -> funnel.FunnelView:
    start, end = parse_time("from", from_), parse_time("to", to)
    await wait_applied(request, min_seq, wait_ms, snapshot)
    async with read_connection(request, snapshot) as conn:
        answer = await funnel.query(conn, ws, start, end, campaign or None, stored_gaps=snapshot is None)
    return json_response(answer)  # type: ignore[return-value]


@get(
    "/v1/workspaces/{ws:str}/touches",
    summary="Touches before conversion and touches per channel",
    security=docs.BEARER,
    responses=docs.READ_ERRORS,
    guards=[authorized("read")],
)
async def get_touches(
    request: Request,
    ws: str,
    min_seq: MinSeq = None,
    wait_ms: WaitMs = 5000,
    snapshot: Snapshot = None,
) -> touches.TouchesView:
    await wait_applied(request, min_seq, wait_ms, snapshot)
    async with read_connection(request, snapshot) as conn:
        answer = await touches.query(conn, ws)
    return json_response(answer)  # type: ignore[return-value]


@get(
    "/v1/workspaces/{ws:str}/goals",
    summary="Each goal's actual, attainment and pacing at as_of; the reverse funnel of revenue goals",
    security=docs.BEARER,
    responses=docs.READ_ERRORS,
    guards=[authorized("read")],
)
async def get_goals(
    request: Request,
    ws: str,
    as_of: AsOf = None,
    min_seq: MinSeq = None,
    wait_ms: WaitMs = 5000,
    snapshot: Snapshot = None,
) -> goals.GoalsView:
    moment = parse_time("as_of", as_of)
    await wait_applied(request, min_seq, wait_ms, snapshot)
    async with read_connection(request, snapshot) as conn:
        answer = await goals.query(conn, ws, moment, stored_counts=snapshot is None)
    return json_response(answer)  # type: ignore[return-value]


@get(
    "/v1/workspaces/{ws:str}/attribution",
    summary="Leads, deals and revenue credited to campaigns and sales channels",
    security=docs.BEARER,
    responses=docs.READ_ERRORS,
    guards=[authorized("read")],
)
async def get_attribution(
    request: Request,
    ws: str,
    model: Annotated[str, Parameter(description="How a conversion's credit is shared among its credited touches",
                                    schema_extra={"enum": list(attribution.MODELS)})] = attribution.DEFAULT_MODEL,
    lookback_days: Annotated[int, Parameter(description="Touches this many days or fewer before a conversion are credited",
                                            schema_extra={"minimum": 0, "maximum": MAX_LOOKBACK_DAYS})
                             ] = attribution.DEFAULT_LOOKBACK_DAYS,
    min_seq: MinSeq = None,
    wait_ms: WaitMs = 5000,
    snapshot: Snapshot = None,
) -> attribution.AttributionView:
    model = one_of("model", model, attribution.MODELS) or attribution.DEFAULT_MODEL
    if not 0 <= lookback_days <= MAX_LOOKBACK_DAYS:
        raise ApiError(400, f"lookback_days: expected 0 to {MAX_LOOKBACK_DAYS}, got {lookback_days}")
    await wait_applied(request, min_seq, wait_ms, snapshot)
    async with read_connection(request, snapshot) as conn:
        answer = await attribution.query(conn, ws, model, lookback_days)
    return json_response(answer)  # type: ignore[return-value]


ROUTES = [get_funnel, get_touches, get_goals, get_attribution]
