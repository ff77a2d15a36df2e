"""The projector's first-copy check against a real log and index: the ingest side usually indexes
a batch before the projector meets it (then one range scan by sequence proves every event first),
but when a later copy was indexed and an earlier one not (an index write deferred, then a retry),
the earlier copy must win, whether the later one is in the next batch or far behind."""

from __future__ import annotations

import json

import pytest

from projections.audit import ContactEventsProjection
from projections.touches import TouchesProjection
from services.projector.runner import Projector
from tests.integration.test_poison import append_raw, project_until, projector_of_our_own
from tests.support import event


@pytest.mark.asyncio
async def test_an_earlier_unindexed_copy_wins_over_a_later_indexed_one_in_any_later_batch(stack):
    ws, _ = stack.new_workspace()
    name = "first-copies-test"
    stack.rules.stop()  # it checks first copies too, and would index the log before this test does
    try:
        first_of, seen = await _project_a_log_with_late_indexed_copies(stack, ws, name)
    finally:
        stack.restart_rules(kill=False)

    assert seen["audit"] == sorted(set(first_of.values()))
    assert seen["touches"] == ["far", "near"]
    assert seen["marketing touches"] == 29
    assert seen["index"] == first_of


async def _project_a_log_with_late_indexed_copies(stack, ws: str, name: str) -> tuple[dict, dict]:
    """(each key's first seq in the log, what the read models and the index hold afterwards)."""
    async with projector_of_our_own(stack, name) as (js, pool, _):
        near = event("marketing.engaged", "dup", channel="ig", action="like", id="near", source="/retry")
        far = event("marketing.engaged", "dup", channel="ig", action="share", id="far", source="/retry")
        # Batches of 5: `near`'s second copy opens the next batch, `far`'s comes four batches later.
        plan = ([event("marketing.engaged", f"c{n}", channel="ig", action="view") for n in range(4)] + [near, near]
                + [event("marketing.engaged", f"c{n}", channel="ig", action="view") for n in range(4, 8)]
                + [far]
                + [event("marketing.engaged", f"c{n}", channel="ig", action="view") for n in range(8, 27)]
                + [far])
        seqs = [await append_raw(stack.servers.nats_url, ws, json.dumps(body).encode()) for body in plan]
        first_of = {}
        for seq, body in zip(seqs, plan):
            first_of.setdefault((body["source"], body["id"]), seq)
        # As the ingest API would have indexed them: every event with its own seq, except the first
        # copies of `near` and `far`, whose index writes were lost; their retries were indexed.
        indexed = {}
        for seq, body in zip(seqs, plan):
            key = (body["source"], body["id"])
            if seq != first_of[key] or body["source"] != "/retry":
                indexed[key] = seq
        await pool.executemany(
            "INSERT INTO event_index (key, seq) VALUES (event_key($1, $2, $3), $4)",
            [(ws, source, event_id, seq) for (source, event_id), seq in indexed.items()],
        )

        projections = [ContactEventsProjection(), TouchesProjection()]
        await project_until(Projector(name, projections, js, pool, wait=0.1, batch_max=5), seqs[-1])

        return first_of, {
            "audit": [row["seq"] for row in await pool.fetch(
                "SELECT seq FROM contact_events WHERE workspace = $1 ORDER BY seq", ws)],
            "touches": [row["id"] for row in await pool.fetch(
                "SELECT id FROM touch_events WHERE workspace = $1 AND contact = 'dup' ORDER BY id", ws)],
            "marketing touches": await pool.fetchval("SELECT marketing FROM touch_channels WHERE workspace = $1", ws),
            "index": {
                key: await pool.fetchval("SELECT seq FROM event_index WHERE key = event_key($1, $2, $3)", ws, *key)
                for key in first_of
            },
        }
