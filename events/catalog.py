"""The event catalog: one msgspec Struct per CloudEvent type (CONTRACT.md section 3).

Every event is the CloudEvents envelope plus a typed ``data`` object. The union of all
types is tagged by the CloudEvents ``type`` attribute with explicit tags, so renaming a
Python class never changes the wire. Schemas evolve only by adding fields with defaults.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Annotated, Literal, Union

import msgspec

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
# \Z, not $: msgspec searches with re, whose $ also matches before a final newline ("EUR\n"
# was a currency of its own). events/validation.py words these patterns in its errors.
CURRENCY_PATTERN = r"^[A-Z]{3}\Z"
JSON_CONTENT_TYPE_PATTERN = r"^(?i:application/json)[ \t]*(?:;.*)?\Z"
Currency = Annotated[str, msgspec.Meta(pattern=CURRENCY_PATTERN)]
AwareTime = Annotated[dt.datetime, msgspec.Meta(tz=True)]


def _require_amount(field: str, value: Decimal | None) -> None:
    if value is not None and (not value.is_finite() or value < 0):
        raise ValueError(f"{field}: expected a non-negative decimal, got {str(value)[:60]}")


class Data(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base of every ``data`` object; unknown fields are accepted and ignored."""


# --- marketing -------------------------------------------------------------------------


class CampaignLaunchedData(Data):
    campaign_id: Text
    channel: Text
    name: Annotated[str, msgspec.Meta(max_length=512)] | None = None
    kind: Text | None = None
    cost: Decimal | None = None
    currency: Currency | None = None

    def __post_init__(self) -> None:
        _require_amount("cost", self.cost)


class MetricsReportedData(Data):
    campaign_id: Text
    metric: Text
    value: float

    def __post_init__(self) -> None:
        if self.value != self.value or self.value in (float("inf"), float("-inf")):
            raise ValueError("value: expected a finite number")


EngagementAction = Literal["view", "open", "visit", "like", "comment", "share", "click", "reply"]


class EngagedData(Data):
    channel: Text
    action: EngagementAction
    campaign_id: Text | None = None


class LeadCapturedData(Data):
    channel: Text
    campaign_id: Text | None = None
    method: Text | None = None


# --- sales -----------------------------------------------------------------------------


class OutreachSentData(Data):
    channel: Text
    method: Text | None = None
    followup_id: Text | None = None


class ConversationHeldData(Data):
    channel: Text
    followup_id: Text | None = None


class LeadQualifiedData(Data):
    pass


class LeadDisqualifiedData(Data):
    reason: Annotated[str, msgspec.Meta(max_length=1024)] | None = None


class OfferMadeData(Data):
    deal_id: Text
    amount: Decimal
    currency: Currency
    # null, as serialisers write an unset optional field, is absent here as for every other.
    channel: Text | None = None

    def __post_init__(self) -> None:
        _require_amount("amount", self.amount)
        if self.channel is None:
            self.channel = "direct"


class DealWonData(Data):
    deal_id: Text
    amount: Decimal
    currency: Currency

    def __post_init__(self) -> None:
        _require_amount("amount", self.amount)


class DealLostData(Data):
    deal_id: Text
    reason: Annotated[str, msgspec.Meta(max_length=1024)] | None = None


class DealRefundedData(Data):
    deal_id: Text
    amount: Decimal
    currency: Currency

    def __post_init__(self) -> None:
        _require_amount("amount", self.amount)


class FollowupDismissedData(Data):
    followup_id: Text


class EmptyData(Data):
    pass


GoalMetric = Literal["revenue", "deals_won", "leads", "conversations"]


class GoalSetData(Data):
    goal_id: Text
    metric: GoalMetric
    target: Decimal
    period_start: dt.date
    period_end: dt.date
    currency: Currency | None = None

    def __post_init__(self) -> None:
        if not self.target.is_finite() or self.target <= 0:
            raise ValueError(f"target: expected a decimal greater than 0, got {str(self.target)[:60]}")
        if self.period_end <= self.period_start:
            raise ValueError("period_end: must be after period_start")
        if self.metric == "revenue" and self.currency is None:
            raise ValueError("currency: required when metric is revenue")


# --- written by Touchline itself -------------------------------------------------------


class FollowupRequestedData(Data):
    followup_id: Text
    rule: Text
    reason: str
    due_at: AwareTime
    caused_by_source: str
    caused_by_id: str
    # A sales touch at or after this time makes the follow-up done (absent: the event's time).
    trigger_time: AwareTime | None = None


class AlertRaisedData(Data):
    alert_id: Text
    rule: Text
    reason: str
    campaign_id: Text | None = None
    goal_id: Text | None = None
    caused_by_source: str | None = None
    caused_by_id: str | None = None


# --- the envelope ----------------------------------------------------------------------


