"""The follow-up and alert rules of CONTRACT.md section 6, as pure decisions (no I/O).

The rules worker applies the log in log order. For each event it calls ``decide(state, logged)``,
which updates the decision state (per contact and per workspace) in place and returns what to do:
commands for the work queue and timers to schedule. A fired timer goes through ``decide_timer``.
The worker stores the state and its log position in one transaction; everything here is a plain
function of (state, event, now, settings), so it is tested table-driven without servers.

Unlike the read models, the rules decide "with what they have applied so far" (log order): a
follow-up they emitted counts as open from that moment; post-sale fires on the first deal.won of a
deal in log order. The goal facts follow each deal's earliest report (by time, source, id) among
those applied, as the deals read model does: a report that is earlier in time moves the deal.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Iterable
from decimal import Context, Decimal, DivisionByZero, InvalidOperation, Overflow
from fractions import Fraction

import msgspec

from events import catalog as c
from events.commands import (
    FOLLOWUP_RULES,
    RULES_SOURCE,
    RaiseAlert,
    RequestFollowup,
    alert_id,
    command_id,
    followup_id,
    timer_id,
)
from events.log import LoggedEvent
from projections import goals as goal_model
from projections.deals import Deal, won_deal
from projections.ladder import (
    CONSENT_OF, STAGE_RANK, Decision, Ordered, decided_by, implied_stage, keep_earliest, keep_latest, pick, touch_kind,
    utc,
)
from projections.numbers import EXACT, exact_decimal, scale_of

RECENT_SALES = dt.timedelta(days=7)
RESPOND_WITHIN = dt.timedelta(hours=24)
POST_SALE_DUE = dt.timedelta(days=7)
STALLED_AFTER = dt.timedelta(days=7)
ONE_MICROSECOND = dt.timedelta(microseconds=1)  # times keep microseconds: the next moment after one
WARM_TOUCHES = 5
ANOMALY_MIN_REPORTS = 3
ANOMALY_FACTOR = 3
GOAL_MIN_ELAPSED = Fraction(1, 4)
GOAL_RISK_SHARE = Fraction(4, 5)
# An event received longer ago than this is history being caught up (`touchline rules reset`, a
# worker back after a stop): a goal is judged by what the log held then but at today's share of
# its period, which said "at risk: 0 of 10" of goals on track today (an outside audit). Such
# checks wait until the worker has caught up (``Effects.goals_deferred``).
LIVE_WINDOW = dt.timedelta(minutes=5)

# The stages whose contact counts feed a revenue goal's derived numbers.
COUNTED_STAGES = ("lead", "opportunity", "customer")

VERBS = {"like": "liked", "comment": "commented on", "share": "shared", "click": "clicked", "reply": "replied to"}


# --- state -------------------------------------------------------------------------------


class Offer(Ordered):
    deal_id: str
    amount: Decimal
    currency: str


class ContactRules(msgspec.Struct, omit_defaults=True):
    consent: Decision | None = None
    sales_times: list[dt.datetime] = msgspec.field(default_factory=list)
    # Marketing touches applied since the last applied sales touch (log order).
    marketing_since_sales: int = 0
    # Open follow-ups: id -> trigger time (a sales touch at or after it closes the follow-up).
    open: dict[str, dt.datetime] = msgspec.field(default_factory=dict)
    # Follow-ups about this contact dismissed so far: never open again, whatever comes after in
    # the log (the follow-up's own followup.requested, recorded after the dismissal, included).
    dismissed: list[str] = msgspec.field(default_factory=list)
    # Deals this contact has a deal.won of (log order): post-sale fires on the first.
    won_deals: list[str] = msgspec.field(default_factory=list)
    lead_at: dt.datetime | None = None
    stages: list[str] = msgspec.field(default_factory=list)
    # The latest (by the contract's order) sales touch or deal outcome: what a stalled offer checks.
    latest_activity: Decision | None = None
    # Pending stalled-offer timers: timer id -> the offer.
    offers: dict[str, Offer] = msgspec.field(default_factory=dict)

    @property
    def do_not_contact(self) -> bool:
        return self.consent is not None and self.consent.value == "out"

    def dismiss(self, fid: str) -> None:
        """Closed, and never open again."""
        self.open.pop(fid, None)
        if fid not in self.dismissed:
            self.dismissed.append(fid)


class DayFacts(msgspec.Struct, omit_defaults=True):
    revenue: dict[str, Decimal] = msgspec.field(default_factory=dict)
    deals_won: int = 0
    leads: int = 0
    conversations: int = 0


class Goal(Ordered, array_like=False):
    metric: str
    target: Decimal
    period_start: dt.date
    period_end: dt.date
    currency: str | None = None


class MetricStats(msgspec.Struct, array_like=True):
    count: int = 0
    # Each value as the decimal it was written as (the shortest text its double reads back from),
    # summed exactly: 0.7 + 0.1 + 0.1 in binary floats is under 0.9, and 0.9 then "above 3x" their
    # mean of 0.3. (States from before this kept a float sum; it is read as the decimal it holds.)
    total: Decimal = Decimal(0)


class WorkspaceRules(msgspec.Struct, omit_defaults=True):
    days: dict[dt.date, DayFacts] = msgspec.field(default_factory=dict)
    # Per currency, over each deal's earliest applied report: avg_deal in a goal's reason.
    won_sum: dict[str, Decimal] = msgspec.field(default_factory=dict)
    won_count: dict[str, int] = msgspec.field(default_factory=dict)
    stage_counts: dict[str, int] = msgspec.field(default_factory=dict)
    goals: dict[str, Goal] = msgspec.field(default_factory=dict)
    # "campaign_id\x1fmetric" -> reports applied so far.
    metrics: dict[str, MetricStats] = msgspec.field(default_factory=dict)
    campaign_names: dict[str, str] = msgspec.field(default_factory=dict)
    # goal id -> the last UTC day a goal-at-risk alert was raised for it.
    goal_alerted: dict[str, dt.date] = msgspec.field(default_factory=dict)


@dataclass
class RulesState:
    """The part of the decision state a batch touches, keyed by (workspace, contact), workspace and
    (workspace, deal_id)."""

    contacts: dict[tuple[str, str], ContactRules] = field(default_factory=dict)
    workspaces: dict[str, WorkspaceRules] = field(default_factory=dict)
    # Each deal's earliest applied deal.won, the one the goal facts count. Deal ids are one
    # namespace per workspace, as in the deals read model. Stored apart from the workspace state
    # (``rules_deals``) so that a batch loads only the deals it reports.
    deals: dict[tuple[str, str], Deal] = field(default_factory=dict)
    # (workspace, followup_id) -> the contact it is about, noted when the worker emits it and when
    # it applies the log's followup.requested: for a dismissal that comes before the record, or
    # whose subject is another contact. Loaded for the batch's dismissals only (``rules_followups``),
    # with those contacts' states. "" for a follow-up dismissed before it was emitted.
    followup_contacts: dict[tuple[str, str], str] = field(default_factory=dict)
    # Whether this batch noted any of those "": then each event first claims its own.
    dismissed_unknown: bool = False

    def owned_by(self, workspace: str, fid: str, contact: str) -> None:
        """The follow-up is about this contact (emitted, or its followup.requested applied); one
        dismissed before that, earlier in the batch, stays dismissed."""
        if self.followup_contacts.get((workspace, fid)) == "":
            self.contact(workspace, contact).dismiss(fid)
        self.followup_contacts[(workspace, fid)] = contact

    def dismissed_before(self, found: Iterable[tuple[str, str, str]]) -> None:
        """These (workspace, followup_id, contact) were dismissed before they were emitted (by a
        dismissal filed under another contact, say): the contact knows it before its events are
        decided, so the follow-up never counts as open."""
        for workspace, fid, contact in found:
            self.contact(workspace, contact).dismiss(fid)

    def contact(self, workspace: str, contact: str) -> ContactRules:
        return self.contacts.setdefault((workspace, contact), ContactRules())

    def workspace(self, workspace: str) -> WorkspaceRules:
        return self.workspaces.setdefault(workspace, WorkspaceRules())


class Timer(msgspec.Struct, frozen=True):
    """Fire ``decide_timer`` for this contact at ``fire_at`` (a durable NATS message schedule)."""

    timer_id: str
    workspace: str
    contact: str
    fire_at: dt.datetime


@dataclass
class Effects:
    commands: list[RequestFollowup | RaiseAlert] = field(default_factory=list)
    timers: list[Timer] = field(default_factory=list)
    goals_deferred: bool = False  # a goal check left for when the worker has caught up (LIVE_WINDOW)

    def extend(self, other: "Effects") -> None:
        self.commands.extend(other.commands)
        self.timers.extend(other.timers)
        self.goals_deferred = self.goals_deferred or other.goals_deferred


@dataclass(frozen=True)
class RuleSwitches:
    """Which rules a workspace turned off (PUT /v1/workspaces/{ws}/rules, kept in rule_settings)."""

    disabled: frozenset[str] = frozenset()

    def enabled(self, rule: str) -> bool:
        return rule not in self.disabled


EVERY_RULE_ON = RuleSwitches()


# --- guards and commands -----------------------------------------------------------------


def may_follow_up(contact: ContactRules, t: dt.datetime, *, recent_sales: bool = True, open_ok: bool = False) -> bool:
    """The contract's guards: not do-not-contact, no open follow-up, no sales touch in [t - 7 days, t]."""
    if contact.do_not_contact:
        return False
    if contact.open and not open_ok:
        return False
    if recent_sales and any(t - RECENT_SALES <= moment <= t for moment in contact.sales_times):
        return False
    return True


