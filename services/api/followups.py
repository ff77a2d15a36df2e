"""Follow-ups, alerts, and their per-workspace settings (CONTRACT.md section 6)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated
from urllib.parse import urlsplit

import msgspec
from litestar import Request, delete, get, post, put
from litestar.params import Parameter

from events.commands import ALERT_RULES, ALL_RULES
from projections import followups as model
from projections.followups import AlertView, CausedBy, FollowupView
from services.api import docs
from services.api.common import (
    AsOf,
    choice,
    Snapshot,
    MinSeq,
    WaitMs,
    page_size,
    ApiError,
    check_limit,
    authorized,
    json_response,
    one_of,
    parse_time,
    wait_applied,
    read_connection,
    services_of,
)
from services import webhooks


FollowupStatusFilter = choice(model.FOLLOWUP_STATUSES, "Only follow-ups of this status; `open` lists those not yet overdue")
AlertRuleFilter = choice(ALERT_RULES, "Only alerts of this rule")


@get(
    "/v1/workspaces/{ws:str}/followups",
    summary="Follow-ups: open, overdue (open past due at as_of), done or dismissed",
    security=docs.BEARER,
    responses=docs.READ_ERRORS,
    guards=[authorized("read")],
)
async def list_followups(
    request: Request,
    ws: str,
    status: FollowupStatusFilter = None,
    as_of: AsOf = None,
    contact: Annotated[str | None, Parameter(description="Only this contact's follow-ups")] = None,
    limit: page_size(10000) = 1000,
    after: Annotated[str | None, Parameter(
        description="The follow-ups after this `followup_id` (the list is in `followup_id` order): the last of the page before")] = None,
    min_seq: MinSeq = None,
    wait_ms: WaitMs = 5000,
    snapshot: Snapshot = None,
) -> list[FollowupView]:
    status = one_of("status", status, model.FOLLOWUP_STATUSES)
    check_limit(limit, 10000)
    moment = parse_time("as_of", as_of) or dt.datetime.now(dt.timezone.utc)
    await wait_applied(request, min_seq, wait_ms, snapshot)
    async with read_connection(request, snapshot) as conn:
        rows = await conn.fetch(model.LIST_FOLLOWUPS, ws, moment, status, contact, after, limit)
    return json_response([  # type: ignore[return-value]
        FollowupView(r["followup_id"], r["contact"], r["rule"], r["reason"], r["due_at"], r["status"],
                     CausedBy(r["caused_by_source"], r["caused_by_id"]))
        for r in rows
    ])


@get(
    "/v1/workspaces/{ws:str}/alerts",
    summary="Alerts for the seller (metric anomalies, goals at risk), newest first",
    security=docs.BEARER,
    responses=docs.READ_ERRORS,
    guards=[authorized("read")],
)
async def list_alerts(
    request: Request,
    ws: str,
    rule: AlertRuleFilter = None,
    limit: page_size(10000) = 1000,
    after: Annotated[str | None, Parameter(
        description="The alerts listed after this `alert_id` (older, or as old and after it in id order): the last of the page before")] = None,
    min_seq: MinSeq = None,
    wait_ms: WaitMs = 5000,
    snapshot: Snapshot = None,
) -> list[AlertView]:
    rule = one_of("rule", rule, ALERT_RULES)
    check_limit(limit, 10000)
    await wait_applied(request, min_seq, wait_ms, snapshot)
    async with read_connection(request, snapshot) as conn:
        # The list's order is by time, which an alert id does not carry: the page continues from where
        # that alert stands, so an id that is not among the workspace's alerts has no place to go on from.
        if after and await conn.fetchval(model.ALERT_EXISTS, ws, after) is None:
            raise ApiError(400, f"after: no alert {after!r} in this workspace")
        rows = await conn.fetch(model.LIST_ALERTS, ws, rule, limit, after or None)
    return json_response([  # type: ignore[return-value]
        AlertView(r["alert_id"], r["rule"], r["reason"], r["at"],
                  model.alert_cause(r["caused_by_source"], r["caused_by_id"]),
                  r["campaign_id"], r["goal_id"])
        for r in rows
    ])


# --- webhooks ---------------------------------------------------------------------------


class WebhookIn(msgspec.Struct):
    url: Annotated[str, msgspec.Meta(description="An http or https URL.")]
    max_attempts: Annotated[int, msgspec.Meta(description="{} to {}.".format(*webhooks.MAX_ATTEMPTS))] = 8
    backoff_seconds: Annotated[list[float], msgspec.Meta(
        description="Seconds before each retry, each {} to {}; at least one.".format(*webhooks.BACKOFF_SECONDS))] = msgspec.field(
        default_factory=lambda: [5, 30, 120, 600, 1800, 3600, 7200])
    timeout_seconds: Annotated[float, msgspec.Meta(description="{} to {}.".format(*webhooks.TIMEOUT_SECONDS))] = 10.0
    keep_secret: Annotated[bool, msgspec.Meta(
        description="Keep the signing secret of the webhook this replaces (then the answer has none), so that"
                    " receivers need no new one; by default every POST makes a new secret.")] = False


class WebhookOut(msgspec.Struct, omit_defaults=True):
    url: str
    max_attempts: int
    backoff_seconds: list[float]
    timeout_seconds: float
    signature_header: str = webhooks.SIGNATURE_HEADER
    secret: Annotated[str | None, msgspec.Meta(
        description="The signing secret: in the answer of the POST that made it only, once.")] = None
    deliveries: Annotated[dict[str, int] | None, msgspec.Meta(
        description="In a GET's answer: the workspace's follow-ups and alerts by the state of their delivery,"
                    " `delivered`, `failing` (a retry is due) or `parked` (`touchline deadletter list`).")] = None


@post(
    "/v1/workspaces/{ws:str}/webhooks",
    summary="Register the workspace's outbound webhook; answers its signing secret once",
    status_code=201,
    security=docs.BEARER,
    responses=docs.WORKSPACE_ERRORS,
    guards=[authorized("admin")],
)
async def create_webhook(request: Request, ws: str, data: WebhookIn) -> WebhookOut:
    try:
        parts = urlsplit(data.url)
    except ValueError:  # an unclosed [ of an IPv6 host, say
        parts = None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.netloc
            or any(ord(ch) < 0x20 or ch == "\x7f" for ch in data.url)):
        raise ApiError(400, f"url: expected an http(s) URL, got {data.url!r}")
    least, most = webhooks.MAX_ATTEMPTS
    if not least <= data.max_attempts <= most:
        raise ApiError(400, f"max_attempts: expected {least} to {most}")
    least, most = webhooks.BACKOFF_SECONDS
    if not data.backoff_seconds or any(not least <= step <= most for step in data.backoff_seconds):
        raise ApiError(400, f"backoff_seconds: expected a non-empty list of {least} to {most}")
    least, most = webhooks.TIMEOUT_SECONDS
    if not least <= data.timeout_seconds <= most:
        raise ApiError(400, f"timeout_seconds: expected {least} to {most}")
    hook, new_secret = await webhooks.configure(
        services_of(request).pool, ws, data.url, max_attempts=data.max_attempts,
        backoff_seconds=list(data.backoff_seconds), timeout_seconds=data.timeout_seconds, keep_secret=data.keep_secret)
    return json_response(WebhookOut(hook.url, hook.max_attempts, list(hook.backoff_seconds), hook.timeout_seconds,  # type: ignore[return-value]
                                    secret=hook.secret if new_secret else None), 201)


@get(
    "/v1/workspaces/{ws:str}/webhooks",
    summary="The workspace's outbound webhook (without its secret)",
    security=docs.BEARER,
    responses=docs.errors(400, 401, 403, 404, 503, said={404: "Unknown workspace, or no webhook configured."}),
    guards=[authorized("admin")],
)
async def get_webhook(request: Request, ws: str, min_seq: MinSeq = None, wait_ms: WaitMs = 5000) -> WebhookOut:
    await wait_applied(request, min_seq, wait_ms)  # not a read model, but every read takes min_seq (section 4)
    hook = await webhooks.webhook_of(services_of(request).pool, ws)
    if hook is None:
        raise ApiError(404, "no webhook configured")
    deliveries = await webhooks.delivery_counts(services_of(request).pool, ws)
    return json_response(WebhookOut(hook.url, hook.max_attempts, list(hook.backoff_seconds), hook.timeout_seconds,  # type: ignore[return-value]
                                    deliveries=deliveries))


@delete(
    "/v1/workspaces/{ws:str}/webhooks",
    summary="Stop delivering to the workspace's webhook",
    status_code=204,
    security=docs.BEARER,
    responses=docs.WORKSPACE_ERRORS,
    guards=[authorized("admin")],
)
async def delete_webhook(request: Request, ws: str) -> None:
    await webhooks.remove(services_of(request).pool, ws)


# --- rule settings ----------------------------------------------------------------------


class RuleSettings(msgspec.Struct):
    disabled: Annotated[list[str], msgspec.Meta(description=f"Rules to turn off, of: {', '.join(ALL_RULES)}.")]


class RuleSettingsView(msgspec.Struct):
    rules: Annotated[list[str], msgspec.Meta(description="Every rule there is.")]
    disabled: Annotated[list[str], msgspec.Meta(description="Those turned off for this workspace.")]


@get(
    "/v1/workspaces/{ws:str}/rules",
    summary="The workspace's rule settings",
    security=docs.BEARER,
    responses=docs.WORKSPACE_ERRORS,
    guards=[authorized("read")],
)
async def get_rules(request: Request, ws: str, min_seq: MinSeq = None, wait_ms: WaitMs = 5000) -> RuleSettingsView:
    await wait_applied(request, min_seq, wait_ms)
    disabled = await services_of(request).pool.fetchval("SELECT disabled FROM rule_settings WHERE workspace = $1", ws)
    return json_response(RuleSettingsView(list(ALL_RULES), sorted(disabled or [])))  # type: ignore[return-value]


@put(
    "/v1/workspaces/{ws:str}/rules",
    summary="Turn rules off (or on again) for the workspace",
    security=docs.BEARER,
    responses=docs.WORKSPACE_ERRORS,
    guards=[authorized("admin")],
)
async def put_rules(request: Request, ws: str, data: RuleSettings) -> RuleSettingsView:
    unknown = sorted(set(data.disabled) - set(ALL_RULES))
    if unknown:
        raise ApiError(400, f"disabled: unknown rules {unknown}; expected some of {list(ALL_RULES)}")
    await services_of(request).pool.execute(
        "INSERT INTO rule_settings (workspace, disabled) VALUES ($1, $2)"
        " ON CONFLICT (workspace) DO UPDATE SET disabled = excluded.disabled, updated_at = now()",
        ws,
        sorted(set(data.disabled)),
    )
    return json_response(RuleSettingsView(list(ALL_RULES), sorted(set(data.disabled))))  # type: ignore[return-value]


ROUTES = [list_followups, list_alerts, create_webhook, get_webhook, delete_webhook, get_rules, put_rules]
