"""`touchline demo`, the README's five-minute tour, against a running Touchline: it loads the sample
business over HTTP and prints its reports; run again, it stores nothing new."""

from __future__ import annotations

import re

from decimal import Decimal

from tests.support import settle
from tests.integration.test_replay import cli

REPORTS = (
    "Funnel (every contact, by first awareness)",
    "Touches by channel",
    "Goals, as of",
    "What the revenue goals still take",
    "Campaigns (position attribution",
)


def loaded(output: str) -> tuple[int, int, int]:
    """(accepted, duplicates, log seq) from the demo's summary line."""
    found = re.search(r"(\d+) events accepted, (\d+) duplicates .*?the latest of them at\s+log seq (\d+)", output, re.S)
    assert found, output
    return int(found[1]), int(found[2]), int(found[3])


def test_demo_loads_the_sample_business_once_and_prints_every_report(stack):
    first = cli(stack, "demo", "--contacts", "80", "--days", "30")
    assert first.returncode == 0, first.stderr
    accepted, duplicates, last = loaded(first.stdout)
    assert accepted > 0 and duplicates > 0  # the sample resends about one event in fifty
    for title in REPORTS:
        assert title in first.stdout, title

    # Every goal-at-risk alert the load raised is about a goal /goals shows at risk too: the goals
    # are loaded after the deals, so none is judged on an empty month ("0 of 20" while on track).
    settle(stack, "demo", stack.admin())
    goals = {g["goal_id"]: g for g in stack.get("/v1/workspaces/demo/goals", stack.admin()).json()["goals"]}
    for alert in stack.get("/v1/workspaces/demo/alerts", stack.admin(), rule="goal-at-risk").json():
        goal = goals[alert["goal_id"]]
        assert Decimal(goal["projected"]) < Decimal("0.8") * Decimal(goal["target"]), (alert["reason"], goal)

    again = cli(stack, "demo", "--contacts", "80", "--days", "30")
    assert again.returncode == 0, again.stderr
    assert loaded(again.stdout) == (0, accepted + duplicates, last)  # every event known, by its first seq
    # Each run made a token it never showed anyone: none is left behind in `token list`.
    tokens = stack.get("/v1/workspaces/demo/tokens", stack.admin())
    assert tokens.status_code == 200 and tokens.json()["tokens"] == [], tokens.text