class Envelope(msgspec.Struct, kw_only=True, tag_field="type", omit_defaults=True):
    """CloudEvents 1.0 attributes shared by every event."""

    specversion: Literal["1.0"]
    id: Text
    source: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    time: AwareTime
    subject: Text | None = None
    # application/json, with any parameters ("; charset=utf-8"), in any case, as media types are.
    datacontenttype: Annotated[str, msgspec.Meta(pattern=JSON_CONTENT_TYPE_PATTERN)] | None = None
    # Structured mode's other way to carry data, base64 text: refused (data is a JSON object).
    data_base64: None = None

    # Class-level facts about the type, set by the subclasses below.
    contact_event = True
    internal = False


def _event(tag: str, data_type: type[Data], *, contact: bool, internal: bool = False, default_data: bool = False):
    """Build the Struct of one event type: the envelope plus its typed ``data``."""
    fields = [("data", data_type, msgspec.field(default_factory=data_type))] if default_data else [("data", data_type)]
    cls = msgspec.defstruct(
        "".join(part.title() for part in tag.split(".")[1:]).replace("_", ""),
        fields,
        bases=(Envelope,),
        tag=tag,
        kw_only=True,
        module=__name__,
    )
    cls.contact_event = contact
    cls.internal = internal
    return cls


CampaignLaunched = _event("touchline.marketing.campaign.launched", CampaignLaunchedData, contact=False)
MetricsReported = _event("touchline.marketing.metrics.reported", MetricsReportedData, contact=False)
Engaged = _event("touchline.marketing.engaged", EngagedData, contact=True)
LeadCaptured = _event("touchline.marketing.lead.captured", LeadCapturedData, contact=True)
OutreachSent = _event("touchline.sales.outreach.sent", OutreachSentData, contact=True)
ConversationHeld = _event("touchline.sales.conversation.held", ConversationHeldData, contact=True)
LeadQualified = _event("touchline.sales.lead.qualified", LeadQualifiedData, contact=True, default_data=True)
LeadDisqualified = _event("touchline.sales.lead.disqualified", LeadDisqualifiedData, contact=True, default_data=True)
OfferMade = _event("touchline.sales.offer.made", OfferMadeData, contact=True)
DealWon = _event("touchline.sales.deal.won", DealWonData, contact=True)
DealLost = _event("touchline.sales.deal.lost", DealLostData, contact=True)
DealRefunded = _event("touchline.sales.deal.refunded", DealRefundedData, contact=True)
FollowupDismissed = _event("touchline.sales.followup.dismissed", FollowupDismissedData, contact=True)
OptedOut = _event("touchline.contact.opted_out", EmptyData, contact=True, default_data=True)
OptedIn = _event("touchline.contact.opted_in", EmptyData, contact=True, default_data=True)
GoalSet = _event("touchline.goal.set", GoalSetData, contact=False)
FollowupRequested = _event("touchline.followup.requested", FollowupRequestedData, contact=True, internal=True)
AlertRaised = _event("touchline.alert.raised", AlertRaisedData, contact=False, internal=True)

ALL_TYPES: tuple[type[Envelope], ...] = (
    CampaignLaunched,
    MetricsReported,
    Engaged,
    LeadCaptured,
    OutreachSent,
    ConversationHeld,
    LeadQualified,
    LeadDisqualified,
    OfferMade,
    DealWon,
    DealLost,
    DealRefunded,
    FollowupDismissed,
    OptedOut,
    OptedIn,
    GoalSet,
    FollowupRequested,
    AlertRaised,
)
TYPES_BY_NAME: dict[str, type[Envelope]] = {cls.__struct_config__.tag: cls for cls in ALL_TYPES}

AnyEvent = Union[ALL_TYPES]  # type: ignore[valid-type]

_decode_typed = msgspec.json.Decoder(AnyEvent).decode


class _TimeText(msgspec.Struct):
    time: str


_decode_time_text = msgspec.json.Decoder(_TimeText).decode
# What a time finer than microseconds looks like in the JSON: a false alarm only costs a closer look.
_FINER_THAN_MICROSECONDS = re.compile(rb"\.[0-9]{7}")
_MICROSECONDS_AND_FINER = re.compile(r"(\.[0-9]{6})[0-9]+")


def decode_event(raw: bytes) -> Envelope:
    """One event's JSON as its catalog type (msgspec's errors pass through).

    Times keep microseconds, and a finer time is cut to its microsecond, never rounded: msgspec
    rounds, and so moved 23:59:59.9999996 to midnight, past a period or a funnel bound it lies
    before (`period_end`, `to`, which are whole microseconds)."""
    event = _decode_typed(raw)
    # The search costs about a third of a microsecond an event (half of decoding it). Digits or a
    # point spelled as \u escapes (U+0030-U+0039, U+002E) slip past it, so their escapes send the
    # time to the closer look as well (an outside audit had 59.999999\u0039 rounded to the next
    # period); escapes of other characters are a false alarm, which costs only that look.
    if _FINER_THAN_MICROSECONDS.search(raw) or b"\\u003" in raw or b"\\u002" in raw:
        text = _decode_time_text(raw).time
        cut = _MICROSECONDS_AND_FINER.sub(r"\1", text, count=1)
        if cut != text:
            event = msgspec.structs.replace(event, time=msgspec.json.decode(msgspec.json.encode(cut), type=AwareTime))
    return event


def type_name(event: Envelope) -> str:
    return event.__struct_config__.tag
