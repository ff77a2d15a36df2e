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

# An engagement of any other action (like, comment, share, click, reply) implies "interested".
AWARE_ACTIONS = frozenset({"view", "open", "visit"})

TouchKind = Literal["marketing", "sales"]

# (time, source, id): the contract's order of events, by which "earliest" and "latest" are
# decided; each kept moment (a contact's decision, a deal, a goal) has a ``key`` of this form.
OrderKey = tuple[dt.datetime, str, str]


# Looked up by the event's exact type, once an event per read model: every catalog type is a
# direct subclass of Envelope that nothing subclasses, so this is isinstance, without its cost.
_STAGE_OF_TYPE: dict[type, str] = {
    c.LeadCaptured: "lead",
    c.ConversationHeld: "lead",
    c.LeadQualified: "qualified",
    c.OfferMade: "opportunity",
    c.DealWon: "customer",
}
_TOUCH_KIND_OF_TYPE: dict[type, TouchKind] = {
    c.Engaged: "marketing",
    c.LeadCaptured: "marketing",
    c.OutreachSent: "sales",
    c.ConversationHeld: "sales",
    c.OfferMade: "sales",
}


def implied_stage(event: Envelope) -> str | None:
    """The stage an event implies, or None."""
    if type(event) is c.Engaged:
        return "aware" if event.data.action in AWARE_ACTIONS else "interested"
    return _STAGE_OF_TYPE.get(type(event))


def touch_kind(event: Envelope) -> TouchKind | None:
    return _TOUCH_KIND_OF_TYPE.get(type(event))


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
# Every status a contact can have ("open" also with none of those events).
STATUSES: tuple[str, ...] = ("open", "won", "lost", "disqualified")


_UTC = dt.timezone.utc


def utc(moment: dt.datetime) -> dt.datetime:
    # msgspec decodes a zero offset ("Z", "+00:00") to timezone.utc itself: most times are already UTC.
    return moment if moment.tzinfo is _UTC else moment.astimezone(_UTC)