def done_by_sales(contact: ContactRules, trigger_time: dt.datetime) -> bool:
    """A follow-up is done once the contact has a sales touch at or after its trigger's time."""
    return bool(contact.sales_times) and contact.sales_times[-1] >= trigger_time  # kept sorted


def _followup(
    workspace: str,
    subject: str,
    contact: ContactRules,
    rule: str,
    reason: str,
    *,
    trigger_time: dt.datetime,
    due_at: dt.datetime,
    source: str,
    trigger_id: str,
    now: dt.datetime,
) -> RequestFollowup:
    fid = followup_id(workspace, rule, source, trigger_id)
    # Open from the moment it is emitted, unless it is done already: a sales touch later in time
    # than the trigger can come earlier in the log (post-sale has no recent-sales guard, and a
    # backfilled engagement can be older than the last call).
    if fid not in contact.dismissed and not done_by_sales(contact, trigger_time):
        contact.open[fid] = trigger_time
    return RequestFollowup(
        command_id=command_id(workspace, rule, source, trigger_id),
        workspace=workspace,
        followup_id=fid,
        contact=subject,
        rule=rule,
        reason=reason,
        due_at=due_at,
        trigger_time=trigger_time,
        caused_by_source=source,
        caused_by_id=trigger_id,
        issued_at=now,
    )


