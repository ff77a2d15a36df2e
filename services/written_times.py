"""Times people write in a query parameter or a CLI option: RFC 3339, or a bare date.

Python's ``datetime.fromisoformat`` alone reads more of ISO 8601 than RFC 3339 is: an hour without
minutes (``2026-11-24T21Z``), the basic format (``20261124T210315Z``), a week date
(``2026-W47-1``), which it takes for some moment other than the one meant, without a word (an
outside audit of `touchline replay --until`). Each reader checks the shape first, then parses.
"""

from __future__ import annotations

import datetime as dt
import re

# RFC 3339's date-time (section 5.6: its T may be a lower-case t, or a space; its Z a lower-case z),
# the offset optional here (a reader says what none means), or a bare full-date.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}(?:[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})?)?")


def read_written_time(text: str) -> dt.datetime:
    """``text`` as RFC 3339 (the offset optional: naive without one) or a date (its midnight,
    naive); ValueError for anything else."""
    if _RFC3339.fullmatch(text) is None:
        raise ValueError(f"not RFC 3339 nor a date: {text!r}")
    return dt.datetime.fromisoformat(text.upper())
