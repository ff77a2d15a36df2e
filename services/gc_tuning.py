"""Interpreter settings: fewer and cheaper cyclic garbage collections (every service), and a
short GIL switch interval for the processes that stream the log (projector, replay)."""

from __future__ import annotations

import gc
import sys

# The next batch is decoded and prepared in a worker thread while the event loop drives the
# current batch's transaction. At the default 5 ms switch interval the loop waited up to 5 ms for
# the GIL after each PostgreSQL reply, a dozen replies a batch; at 1 ms the projector was ~7 %
# faster (docs/performance.md).
SWITCH_INTERVAL_SECONDS = 0.001


def collect_less() -> None:
    """A catch-up or a rebuild allocates millions of short-lived objects (messages, events, rows):
    with the default thresholds the cyclic collector ran every 700 allocations, about 7 % of the
    projector's CPU and a tenth of replay's. What start-up loaded is frozen out of its scans: a
    full collection of an API worker's start-up heap alone took 7–12 ms, a pause for every request
    in flight (the API calls this once started)."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def tune_for_streaming() -> None:
    collect_less()
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
