"""What each event means for the funnel (CONTRACT.md section 5): stages, touches, ordering.

Shared by every read model so that "stage", "touch" and "earliest" mean one thing.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, Protocol, TypeVar, get_args

import msgspec

from events import catalog as c
from events.catalog import Envelope

Stage = Literal["aware", "interested", "lead", "qualified", "opportunity", "customer"]
STAGES: tuple[str, ...] = get_args(Stage)
STAGE_RANK = {stage: rank for rank, stage in enumerate(STAGES)}

# An engagement of any other action (like, comment, share, click, reply) implies "interested".
AWARE_ACTIONS = frozenset({"view", "open", "visit"})

TouchKind = Literal["marketing", "sales"]

# (time, source, id): the contract's order of events, by which "earliest" and "latest" are
# decided; each kept moment (a contact's decision, a deal, a goal) has a ``key`` of this form.
OrderKey = tuple[dt.datetime, str, str]


class Ordered(msgspec.Struct, array_like=True):
    """Something kept because of the event that decided it: that event's place in the order.

    Subclasses add their fields after these three; states that store them (the contact read
    model, the rules worker's) are encoded as arrays in that order.
    """

    time: dt.datetime
    source: str
    id: str

    @property
    def key(self) -> OrderKey:
        return (self.time, self.source, self.id)


class Decision(Ordered):
    """A value decided by the earliest or the latest of some events (a status, consent, a
    campaign), or only the latest event's moment (``value`` empty)."""

    value: str = ""


def decided_by(event: Envelope, value: str = "") -> Decision:
    return Decision(utc(event.time), event.source, event.id, value)


class _HasKey(Protocol):
    @property
    def key(self) -> OrderKey: ...


Kept = TypeVar("Kept", bound=_HasKey)


def pick(current: Kept | None, candidate: Kept | None, *, latest: bool) -> Kept | None:
    """Of two moments with an order ``key`` (either may be None), the later or the earlier one;
    the one already kept on a tie (the same event)."""
    if current is None or candidate is None:
        return candidate if current is None else current
    if latest:
        return candidate if candidate.key > current.key else current
    return candidate if candidate.key < current.key else current


def keep_latest(kept: dict[Any, Kept], name: Any, candidate: Kept) -> None:
    """``kept[name]`` becomes ``candidate`` if there is none yet or it is later (a goal's latest setting)."""
    kept[name] = pick(kept.get(name), candidate, latest=True)


def keep_earliest(kept: dict[Any, Kept], name: Any, candidate: Kept) -> None:
    """``kept[name]`` becomes ``candidate`` if there is none yet or it is earlier (a deal's first win)."""
    kept[name] = pick(kept.get(name), candidate, latest=False)


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
# The events that decide a contact's consent, the latest of them: "out" is do not contact.
CONSENT_OF: dict[type, str] = {c.OptedOut: "out", c.OptedIn: "in"}
# Every status a contact can have ("open" also with none of those events).
ContactStatus = Literal["open", "won", "lost", "disqualified"]
CONTACT_STATUSES: tuple[str, ...] = get_args(ContactStatus)


_UTC = dt.timezone.utc


def utc(moment: dt.datetime) -> dt.datetime:
    # msgspec decodes a zero offset ("Z", "+00:00") to timezone.utc itself: most times are already UTC.
    return moment if moment.tzinfo is _UTC else moment.astimezone(_UTC)
