"""What each event means for the funnel (CONTRACT.md section 5): stages, touches, ordering.

Shared by every read model so that "stage", "touch" and "earliest" mean one thing.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from events import catalog as c
from events.catalog import Envelope

STAGES: tuple[str, ...] = ("aware", "interested", "lead", "qualified", "opportunity", "customer")
STAGE_RANK = {stage: rank for rank, stage in enumerate(STAGES)}

AWARE_ACTIONS = frozenset({"view", "open", "visit"})
INTEREST_ACTIONS = frozenset({"like", "comment", "share", "click", "reply"})

TouchKind = Literal["marketing", "sales"]

# (time, source, id): the contract's order of events; "earliest" and "latest" use it.
OrderKey = tuple[dt.datetime, str, str]


def order_key(event: Envelope) -> OrderKey:
    return (event.time, event.source, event.id)


def implied_stage(event: Envelope) -> str | None:
    """The stage an event implies, or None."""
    if isinstance(event, c.Engaged):
        return "aware" if event.data.action in AWARE_ACTIONS else "interested"
    if isinstance(event, (c.LeadCaptured, c.ConversationHeld)):
        return "lead"
    if isinstance(event, c.LeadQualified):
        return "qualified"
    if isinstance(event, c.OfferMade):
        return "opportunity"
    if isinstance(event, c.DealWon):
        return "customer"
    return None


def touch_kind(event: Envelope) -> TouchKind | None:
    if isinstance(event, (c.Engaged, c.LeadCaptured)):
        return "marketing"
    if isinstance(event, (c.OutreachSent, c.ConversationHeld, c.OfferMade)):
        return "sales"
    return None


def touch_channel(event: Envelope) -> str:
    """Every touch type carries a channel (an offer's defaults to "direct")."""
    return event.data.channel


# The events that decide a contact's status, and what each decides.
STATUS_OF: dict[type, str] = {
    c.LeadQualified: "open",
    c.OfferMade: "open",
    c.DealWon: "won",
    c.DealLost: "lost",
    c.LeadDisqualified: "disqualified",
}


def utc(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.timezone.utc)
