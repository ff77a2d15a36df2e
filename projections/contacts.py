"""The contact read model: where each contact stands (CONTRACT.md sections 4 and 5).

``apply`` folds one event into a contact's state. Every part of the state is an
order-independent summary (earliest/latest by the contract's order key, sums, sets), so
any arrival order of the same set of events gives the same state. ``render`` turns a state
into the public view. ``ContactsProjection`` stores states in PostgreSQL, one batch per
transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from decimal import Decimal

import asyncpg
import msgspec

from events import catalog as c
from events.catalog import Envelope
from events.log import LoggedEvent
from projections import deals as deal_model
from projections import followups
from projections.batching import prepared
from projections.ladder import (
    CONSENT_OF, STAGE_RANK, STAGES, STATUS_OF, ContactStatus, Decision, Ordered, Stage, decided_by, implied_stage,
    keep_earliest, pick,
    touch_channel, touch_kind, utc,
)
from projections.numbers import EXACT


class WonDeal(Ordered):
    amount: Decimal
    currency: str


class ContactState(msgspec.Struct, omit_defaults=True):
    reached: dict[str, dt.datetime] = msgspec.field(default_factory=dict)
    status: Decision | None = None
    consent: Decision | None = None
    marketing: int = 0
    sales: int = 0
    by_channel: dict[str, int] = msgspec.field(default_factory=dict)
    first_touch_at: dt.datetime | None = None
    last_touch_at: dt.datetime | None = None
    # Touch times at or before reached[customer] (all of them before conversion). reached
    # only moves earlier, so a touch after it can never count again and is not kept.
    touch_times: list[dt.datetime] = msgspec.field(default_factory=list)
    deals: dict[str, WonDeal] = msgspec.field(default_factory=dict)
    refunds: dict[str, Decimal] = msgspec.field(default_factory=dict)
    # The earliest marketing touch that names a campaign: the funnel's campaign filter.
    first_campaign: Decision | None = None

    @property
    def stage(self) -> str | None:
        return max(self.reached, key=STAGE_RANK.__getitem__) if self.reached else None

    @property
    def touches_before_conversion(self) -> int | None:
        converted = self.reached.get("customer")
        if converted is None:
            return None
        return sum(1 for moment in self.touch_times if moment <= converted)


def apply(state: ContactState, event: Envelope) -> ContactState:
    """Fold one contact event into the contact's state (in place; returns it)."""
    moment = utc(event.time)
    stage = implied_stage(event)
    if stage is not None:
        for lower in STAGES[: STAGE_RANK[stage] + 1]:
            known = state.reached.get(lower)
            if known is None or moment < known:
                state.reached[lower] = moment
        if stage == "customer":
            state.touch_times = [t for t in state.touch_times if t <= state.reached["customer"]]

    kind = touch_kind(event)
    if kind is not None:
        if kind == "marketing":
            state.marketing += 1
            campaign = getattr(event.data, "campaign_id", None)
            if campaign is not None:
                state.first_campaign = pick(state.first_campaign, decided_by(event, campaign), latest=False)
        else:
            state.sales += 1
        channel = touch_channel(event)
        state.by_channel[channel] = state.by_channel.get(channel, 0) + 1
        if state.first_touch_at is None or moment < state.first_touch_at:
            state.first_touch_at = moment
        if state.last_touch_at is None or moment > state.last_touch_at:
            state.last_touch_at = moment
        converted = state.reached.get("customer")
        if converted is None or moment <= converted:
            state.touch_times.append(moment)

    status = STATUS_OF.get(type(event))
    if status is not None:
        state.status = pick(state.status, decided_by(event, status), latest=True)
    consent = CONSENT_OF.get(type(event))
    if consent is not None:
        state.consent = pick(state.consent, decided_by(event, consent), latest=True)
    if isinstance(event, c.DealWon):
        keep_earliest(state.deals, event.data.deal_id,
                      WonDeal(moment, event.source, event.id, event.data.amount, event.data.currency))
    if isinstance(event, c.DealRefunded):
        currency = event.data.currency
        state.refunds[currency] = EXACT.add(state.refunds.get(currency, Decimal(0)), event.data.amount)
    return state


