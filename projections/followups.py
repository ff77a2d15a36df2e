"""The follow-up and alert read models (CONTRACT.md section 6), folded from the log.

Follow-ups and alerts enter the log as ``touchline.followup.requested`` / ``touchline.alert.raised``
(written by the dispatcher), so replay rebuilds both from the log alone and never emits a command.

A follow-up is ``dismissed`` once a ``followup.dismissed`` names it, else ``done`` once the contact
has a sales touch with time at or after the follow-up's trigger time, else ``open``; an open one
whose ``due_at`` is before ``as_of`` lists as ``overdue``. The stored summary is order-independent:
per follow-up the request's fields and a dismissed flag (OR), per contact the latest sales touch
time (max); the status is computed when read.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal, get_args

import asyncpg
import msgspec

from events import catalog as c
from events.commands import AlertRule, FollowupRule
from events.log import LoggedEvent
from projections.batching import prepared
from projections.ladder import touch_kind, utc

FollowupStatus = Literal["open", "overdue", "done", "dismissed"]
FOLLOWUP_STATUSES: tuple[str, ...] = get_args(FollowupStatus)


class Followup(msgspec.Struct, omit_defaults=True):
    contact: str
    requested: bool = False
    dismissed: bool = False
    rule: str | None = None
    reason: str | None = None
    due_at: dt.datetime | None = None
    trigger_time: dt.datetime | None = None
    caused_by_source: str | None = None
    caused_by_id: str | None = None


class Alert(msgspec.Struct):
    rule: str
    reason: str
    at: dt.datetime
    campaign_id: str | None
    goal_id: str | None
    caused_by_source: str | None
    caused_by_id: str | None


# --- the answers (GET /followups, /alerts, and the webhooks' bodies) -------------------------------


class CausedBy(msgspec.Struct):
    source: str | None
    id: str | None


class FollowupView(msgspec.Struct):
    followup_id: str
    contact: str
    rule: FollowupRule
    reason: str
    due_at: dt.datetime
    status: FollowupStatus
    caused_by: CausedBy


class AlertView(msgspec.Struct, omit_defaults=True):
    alert_id: str
    rule: AlertRule
    reason: str
    at: dt.datetime
    caused_by: CausedBy | None
    campaign_id: str | None = None
    goal_id: str | None = None


def alert_cause(source: str | None, id: str | None) -> CausedBy | None:
    """An alert's cause as the API lists it and a webhook carries it: none for an alert that no
    single event raised (a goal at risk, judged on a tick)."""
    return CausedBy(source, id) if id else None


class Summary(msgspec.Struct):
    followups: dict[tuple[str, str], Followup] = msgspec.field(default_factory=dict)
    last_sales: dict[tuple[str, str], dt.datetime] = msgspec.field(default_factory=dict)
    alerts: dict[tuple[str, str], Alert] = msgspec.field(default_factory=dict)


def apply(summary: Summary, workspace: str, event: c.Envelope) -> Summary:
    """Fold one event into the summary (in place); commutative and idempotent."""
    if isinstance(event, c.FollowupRequested):
        data = event.data
        row = summary.followups.setdefault((workspace, data.followup_id), Followup(event.subject))
        row.contact = event.subject
        row.requested = True
        row.rule, row.reason, row.due_at = data.rule, data.reason, utc(data.due_at)
        row.trigger_time = utc(data.trigger_time or event.time)
        row.caused_by_source, row.caused_by_id = data.caused_by_source, data.caused_by_id
    elif isinstance(event, c.FollowupDismissed):
        row = summary.followups.setdefault((workspace, event.data.followup_id), Followup(event.subject))
        row.dismissed = True
    elif isinstance(event, c.AlertRaised):
        data = event.data
        summary.alerts.setdefault(
            (workspace, data.alert_id),
            Alert(data.rule, data.reason, utc(event.time), data.campaign_id, data.goal_id, data.caused_by_source,
                  data.caused_by_id),
        )
    elif touch_kind(event) == "sales":
        key = (workspace, event.subject)
        moment = utc(event.time)
        if key not in summary.last_sales or moment > summary.last_sales[key]:
            summary.last_sales[key] = moment
    return summary


def status(row: Followup, last_sales_at: dt.datetime | None, as_of: dt.datetime) -> str:
    """A follow-up's status at ``as_of`` (CONTRACT.md section 6), the definition in code; the reads
    compute the same in SQL (``_STATUS_SQL``), so a change here changes no answer by itself."""
    if row.dismissed:
        return "dismissed"
    if last_sales_at is not None and row.trigger_time is not None and last_sales_at >= row.trigger_time:
        return "done"
    if row.due_at is not None and row.due_at < as_of:
        return "overdue"
    return "open"


# --- storage ---------------------------------------------------------------------------

_UPSERT_FOLLOWUPS = """
INSERT INTO followups AS f (workspace, followup_id, contact, requested, dismissed, rule, reason, due_at,
                            trigger_time, caused_by_source, caused_by_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::bool[], $6::text[], $7::text[],
                     $8::timestamptz[], $9::timestamptz[], $10::text[], $11::text[])
