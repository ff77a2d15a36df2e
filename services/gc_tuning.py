"""Garbage-collector settings for the processes that stream the log (projector, replay)."""

from __future__ import annotations

import gc


def collect_less() -> None:
    """A catch-up or a rebuild allocates millions of short-lived objects (messages, events, rows):
    with the default thresholds the cyclic collector ran every 700 allocations, about 7 % of the
    projector's CPU and a tenth of replay's. What start-up loaded is frozen out of its scans."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