def merge(state: ContactState, other: ContactState) -> ContactState:
    """Fold into ``state`` (in place; returns it) every event ``other`` summarises: the same state as
    applying those events to ``state`` one by one, since every part is a sum, a minimum, a maximum
    or an earliest/latest pick."""
    for stage, moment in other.reached.items():
        known = state.reached.get(stage)
        if known is None or moment < known:
            state.reached[stage] = moment
    state.status = pick(state.status, other.status, latest=True)
    state.consent = pick(state.consent, other.consent, latest=True)
    state.first_campaign = pick(state.first_campaign, other.first_campaign, latest=False)
    state.marketing += other.marketing
    state.sales += other.sales
    for channel, n in other.by_channel.items():
        state.by_channel[channel] = state.by_channel.get(channel, 0) + n
    if other.first_touch_at is not None and (state.first_touch_at is None or other.first_touch_at < state.first_touch_at):
        state.first_touch_at = other.first_touch_at
    if other.last_touch_at is not None and (state.last_touch_at is None or other.last_touch_at > state.last_touch_at):
        state.last_touch_at = other.last_touch_at
    converted = state.reached.get("customer")
    times = state.touch_times + other.touch_times
    state.touch_times = times if converted is None else [t for t in times if t <= converted]
    for deal_id, won in other.deals.items():
        keep_earliest(state.deals, deal_id, won)
    for currency, refunded in other.refunds.items():
        state.refunds[currency] = EXACT.add(state.refunds.get(currency, Decimal(0)), refunded)
    return state


def revenue(state: ContactState, won_elsewhere: Collection[str] = ()) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for deal_id, deal in state.deals.items():
        if deal_id not in won_elsewhere:
            totals[deal.currency] = EXACT.add(totals.get(deal.currency, Decimal(0)), deal.amount)
    for currency, refunded in state.refunds.items():
        totals[currency] = EXACT.subtract(totals.get(currency, Decimal(0)), refunded)
    return dict(sorted(totals.items()))


def decimal_text(value: Decimal) -> str:
    """Decimals go out as plain strings, never in exponent form."""
    text = format(value, "f")
    return "0" if text in ("-0", "") else text


class Touches(msgspec.Struct):
    marketing: int
    sales: int
    total: int
    by_channel: dict[str, int]


class ContactView(msgspec.Struct):
    contact: str
    stage: Stage | None
    status: ContactStatus
    reached: dict[Stage, dt.datetime]
    touches: Touches
    touches_before_conversion: int | None
    first_touch_at: dt.datetime | None
    last_touch_at: dt.datetime | None
    deals_won: int
    revenue: dict[str, str]
    do_not_contact: bool
    open_followups: int


def render(contact: str, state: ContactState, open_followups: int = 0, won_elsewhere: Collection[str] = ()) -> ContactView:
    """The public view. ``won_elsewhere``: deal ids the contact reported won that another contact of
    the workspace won earlier; a deal_id is one deal in a workspace (CONTRACT.md section 5, "Deals",
    as goals and attribution count it), so they are not this contact's deals nor its revenue. The
    state keeps every deal the contact reported, as the contact's own events are all it folds."""
    return ContactView(
        contact=contact,
        stage=state.stage,
        status=state.status.value if state.status else "open",
        reached={stage: state.reached[stage] for stage in STAGES if stage in state.reached},
        touches=Touches(state.marketing, state.sales, state.marketing + state.sales, dict(sorted(state.by_channel.items()))),
        touches_before_conversion=state.touches_before_conversion,
        first_touch_at=state.first_touch_at,
        last_touch_at=state.last_touch_at,
        deals_won=sum(1 for deal_id in state.deals if deal_id not in won_elsewhere),
        revenue={currency: decimal_text(amount) for currency, amount in revenue(state, won_elsewhere).items()},
        do_not_contact=state.consent is not None and state.consent.value == "out",
        open_followups=open_followups,
    )


# A column of a query over ``contacts c``: the deal ids of the contact's state that the workspace's
# deals table (projections/deals.py) gives to another contact; null for nearly every contact.
# (The CASE spares the subquery its cost on the contacts without deals: the read's hot path.)
WON_ELSEWHERE = """CASE WHEN c.state ? 'deals' THEN (SELECT array_agg(d.deal_id) FROM deals d
    WHERE d.workspace = c.workspace AND d.deal_id IN (SELECT jsonb_object_keys(c.state -> 'deals'))
    AND d.contact <> c.contact) END AS won_elsewhere"""

_VIEW = f"""
SELECT c.state, (SELECT count(*) {followups.OPEN_OF_CONTACT.format(contact="= $3")}) AS open_followups, {WON_ELSEWHERE}
FROM contacts c WHERE c.workspace = $1 AND c.contact = $3
"""


