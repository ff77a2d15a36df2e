"""How verify words a difference between a live row and a rebuilt one."""

from __future__ import annotations

from services.replay import Difference, diff_values


def test_nested_json_differences_name_the_path_and_both_values():
    live = {"marketing": 3, "by_channel": {"email": 2}, "times": ["a", "b"]}
    rebuilt = {"marketing": 2, "by_channel": {"email": 2, "sms": 1}, "times": ["a", "c"]}
    assert diff_values("state", live, rebuilt) == [
        ("state.by_channel.sms", diff_values.__globals__["_ABSENT"], 1),
        ("state.marketing", 3, 2),
        ("state.times[1]", "b", "c"),
    ]


def test_floats_equal_within_rounding_are_not_differences():
    assert diff_values("share", 0.1 + 0.2, 0.3) == []
    assert diff_values("share", 0.3, 0.31) == [("share", 0.3, 0.31)]


def test_descriptions_are_plain_words():
    key = {"workspace": "acme", "contact": "dana"}
    assert Difference("contacts", key, "stage", "customer", "lead").describe() == (
        'contacts: contact dana: stage: live "customer", rebuilt "lead"'
    )
    assert Difference("contacts", key, None, {"contact": "dana"}, None).describe() == (
        "contacts: contact dana: in the live read model but not rebuilt from the log"
    )
    assert Difference("contacts", key, None, None, {"contact": "dana"}).describe() == (
        "contacts: contact dana: rebuilt from the log but missing from the live read model"
    )
    assert "state.by_channel.sms: live absent, rebuilt 1" in Difference(
        "contacts", key, "state.by_channel.sms", diff_values.__globals__["_ABSENT"], 1
    ).describe()