def _alert(workspace: str, rule: str, reason: str, *, source: str, trigger_id: str, at: dt.datetime, now: dt.datetime,
           caused_by: tuple[str, str] | None, campaign_id: str | None = None, goal_id: str | None = None) -> RaiseAlert:
    return RaiseAlert(
        command_id=command_id(workspace, rule, source, trigger_id),
        workspace=workspace,
        alert_id=alert_id(workspace, rule, source, trigger_id),
        rule=rule,
        reason=reason,
        at=at,
        campaign_id=campaign_id,
        goal_id=goal_id,
        caused_by_source=caused_by[0] if caused_by else None,
        caused_by_id=caused_by[1] if caused_by else None,
        issued_at=now,
    )


def _campaign_words(ws: WorkspaceRules, campaign_id: str | None) -> str | None:
    if campaign_id is None:
        return None
    return repr(ws.campaign_names.get(campaign_id, campaign_id)).replace('"', "'")


def _ago(t: dt.datetime, due: dt.datetime, now: dt.datetime) -> str | None:
    """How long ago a trigger happened ("30 days ago") when it is judged only after its follow-up was
    due (a history loaded late), for a reason that says so; None while there is still time. ("reach
    out within 24 hours" of a click a month old: an outside audit.)"""
    if now < due:
        return None
    span = now - t
    return f"{span.days} days ago" if span.days >= 2 else f"{int(span.total_seconds() // 3600)} hours ago"


def _amount(value: Decimal) -> str:
    """An amount as a sentence says it: every digit, a whole one without its zero places ("5" for
    5.00). Not ``normalize()``, which rounds to 28 digits (an amount of 30 came out wrong: an
    outside audit)."""
    text = format(value, "f")
    whole, _, places = text.partition(".")
    return whole if not places.strip("0") else text


# --- the rules over logged events --------------------------------------------------------


def decide(
    state: RulesState,
    logged: LoggedEvent,
    *,
    now: dt.datetime,
    settings: RuleSwitches = EVERY_RULE_ON,
) -> Effects:
    """Apply one (first-copy) logged event to the decision state; return the commands and timers it causes."""
    return _owned(state, logged.workspace, _decide(state, logged, now=now, settings=settings))


def _owned(state: RulesState, workspace: str, effects: Effects) -> Effects:
    """Each follow-up emitted is about its contact from that moment: a dismissal that comes before
    the dispatcher has recorded it, even one filed under another contact, finds whose it is."""
    for command in effects.commands:
        if isinstance(command, RequestFollowup):
            state.owned_by(workspace, command.followup_id, command.contact)
    return effects


