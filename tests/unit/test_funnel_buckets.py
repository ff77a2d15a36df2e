"""The funnel's stored counters (projections/funnel.py): gap buckets and which counters a contact is in."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, strategies as st

from projections import funnel
from projections.numbers import micros

UTC = dt.timezone.utc
GAPS = st.integers(min_value=0, max_value=200 * 365 * 86_400 * 1_000_000)


@given(GAPS)
def test_a_gap_lies_within_its_bucket(gap):
    low, high = funnel.bucket_bounds(funnel.gap_bucket(gap))
    assert micros(low) <= gap < micros(high)


@given(GAPS, GAPS)
def test_buckets_increase_with_the_gap(a, b):
    if a <= b:
        assert funnel.gap_bucket(a) <= funnel.gap_bucket(b)


def test_buckets_are_exact_below_32_microseconds_then_sixteen_per_power_of_two():
    assert [funnel.gap_bucket(g) for g in (0, 1, 31)] == [0, 1, 31]
    assert len({funnel.gap_bucket(g) for g in range(2**20, 2**21)}) == 16


def test_stage_keys_count_aware_once_and_each_higher_stage_by_its_gap():
    t = dt.datetime(2026, 11, 1, 10, tzinfo=UTC)
    hour = dt.timedelta(hours=1)
    assert funnel.stage_keys({}) == []
    assert funnel.stage_keys({"aware": t}) == [(0, 0)]
    reached = {"aware": t, "interested": t + hour, "lead": t + hour}
    assert funnel.stage_keys(reached) == [(0, 0), (1, funnel.gap_bucket(3_600_000_000)), (2, 0)]


def test_middle_span_finds_the_buckets_of_the_middle_one_or_two():
    # counts 2, 1, 3 in buckets 5, 7, 9: positions 0-1 in 5, 2 in 7, 3-5 in 9
    assert funnel.middle_span([5, 7, 9], [2, 1, 3]) == (6, 7, 9, 2)  # middle two: positions 2 and 3
    assert funnel.middle_span([5, 7, 9], [2, 1, 2]) == (5, 7, 7, 2)  # middle one: position 2
    assert funnel.middle_span([5, 7, 9], [3, 1, 2]) == (6, 5, 7, 0)  # positions 2 and 3
    assert funnel.middle_span([4], [1]) == (1, 4, 4, 0)


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=60))
def test_middle_span_agrees_with_the_gaps_laid_out_one_by_one(counts):
    buckets = [3 * i + 1 for i in range(len(counts))]
    laid_out = [bucket for bucket, count in zip(buckets, counts) for _ in range(count)]
    n = len(laid_out)
    first, last = laid_out[(n - 1) // 2], laid_out[n // 2]
    assert funnel.middle_span(buckets, counts) == (n, first, last, laid_out.index(first))
