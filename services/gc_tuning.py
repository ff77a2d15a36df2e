"""Interpreter settings for the processes that stream the log (projector, replay)."""

from __future__ import annotations

import gc
import sys

# The next batch is decoded and prepared in a worker thread while the event loop drives the
# current batch's transaction. At the default 5 ms switch interval the loop waited up to 5 ms for
# the GIL after each PostgreSQL reply, a dozen replies a batch; at 1 ms the projector was ~7 %
# faster (docs/performance.md).
SWITCH_INTERVAL_SECONDS = 0.001


def tune_for_streaming() -> None:
    """A catch-up or a rebuild allocates millions of short-lived objects (messages, events, rows):
    with the default thresholds the cyclic collector ran every 700 allocations, about 7 % of the
    projector's CPU and a tenth of replay's. What start-up loaded is frozen out of its scans."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