def _decide(state: RulesState, logged: LoggedEvent, *, now: dt.datetime, settings: RuleSwitches) -> Effects:
    event = logged.event
    ws_id = logged.workspace
    ws = state.workspace(ws_id)
    effects = Effects()
    t = utc(event.time)
    live = logged.received_at >= now - LIVE_WINDOW
    if not event.contact_event or event.subject is None:
        _workspace_event(ws_id, ws, event, t, effects, now, settings, live=live)
        return effects
    subject = event.subject
    contact = state.contact(ws_id, subject)
    if state.dismissed_unknown:
        _claim_dismissals(state, ws_id, subject, event)
    if _contact_bookkeeping(state, ws_id, contact, event, t):
        return effects
    changed_metrics = _goal_facts(ws, contact, event, t)
    changed_metrics |= _touch(ws_id, ws, subject, contact, event, t, effects, now, settings)
    changed_metrics |= _deal(state, ws_id, ws, subject, contact, event, t, effects, now, settings)
    if changed_metrics and settings.enabled("goal-at-risk"):
        affected = {gid for gid, goal in ws.goals.items() if goal.metric in changed_metrics}
        if affected:
            _check_goals_if_live(ws_id, ws, event, now, effects, affected, live=live)
    return effects


def _check_goals_if_live(ws_id: str, ws: WorkspaceRules, event: c.Envelope, now: dt.datetime, effects: Effects,
                         goal_ids: set[str], *, live: bool) -> None:
    if live:
        effects.commands.extend(check_goals(ws_id, ws, now, caused_by=(event.source, event.id), only=goal_ids))
    else:
        effects.goals_deferred = True


def _workspace_event(ws_id: str, ws: WorkspaceRules, event: c.Envelope, t: dt.datetime, effects: Effects,
                     now: dt.datetime, settings: RuleSwitches, *, live: bool) -> None:
    """An event about the workspace, not a contact: campaigns' names, metrics, goals."""
    if isinstance(event, c.CampaignLaunched):
        if event.data.name:
            ws.campaign_names[event.data.campaign_id] = event.data.name
    elif isinstance(event, c.MetricsReported):
        if settings.enabled("metric-anomaly"):
            effects.commands.extend(_metric_anomaly(ws_id, ws, event, now))
        else:
            _count_metric(ws, event)
    elif isinstance(event, c.GoalSet):
        goal = Goal(t, event.source, event.id, event.data.metric, event.data.target, event.data.period_start,
                    event.data.period_end, event.data.currency)
        keep_latest(ws.goals, event.data.goal_id, goal)
        if settings.enabled("goal-at-risk"):
            _check_goals_if_live(ws_id, ws, event, now, effects, {event.data.goal_id}, live=live)


def _contact_bookkeeping(state: RulesState, ws_id: str, contact: ContactRules, event: c.Envelope, t: dt.datetime) -> bool:
    """Follow-ups made and dismissed, and consent: what the guards read. True if ``event`` was one."""
    subject = event.subject
    if isinstance(event, c.FollowupRequested):
        # Written by the dispatcher; when the rules run again from the start, this keeps what was
        # open then open now (a follow-up a timer caused is not re-derived at the same point).
        made(state, ws_id, subject, event.data.followup_id, utc(event.data.trigger_time or event.time))
        return True
    if isinstance(event, c.FollowupDismissed):
        # It names its follow-up by id, so it closes it whichever contact its subject is (the
        # followups read model marks it dismissed either way, and its contact then has one fewer),
        # for good: remembered by the follow-up's contact, or by the subject while that is unknown.
        fid = event.data.followup_id
        contact.open.pop(fid, None)
        owner = state.followup_contacts.get((ws_id, fid))
        about = state.contacts.get((ws_id, owner)) if owner else None
        if owner is None:
            # Not emitted yet, as far as this worker knows: noted as dismissed before anyone knew
            # whose it is (an empty contact), so that when it is emitted for a contact, whichever,
            # the worker finds the dismissal (``save_state``) and decides that batch again.
            state.followup_contacts[(ws_id, fid)] = ""
            state.dismissed_unknown = True
        (about or contact).dismiss(fid)
        return True
    consent = CONSENT_OF.get(type(event))
    if consent is not None:
        contact.consent = pick(contact.consent, decided_by(event, consent), latest=True)
        return True
    return False


def _goal_facts(ws: WorkspaceRules, contact: ContactRules, event: c.Envelope, t: dt.datetime) -> set[str]:
    """Leads (the earliest reached[lead]) and the stage counts a revenue goal's reason reads; the
    goal metrics that changed."""
    stage = implied_stage(event)
    if stage is None or STAGE_RANK[stage] < STAGE_RANK["lead"]:
        return set()
    changed = set()
    if contact.lead_at is None or t < contact.lead_at:
        if contact.lead_at is not None:
            _day(ws, contact.lead_at).leads -= 1
        _day(ws, t).leads += 1
        contact.lead_at = t
        changed.add("leads")
    for counted in COUNTED_STAGES:
        if STAGE_RANK[counted] <= STAGE_RANK[stage] and counted not in contact.stages:
            contact.stages.append(counted)
            ws.stage_counts[counted] = ws.stage_counts.get(counted, 0) + 1
    return changed