async def query(conn: asyncpg.Connection, workspace: str, contact: str) -> ContactView | None:
    """One contact's view (None: no such contact), in one round trip (the contact read's hot path)."""
    row = await conn.fetchrow(_VIEW, workspace, dt.datetime.now(dt.timezone.utc), contact)
    if row is None:
        return None
    return render(contact, decode_state(row["state"]), row["open_followups"], row["won_elsewhere"] or ())


def fold(events: list[Envelope]) -> dict[str, ContactState]:
    """Every contact's state from a set of (already de-duplicated) events."""
    states: dict[str, ContactState] = {}
    for event in events:
        if event.contact_event and event.subject is not None:
            apply(states.setdefault(event.subject, ContactState()), event)
    return states


def views(events: list[Envelope]) -> dict[str, ContactView]:
    """Every contact's view from a set of (already de-duplicated) events; the test oracle."""
    winners = {deal_id: deal.contact for deal_id, deal in deal_model.fold(events)[0].items()}
    return {contact: render(contact, state, won_elsewhere=[d for d in state.deals if winners[d] != contact])
            for contact, state in fold(events).items()}


# --- storage ---------------------------------------------------------------------------

encode_state = msgspec.json.Encoder(decimal_format="string").encode
decode_state = msgspec.json.Decoder(ContactState).decode

_REACHED_COLUMNS = ", ".join(f"reached_{stage}" for stage in STAGES)

_UPSERT = f"""
INSERT INTO contacts (workspace, contact, stage, status, touches_before_conversion, state, {_REACHED_COLUMNS},
                      first_campaign)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::jsonb[],
                     $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[],
                     $11::timestamptz[], $12::timestamptz[], $13::text[])
ON CONFLICT (workspace, contact) DO UPDATE SET
    stage = excluded.stage, status = excluded.status,
    touches_before_conversion = excluded.touches_before_conversion, state = excluded.state,
    first_campaign = excluded.first_campaign,
    {", ".join(f"reached_{stage} = excluded.reached_{stage}" for stage in STAGES)}
"""


class ContactsProjection:
    """Stores contact states: fold the batch per contact (``prepare``, no I/O), then load the batch's
    contacts, merge, write back, in the caller's transaction."""

    name = "contacts"
    tables = ("contacts", "funnel_gaps")  # funnel_gaps: the funnel's counters (projections/funnel.py)
    before_lock = False  # merges into the states the batch before wrote

    def prepare(self, batch: list[LoggedEvent]) -> dict[tuple[str, str], ContactState]:
        """Each contact's state from this batch's events alone."""
        deltas: dict[tuple[str, str], ContactState] = {}
        for logged in batch:
            event = logged.event
            if event.contact_event:
                key = (logged.workspace, event.subject)
                state = deltas.get(key)
                if state is None:
                    state = deltas[key] = ContactState()
                apply(state, event)
        return deltas

    async def apply(self, conn: asyncpg.Connection, batch: list[LoggedEvent]) -> None:
        deltas: dict[tuple[str, str], ContactState] = prepared(self, batch)
        if not deltas:
            return
        workspaces, contacts = zip(*deltas)
        rows = await conn.fetch(
            "SELECT workspace, contact, state FROM contacts"
            " WHERE (workspace, contact) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            workspaces,
            contacts,
        )
        states = {(row["workspace"], row["contact"]): decode_state(row["state"]) for row in rows}
        columns: list[list] = [[] for _ in range(13)]
        reached: list[tuple[str, dict, dict]] = []  # (workspace, before, after): the funnel's counters
        for (workspace, contact), delta in deltas.items():
            known = states.get((workspace, contact))
            reached_before = {} if known is None else dict(known.reached)
            # A prepared delta is not changed: merging goes into the state read back.
            state = delta if known is None else merge(known, delta)
            reached.append((workspace, reached_before, state.reached))
            values = (
                workspace,
                contact,
                state.stage,
                state.status.value if state.status else "open",
                state.touches_before_conversion,
                encode_state(state).decode(),
                *(state.reached.get(stage) for stage in STAGES),
                state.first_campaign.value if state.first_campaign else None,
            )
            for column, value in zip(columns, values):
                column.append(value)
        await conn.execute(_UPSERT, *columns)
        from projections import funnel  # funnel imports this module

        await funnel.store_stage_changes(conn, reached)