ON CONFLICT (workspace, followup_id) DO UPDATE SET
    requested = f.requested OR excluded.requested,
    dismissed = f.dismissed OR excluded.dismissed,
    contact = CASE WHEN excluded.requested THEN excluded.contact ELSE f.contact END,
    rule = coalesce(excluded.rule, f.rule),
    reason = coalesce(excluded.reason, f.reason),
    due_at = coalesce(excluded.due_at, f.due_at),
    trigger_time = coalesce(excluded.trigger_time, f.trigger_time),
    caused_by_source = coalesce(excluded.caused_by_source, f.caused_by_source),
    caused_by_id = coalesce(excluded.caused_by_id, f.caused_by_id)
"""

_UPSERT_SALES = """
INSERT INTO followup_sales AS s (workspace, contact, last_sales_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])
ON CONFLICT (workspace, contact) DO UPDATE SET last_sales_at = greatest(s.last_sales_at, excluded.last_sales_at)
"""

_INSERT_ALERTS = """
INSERT INTO alerts (workspace, alert_id, rule, reason, at, campaign_id, goal_id, caused_by_source, caused_by_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::text[],
                     $8::text[], $9::text[])
ON CONFLICT (workspace, alert_id) DO NOTHING
"""

_FOLLOWUP_FIELDS = ("contact", "requested", "dismissed", "rule", "reason", "due_at", "trigger_time",
                    "caused_by_source", "caused_by_id")
_ALERT_FIELDS = ("rule", "reason", "at", "campaign_id", "goal_id", "caused_by_source", "caused_by_id")


def _columns(rows: dict[tuple[str, str], msgspec.Struct], fields: tuple[str, ...]) -> list[list]:
    columns: list[list] = [[] for _ in range(2 + len(fields))]
    for (workspace, key), row in rows.items():
        for column, value in zip(columns, (workspace, key, *(getattr(row, name) for name in fields))):
            column.append(value)
    return columns


class FollowupsProjection:
    name = "followups"
    tables = ("followups", "followup_sales", "alerts")
    before_lock = False  # its upserts read what the batch before wrote

    def prepare(self, batch: list[LoggedEvent]) -> Summary:
        summary = Summary()
        for logged in batch:
            apply(summary, logged.workspace, logged.event)
        return summary

    async def apply(self, conn: asyncpg.Connection, batch: list[LoggedEvent]) -> None:
        summary = prepared(self, batch)
        if summary.followups:
            await conn.execute(_UPSERT_FOLLOWUPS, *_columns(summary.followups, _FOLLOWUP_FIELDS))
        if summary.last_sales:
            workspaces, contacts = zip(*summary.last_sales)
            await conn.execute(_UPSERT_SALES, workspaces, contacts, list(summary.last_sales.values()))
        if summary.alerts:
            await conn.execute(_INSERT_ALERTS, *_columns(summary.alerts, _ALERT_FIELDS))


# --- queries (unqualified table names: snapshots put their schema first) ---------------

_STATUS_SQL = """
CASE WHEN f.dismissed THEN 'dismissed'
     WHEN s.last_sales_at >= f.trigger_time THEN 'done'
     WHEN f.due_at < $2 THEN 'overdue'
     ELSE 'open' END
"""

LIST_FOLLOWUPS = f"""
SELECT * FROM (
    SELECT f.followup_id, f.contact, f.rule, f.reason, f.due_at, f.caused_by_source, f.caused_by_id,
           {_STATUS_SQL} AS status
    FROM followups f LEFT JOIN followup_sales s USING (workspace, contact)
    WHERE f.workspace = $1 AND f.requested AND ($4::text IS NULL OR f.contact = $4)
) listed
WHERE ($3::text IS NULL OR status = $3) AND ($5::text IS NULL OR followup_id > $5)
ORDER BY followup_id LIMIT $6
"""

# A contact's follow-ups that count as open (the contact view's ``open_followups``), $2 = now.
OPEN_OF_CONTACT = f"""
FROM followups f LEFT JOIN followup_sales s USING (workspace, contact)
WHERE f.workspace = $1 AND f.contact {{contact}} AND f.requested AND {_STATUS_SQL} IN ('open', 'overdue')
"""

COUNT_OPEN = f"""
SELECT f.contact, count(*) AS n {OPEN_OF_CONTACT.format(contact="= ANY($3::text[])")}
GROUP BY f.contact
"""

ALERT_EXISTS = "SELECT 1 FROM alerts WHERE workspace = $1 AND alert_id = $2"

# Newest first; $4, an alert id, lists those after it in that order (the API's `after`).
LIST_ALERTS = """
SELECT a.alert_id, a.rule, a.reason, a.at, a.campaign_id, a.goal_id, a.caused_by_source, a.caused_by_id
FROM alerts a LEFT JOIN alerts cursor ON cursor.workspace = $1 AND cursor.alert_id = $4
WHERE a.workspace = $1 AND ($2::text IS NULL OR a.rule = $2)
  AND ($4::text IS NULL OR a.at < cursor.at OR (a.at = cursor.at AND a.alert_id > cursor.alert_id))
ORDER BY a.at DESC, a.alert_id LIMIT $3
"""


async def open_counts(conn: asyncpg.Connection, workspace: str, contacts: list[str]) -> dict[str, int]:
    """Open plus overdue follow-ups per contact (the contact view's ``open_followups``)."""
    rows = await conn.fetch(COUNT_OPEN, workspace, dt.datetime.now(dt.timezone.utc), contacts)
    return {row["contact"]: row["n"] for row in rows}