def _touch(ws_id: str, ws: WorkspaceRules, subject: str, contact: ContactRules, event: c.Envelope, t: dt.datetime,
           effects: Effects, now: dt.datetime, settings: RuleSwitches) -> set[str]:
    """A marketing touch's rules; a sales touch's effect on follow-ups, conversations and offers'
    timers. The goal metrics that changed."""
    kind = touch_kind(event)
    if kind == "marketing":
        contact.marketing_since_sales += 1
        effects.commands.extend(_marketing_rules(ws_id, ws, subject, contact, event, t, now, settings))
        return set()
    if kind != "sales":
        return set()
    contact.sales_times.append(t)
    contact.sales_times.sort()
    contact.marketing_since_sales = 0
    # A sales touch at or after a follow-up's trigger makes it done.
    for fid, trigger in list(contact.open.items()):
        if t >= trigger:
            del contact.open[fid]
    _note_activity(contact, event)
    if isinstance(event, c.OfferMade) and settings.enabled("stalled-offer"):
        tid = timer_id(ws_id, event.source, event.id)
        contact.offers[tid] = Offer(t, event.source, event.id, event.data.deal_id, event.data.amount,
                                    event.data.currency)
        effects.timers.append(Timer(tid, ws_id, subject, t + STALLED_AFTER))
    if isinstance(event, c.ConversationHeld):
        _day(ws, t).conversations += 1
        return {"conversations"}
    return set()


def _deal(state: RulesState, ws_id: str, ws: WorkspaceRules, subject: str, contact: ContactRules, event: c.Envelope,
          t: dt.datetime, effects: Effects, now: dt.datetime, settings: RuleSwitches) -> set[str]:
    """A deal's outcome: post-sale, the won deals and revenue the goals count. The goal metrics that changed."""
    if isinstance(event, c.DealLost):
        _note_activity(contact, event)
    elif isinstance(event, c.DealWon):
        _note_activity(contact, event)
        # The first deal.won of the deal in log order: deal ids are one namespace per workspace (as
        # in the deals read model), so a second contact's report of a won deal is not a new sale.
        first = (ws_id, event.data.deal_id) not in state.deals and event.data.deal_id not in contact.won_deals
        changed = {"revenue", "deals_won"} if _count_won(state, ws_id, ws, contact, event) else set()
        if event.data.deal_id not in contact.won_deals:
            contact.won_deals.append(event.data.deal_id)
        if first and settings.enabled("post-sale") and may_follow_up(contact, t, recent_sales=False, open_ok=True):
            ago = _ago(t, t + POST_SALE_DUE, now)
            reason = (
                f"{subject} bought (deal {event.data.deal_id}, {_amount(event.data.amount)} {event.data.currency})"
                + (f" {ago}: check in now" if ago else ": check in within 7 days")
                + " that all is well, and ask for a review or a referral"
            )
            effects.commands.append(_followup(ws_id, subject, contact, "post-sale", reason, trigger_time=t,
                                              due_at=t + POST_SALE_DUE, source=event.source, trigger_id=event.id,
                                              now=now))
        return changed
    elif isinstance(event, c.DealRefunded):
        day = _day(ws, t)
        day.revenue[event.data.currency] = EXACT.subtract(day.revenue.get(event.data.currency, Decimal(0)), event.data.amount)
        return {"revenue"}
    return set()


def made(state: RulesState, workspace: str, subject: str, fid: str, trigger_time: dt.datetime) -> None:
    """A follow-up made earlier (its followup.requested applied, or a stalled-offer timer's decision
    met again on a rerun): open from here on, unless done or dismissed already."""
    state.owned_by(workspace, fid, subject)
    contact = state.contact(workspace, subject)
    if fid not in contact.open and fid not in contact.dismissed and not done_by_sales(contact, trigger_time):
        contact.open[fid] = trigger_time


