"""Commands on the work queue (CONTRACT.md section 6): what the rules worker asks the dispatcher to do.

Imperative, unlike events. One msgspec tagged union, tagged by ``command`` with explicit tags so a
class rename never changes the wire. Ids are derived, never random: the same trigger always gives
the same command id (``Nats-Msg-Id`` on the queue) and the same follow-up or alert id (the logged
event's id, deduplicated for ever through ``event_index``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Literal, Union, get_args

import msgspec

COMMANDS_STREAM = "TOUCHLINE_COMMANDS"
COMMANDS_SUBJECTS = "touchline.cmd.>"
DEADLETTER_STREAM = "TOUCHLINE_DEADLETTER"
DEADLETTER_SUBJECTS = "touchline.deadletter.>"
TIMERS_STREAM = "TOUCHLINE_TIMERS"
TIMERS_SUBJECTS = "touchline.timer.>"
TIMERS_FIRED = "touchline.timer.fired.>"

# The source of every event the dispatcher writes to the log; ingest refuses it from outside.
RULES_SOURCE = "/touchline/rules"

# The rules of CONTRACT.md section 6, by the names their commands carry (``rule``).
FollowupRule = Literal["hot-engagement", "new-lead", "warm-unworked", "post-sale", "stalled-offer"]
AlertRule = Literal["metric-anomaly", "goal-at-risk"]
FOLLOWUP_RULES: tuple[str, ...] = get_args(FollowupRule)
ALERT_RULES: tuple[str, ...] = get_args(AlertRule)
ALL_RULES = FOLLOWUP_RULES + ALERT_RULES


def command_subject(workspace: str) -> str:
    return f"touchline.cmd.{workspace}"


def deadletter_subject(workspace: str) -> str:
    return f"touchline.deadletter.{workspace}"


def timer_subject(workspace: str, timer_id: str) -> str:
    """One subject per pending timer: a message schedule is keyed by its subject."""
    return f"touchline.timer.at.{workspace}.{timer_id}"


def timer_fired_subject(workspace: str) -> str:
    return f"touchline.timer.fired.{workspace}"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def followup_id(workspace: str, rule: str, source: str, trigger_id: str) -> str:
    return "fu_" + _digest(workspace, rule, source, trigger_id)[:32]


def alert_id(workspace: str, rule: str, source: str, trigger_id: str) -> str:
    return "al_" + _digest(workspace, rule, source, trigger_id)[:32]


def command_id(workspace: str, rule: str, source: str, trigger_id: str) -> str:
    return "cmd_" + _digest("command", workspace, rule, source, trigger_id)[:40]


def timer_id(workspace: str, source: str, trigger_id: str) -> str:
    return "tm_" + _digest("timer", workspace, source, trigger_id)[:32]


class RequestFollowup(msgspec.Struct, kw_only=True, tag_field="command", tag="touchline.cmd.request_followup"):
    """Record a follow-up about a contact in the log, then deliver it to the workspace's webhook."""

    command_id: str
    workspace: str
    followup_id: str
    contact: str
    rule: str
    reason: str
    due_at: dt.datetime
    # A sales touch at or after this time makes the follow-up done.
    trigger_time: dt.datetime
    caused_by_source: str
    caused_by_id: str
    issued_at: dt.datetime


class RaiseAlert(msgspec.Struct, kw_only=True, tag_field="command", tag="touchline.cmd.raise_alert"):
    """Record an alert for the seller (about a campaign or a goal), then deliver it."""

    command_id: str
    workspace: str
    alert_id: str
    rule: str
    reason: str
    at: dt.datetime
    campaign_id: str | None = None
    goal_id: str | None = None
    caused_by_source: str | None = None
    caused_by_id: str | None = None
    issued_at: dt.datetime


Command = Union[RequestFollowup, RaiseAlert]


class TimerFire(msgspec.Struct, kw_only=True):
    """The body of a stalled-offer timer: scheduled at offer time + 7 days, fired by NATS."""

    timer_id: str
    workspace: str
    contact: str
    fire_at: dt.datetime


encode_command = msgspec.json.Encoder(decimal_format="string").encode
decode_command = msgspec.json.Decoder(Command).decode
encode_timer = msgspec.json.Encoder().encode
decode_timer = msgspec.json.Decoder(TimerFire).decode
