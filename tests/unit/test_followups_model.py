"""The follow-up read model's fold (order-independent) and the webhook signature scheme."""

from __future__ import annotations

import datetime as dt
import itertools

import msgspec

from events import catalog as c
from projections import followups as model
from services import webhooks

T0 = dt.datetime(2026, 11, 1, 10, tzinfo=dt.timezone.utc)
H = dt.timedelta(hours=1)


def _event(type_: str, subject: str | None, at: dt.datetime, id: str, **data) -> c.Envelope:
    body = {"specversion": "1.0", "id": id, "source": "/t", "type": f"touchline.{type_}", "time": at.isoformat(),
            "data": data}
    if subject:
        body["subject"] = subject
    return msgspec.json.decode(msgspec.json.encode(body), type=c.AnyEvent)


def _requested(fid: str, contact: str, trigger: dt.datetime) -> c.Envelope:
    return _event("followup.requested", contact, trigger, fid, followup_id=fid, rule="hot-engagement", reason="r",
                  due_at=(trigger + 24 * H).isoformat(), caused_by_source="/t", caused_by_id="x",
                  trigger_time=trigger.isoformat())


HISTORY = [
    _requested("f1", "ana", T0),
    _requested("f2", "bo", T0),
    _requested("f3", "cy", T0),
    _event("sales.followup.dismissed", "bo", T0 + H, "d1", followup_id="f2"),
    _event("sales.outreach.sent", "ana", T0 + H, "s1", channel="email"),
    _event("sales.outreach.sent", "cy", T0 - H, "s2", channel="email"),
    _event("alert.raised", None, T0, "a1", alert_id="a1", rule="metric-anomaly", reason="r", campaign_id="c1"),
]


def _statuses(summary: model.Summary, as_of: dt.datetime) -> dict[str, str]:
    return {
        fid: model.status(row, summary.last_sales.get((ws, row.contact)), as_of)
        for (ws, fid), row in summary.followups.items()
        if row.requested
    }


def test_statuses_are_the_same_for_every_order():
    expected = {"f1": "done", "f2": "dismissed", "f3": "open"}
    for order in itertools.permutations(HISTORY):
        summary = model.Summary()
        for event in order:
            model.apply(summary, "ws", event)
        assert _statuses(summary, T0 + 2 * H) == expected
        assert _statuses(summary, T0 + 25 * H)["f3"] == "overdue"
        assert list(summary.alerts) == [("ws", "a1")]


def test_signature_round_trip_and_tampering():
    body = b'{"followup": {"followup_id": "fu_1"}}'
    header = webhooks.sign("whsec_x", body, timestamp=1_800_000_000)
    assert header.startswith("t=1800000000,v1=")
    assert webhooks.verify("whsec_x", header, body, now=1_800_000_010)
    assert not webhooks.verify("whsec_y", header, body, now=1_800_000_010)
    assert not webhooks.verify("whsec_x", header, body + b" ", now=1_800_000_010)
    assert not webhooks.verify("whsec_x", header, body, now=1_800_000_000 + 3600)  # too old: replay
    assert not webhooks.verify("whsec_x", "garbage", body)


def test_backoff_steps_repeat_the_last():
    hook = webhooks.Webhook("ws", "http://x", "s", 5, (1.0, 5.0), 1.0)
    assert [hook.backoff(n) for n in (1, 2, 3, 4)] == [1.0, 5.0, 5.0, 5.0]