def _claim_dismissals(state: RulesState, ws_id: str, subject: str, event: c.Envelope) -> None:
    """A follow-up this event may emit that a dismissal earlier in the batch already named (under
    another contact, before it existed): its contact knows before the rules run, so the follow-up
    is never open in this state. (Across batches the worker does this: ``save_state``.) Written
    when a second rule of the same event could fire; since one event makes one follow-up at most,
    ``_owned`` dismissing it after the rules would do too (a review; kept, as the tested path)."""
    for rule in FOLLOWUP_RULES:
        fid = followup_id(ws_id, rule, event.source, event.id)
        if state.followup_contacts.get((ws_id, fid)) == "":
            state.dismissed_before([(ws_id, fid, subject)])


def _count_won(state: RulesState, ws_id: str, ws: WorkspaceRules, contact: ContactRules, event: c.Envelope) -> bool:
    """Keep the goal facts on the deal's earliest applied report; True if they changed.

    A report earlier (by time, source, id) than the one counted moves the deal: its old day and
    currency lose it, the new ones gain it. A deal the contact has won with no stored report was
    counted by a rules state from before reports were kept (``rules_deals``): its first report in
    log order stays counted (``touchline rules reset`` recounts it).
    """
    key = (ws_id, event.data.deal_id)
    known = state.deals.get(key)
    if known is None and event.data.deal_id in contact.won_deals:
        return False
    keep_earliest(state.deals, key, won_deal(event))
    kept = state.deals[key]
    if kept is known:
        return False
    if known is not None:
        _add_won_facts(ws, known, -1)
    _add_won_facts(ws, kept, 1)
    return True


def _add_won_facts(ws: WorkspaceRules, deal: Deal, sign: int) -> None:
    """Add (sign 1) or take back (sign -1) a won deal's part of the goal facts."""
    amount = deal.amount if sign > 0 else deal.amount.copy_negate()
    currency = deal.currency
    day = _day(ws, deal.won_at)
    day.revenue[currency] = EXACT.add(day.revenue.get(currency, Decimal(0)), amount)
    day.deals_won += sign
    ws.won_sum[currency] = EXACT.add(ws.won_sum.get(currency, Decimal(0)), amount)
    ws.won_count[currency] = ws.won_count.get(currency, 0) + sign
    if not ws.won_count[currency]:
        del ws.won_sum[currency], ws.won_count[currency]


def _note_activity(contact: ContactRules, event: c.Envelope) -> None:
    contact.latest_activity = pick(contact.latest_activity, decided_by(event), latest=True)


def _day(ws: WorkspaceRules, moment: dt.datetime) -> DayFacts:
    return ws.days.setdefault(utc(moment).date(), DayFacts())


def _marketing_rules(ws_id: str, ws: WorkspaceRules, subject: str, contact: ContactRules, event: c.Envelope,
                     t: dt.datetime, now: dt.datetime, settings: RuleSwitches) -> list[RequestFollowup]:
    """hot-engagement, new-lead and warm-unworked, in that order; the first that fires is the
    event's follow-up. (The others were kept off by the open follow-up it made, but one made
    already done, by a later sales touch applied before, is not open: a click then made a
    hot-engagement and a warm-unworked follow-up; an outside audit.)"""
    out: list[RequestFollowup] = []
    data = event.data
    campaign = _campaign_words(ws, getattr(data, "campaign_id", None))

    ago = _ago(t, t + RESPOND_WITHIN, now)
    reach_out, when = ("reach out now", f" {ago}") if ago else ("reach out within 24 hours", "")

    def fire(rule: str, reason: str) -> None:
        out.append(_followup(ws_id, subject, contact, rule, reason, trigger_time=t, due_at=t + RESPOND_WITHIN,
                             source=event.source, trigger_id=event.id, now=now))

    if isinstance(event, c.Engaged) and implied_stage(event) == "interested" and settings.enabled("hot-engagement"):
        if may_follow_up(contact, t):
            what = f"your post {campaign}" if campaign else "your content"
            fire("hot-engagement", f"{subject} {VERBS[data.action]} {what} on {data.channel}{when}: {reach_out}")
    if not out and isinstance(event, c.LeadCaptured) and settings.enabled("new-lead"):
        if may_follow_up(contact, t):
            how = f" through {campaign}" if campaign else ""
            method = f" ({data.method})" if data.method else ""
            fire("new-lead", f"{subject} became a lead on {data.channel}{how}{method}{when}: {reach_out}")
    if not out and contact.marketing_since_sales == WARM_TOUCHES and settings.enabled("warm-unworked"):
        if may_follow_up(contact, t):
            since = "since your last sales contact" if contact.sales_times else "and no one from sales has reached out yet"
            fire(
                "warm-unworked",
                f"{subject} has engaged with your marketing {WARM_TOUCHES} times {since}"
                f" (latest on {data.channel}{f', {ago}' if ago else ''}): {reach_out}",
            )
    return out


