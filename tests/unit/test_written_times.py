"""The API's time parameters: RFC 3339 (its T a t or a space, its Z a z; a "+" that an unencoded
query string turned into a space) or a date, and no other ISO 8601."""

from __future__ import annotations

import datetime as dt

import pytest

from services.api.common import ApiError, parse_time

UTC = dt.timezone.utc


@pytest.mark.parametrize(("text", "moment"), [
    ("2026-11-15 09:30:00Z", dt.datetime(2026, 11, 15, 9, 30, tzinfo=UTC)),  # refused once the shape was checked
    ("2026-11-15T09:30:00 01:00", dt.datetime(2026, 11, 15, 8, 30, tzinfo=UTC)),  # "+01:00" unencoded
    ("2026-11-15 09:30:00.5 01:00", dt.datetime(2026, 11, 15, 8, 30, 0, 500_000, tzinfo=UTC)),
    ("2026-11-15t09:30:00z", dt.datetime(2026, 11, 15, 9, 30, tzinfo=UTC)),
    ("2026-11-15T09:30:00-00:00", dt.datetime(2026, 11, 15, 9, 30, tzinfo=UTC)),
    ("2026-11-15", dt.datetime(2026, 11, 15, tzinfo=UTC)),
])
def test_rfc_3339_and_dates_are_read(text, moment):
    assert parse_time("as_of", text) == moment


@pytest.mark.parametrize("text", ["2026-11-24T21Z", "20261124T210315Z", "2026-W47-1", "2026-11-24T21:03Z",
                                  "2026-11-15T09:30:00,5Z", "2026-11-15T09:30:00+0100"])
def test_other_iso_8601_is_a_400_naming_the_parameter(text):
    with pytest.raises(ApiError) as refused:
        parse_time("as_of", text)
    assert refused.value.status_code == 400 and refused.value.detail.startswith("as_of: expected an RFC 3339 time")