def decide_timer(state: RulesState, workspace: str, contact_id: str, tid: str, *, now: dt.datetime,
                 settings: RuleSwitches = EVERY_RULE_ON) -> Effects:
    """A stalled-offer timer fired: follow up unless a later sales touch or deal outcome came in.

    The offer is itself a sales touch at the trigger's time, so the usual "no sales touch in the
    last 7 days" guard is replaced by the rule's own condition; the do-not-contact and
    open-follow-up guards apply. The follow-up's trigger time is the microsecond after the offer:
    any sales touch later than the offer makes it done, as it would have kept the timer from
    firing had it been applied first. (It was offer time + 7 days: a history loaded in two
    requests, the offer in the first and the call two days later in the second, left a follow-up
    overdue for ever that one request never made. An outside audit found it.)
    """
    effects = Effects()
    contact = state.contact(workspace, contact_id)
    offer = contact.offers.pop(tid, None)
    if offer is None or not settings.enabled("stalled-offer"):
        return effects
    if contact.latest_activity is not None and contact.latest_activity.key > offer.key:
        return effects
    stale_at = offer.time + STALLED_AFTER
    if not may_follow_up(contact, stale_at, recent_sales=False):
        return effects
    # Days since the offer: 7 when the timer fires on time, more for an offer loaded late.
    days = max(STALLED_AFTER.days, (now - offer.time).days)
    reason = (
        f"Your offer to {contact_id} (deal {offer.deal_id}, {_amount(offer.amount)} {offer.currency}) has had no"
        f" answer for {days} days: follow up now"
    )
    effects.commands.append(_followup(workspace, contact_id, contact, "stalled-offer", reason,
                                      trigger_time=offer.time + ONE_MICROSECOND, due_at=stale_at,
                                      source=offer.source, trigger_id=offer.id, now=now))
    return _owned(state, workspace, effects)


# --- alerts ------------------------------------------------------------------------------


# Wide enough that no sum of doubles' decimals is ever rounded (their digits span under 700 places).
_METRICS = Context(prec=800, traps=[InvalidOperation, DivisionByZero, Overflow])


def metric_value(value: float) -> Decimal:
    return Decimal(repr(value))


def _count_metric(ws: WorkspaceRules, event: c.Envelope) -> MetricStats:
    key = f"{event.data.campaign_id}\x1f{event.data.metric}"
    stats = ws.metrics.setdefault(key, MetricStats())
    before = MetricStats(stats.count, stats.total)
    stats.count += 1
    stats.total = _METRICS.add(stats.total, metric_value(event.data.value))
    return before


def _metric_anomaly(ws_id: str, ws: WorkspaceRules, event: c.Envelope, now: dt.datetime) -> list[RaiseAlert]:
    before = _count_metric(ws, event)
    if before.count < ANOMALY_MIN_REPORTS:
        return []
    value = metric_value(event.data.value)
    exact = _METRICS.multiply(value, before.count)  # the value against the mean, times count
    # Exact too: as a float, the mean of reports that sum past the largest float was infinite.
    mean = _METRICS.divide(before.total, before.count)
    # All times count: 3 x the mean is three_totals, the value against a third of the mean is three_values.
    three_totals, three_values = _METRICS.multiply(ANOMALY_FACTOR, before.total), _METRICS.multiply(exact, ANOMALY_FACTOR)
    if before.total >= 0:
        above, below = exact > three_totals, three_values < before.total
    else:
        # A negative mean: the band runs from 3 times it up to a third of it. Read as written, every
        # report at the mean itself was "above 3 times" it (-10 > -30: an outside audit).
        above, below = three_values > before.total, exact < three_totals
    if above:
        direction = _times(float(_METRICS.divide(value, mean))) if mean > 0 else "far"
        words = f"{direction} above"
    elif below:
        words = "far below" if value <= 0 or mean <= 0 else f"{_times(float(_METRICS.divide(mean, value)))} below"
    else:
        return []
    campaign = _campaign_words(ws, event.data.campaign_id)
    reason = (
        f"{event.data.metric} of campaign {campaign} is {_number(value)}, {words} its mean of"
        f" {_number(mean)} over {before.count} reports: check what changed"
    )
    return [_alert(ws_id, "metric-anomaly", reason, source=event.source, trigger_id=event.id, at=utc(event.time),
                   now=now, caused_by=(event.source, event.id), campaign_id=event.data.campaign_id)]


def _number(value: Decimal) -> str:
    """A metric's value or mean as a seller reads it: grouped digits and at most two decimals, in
    powers of ten from a thousand trillion (1.7e+308 was a number of 309 digits)."""
    if abs(value) >= 10**15:
        return f"{float(value):.3g}"  # a mean is no larger than the largest report, a float
    if value == int(value):
        return f"{int(value):,}"
    if abs(value) < 0.01:  # two decimals would say 0
        return f"{value:.2g}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def _times(ratio: float) -> str:
    """How many times the mean, in words a seller reads at a glance (not 31 digits of a float)."""
    if ratio >= 1_000_000:
        return "over a million times"
    return f"{ratio:,.1f}x" if ratio < 1000 else f"{ratio:,.0f}x"


def goal_actual(ws: WorkspaceRules, goal: Goal) -> Decimal:
    """The goal's actual over [period_start, period_end), from the workspace's daily facts."""
    total = Decimal(0)
    for day, facts in ws.days.items():
        if goal.period_start <= day < goal.period_end:
            if goal.metric == "revenue":
                total = EXACT.add(total, facts.revenue.get(goal.currency or "", Decimal(0)))
            else:
                total += getattr(facts, goal.metric)
    return total


def check_goals(ws_id: str, ws: WorkspaceRules, now: dt.datetime, *, caused_by: tuple[str, str] | None,
                only: set[str] | None = None) -> list[RaiseAlert]:
    """goal-at-risk: at least a quarter of the period gone and projected under 80 % of target.

    At most once per goal per UTC day (the alert id includes the day). Only goals whose period is
    running are checked: once it is over there is nothing left to act on.
    """
    out: list[RaiseAlert] = []
    today = utc(now).date()
    for gid, goal in sorted(ws.goals.items()):
        if only is not None and gid not in only:
            continue
        if ws.goal_alerted.get(gid) == today:
            continue
        f = goal_model.elapsed_fraction(goal.period_start, goal.period_end, now)
        if f < GOAL_MIN_ELAPSED or f >= 1:
            continue
        actual = goal_actual(ws, goal)
        projected = Fraction(actual) / f  # as GET /goals computes it, exactly
        if projected >= GOAL_RISK_SHARE * Fraction(goal.target):
            continue
        ws.goal_alerted[gid] = today
        reason = goal_reason(ws, gid, goal, actual, projected, f)
        out.append(_alert(ws_id, "goal-at-risk", reason, source=RULES_SOURCE, trigger_id=f"goal:{gid}:{today.isoformat()}",
                          at=now, now=now, caused_by=caused_by, goal_id=gid))
    return out


def goal_reason(ws: WorkspaceRules, gid: str, goal: Goal, actual: Decimal, projected: Fraction, f: Fraction) -> str:
    unit = f" {goal.currency}" if goal.metric == "revenue" else ""
    remaining = goal_model.remaining(goal.target, actual)
    gap_places = max(scale_of(goal.target), scale_of(actual))  # the difference of the two, exactly
    text = (
        f"Goal {gid!r} ({goal.metric.replace('_', ' ')}) is at risk: {_amount(actual)}{unit} of"
        f" {_amount(goal.target)}{unit} with {round(f * 100)}% of the period gone, projected"
        f" {_amount(exact_decimal(round(projected, 2), 2))}{unit}. Gap: {_amount(exact_decimal(remaining, gap_places))}{unit}"
    )
    deals = opportunities = leads = None
    if goal.metric == "revenue":
        currency = goal.currency or ""
        deals = goal_model.deals_needed(
            remaining, goal_model.average_deal(ws.won_sum.get(currency, Decimal(0)), ws.won_count.get(currency, 0)))
    elif goal.metric == "deals_won":
        deals = math.ceil(remaining)
    elif goal.metric == "leads":
        leads = math.ceil(remaining)
    if deals is not None:
        opportunities, leads = goal_model.funnel_needed(
            deals, ws.stage_counts.get("lead", 0), ws.stage_counts.get("opportunity", 0), ws.stage_counts.get("customer", 0))
    needs = [f"{n} more {what}" for n, what in ((deals, "deals"), (opportunities, "opportunities"), (leads, "leads"))
             if n is not None]
    if goal.metric == "conversations":
        needs = [f"{math.ceil(remaining)} more conversations"]
    if goal.metric == "revenue" and deals is None:
        return text + f". The deals needed are not known until a deal in {goal.currency} is won."
    return text + (". About " + ", ".join(needs) + " needed" if needs else "") + "."


# --- storage codecs ----------------------------------------------------------------------

encode_state = msgspec.json.Encoder(decimal_format="string").encode
decode_contact = msgspec.json.Decoder(ContactRules).decode
decode_workspace = msgspec.json.Decoder(WorkspaceRules).decode
decode_deal = msgspec.json.Decoder(Deal).decode
