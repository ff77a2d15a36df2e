"""Exact arithmetic shared by the read models: medians, ratios, hours, decimal rendering.

Money and counts are exact (``Decimal`` or ``Fraction``) until the moment they are rendered;
the rules for rendering are written down in docs/read-models.md:

* ratios (conversion, attainment, win rate, shares, credits counted in leads or deals) are
  JSON numbers: the nearest double to the exact rational value, no other rounding;
* medians are of exact values (mean of the middle two when even), hours likewise;
* decimal results that are not exact decimals of the inputs (a third of a deal, a target
  times an elapsed fraction) are rounded half-even to 6 places, or to the inputs' scale where
  that is finer; otherwise they keep the scale of their inputs (``"40.00"`` stays ``"40.00"``).
"""

from __future__ import annotations

import datetime as dt
import functools
from decimal import ROUND_HALF_EVEN, Context, Decimal, DivisionByZero, Inexact, InvalidOperation, Overflow, localcontext
from fractions import Fraction
from typing import Iterable

MAX_SCALE = 6
MICROS_PER_HOUR = 3_600_000_000

# Accepted amounts have at most 30 digits before the point and 30 after (events/validation.py). Their
# sums, and their products by attribution's integer shares, fit in this many digits, where
# Python's default context rounds at 28. EXACT raises rather than round.
PRECISION = 100
EXACT = Context(prec=PRECISION, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])


def exact_sum(amounts: Iterable[Decimal]) -> Decimal:
    return functools.reduce(EXACT.add, amounts, Decimal(0))


def median(values: Iterable[Fraction | int]) -> Fraction | None:
    ordered = sorted(values)
    if not ordered:
        return None
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return Fraction(ordered[middle])
    return (Fraction(ordered[middle - 1]) + Fraction(ordered[middle])) / 2


def median_of_histogram(histogram: dict[int, int]) -> Fraction | None:
    """The median of values given as {value: how many}."""
    total = sum(histogram.values())
    if total == 0:
        return None
    wanted = [(total - 1) // 2, total // 2]  # 0-based positions of the middle one or two
    found: list[int] = []
    seen = 0
    for value in sorted(histogram):
        count = histogram[value]
        while wanted and wanted[0] < seen + count:
            found.append(value)
            wanted.pop(0)
        seen += count
    return Fraction(found[0] + found[1], 2)


def ratio(numerator: Fraction | Decimal | int, denominator: Fraction | Decimal | int) -> float | None:
    """numerator / denominator as the nearest double; None when the denominator is 0."""
    if denominator == 0:
        return None
    return float(Fraction(numerator) / Fraction(denominator))


def micros(delta: dt.timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def hours(micro_seconds: Fraction | None) -> float | None:
    return None if micro_seconds is None else float(Fraction(micro_seconds) / MICROS_PER_HOUR)


def scale_of(value: Decimal) -> int:
    """How many decimal places a decimal is written with ("100.00" -> 2, "5" -> 0)."""
    exponent = value.as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def exact_decimal(value: Fraction | Decimal, min_scale: int = 0) -> Decimal:
    """A Fraction as a decimal: exact when it has at most max(6, ``min_scale``) places (at least
    ``min_scale`` of them), else rounded half-even to that many."""
    numerator, denominator = value.as_integer_ratio()  # in lowest terms
    places = min_scale
    # In lowest terms, n/d has k exact decimal places when d divides 10**k: no Fraction arithmetic
    # (which cost the goals view most of its time).
    while places < MAX_SCALE and 10**places % denominator:
        places += 1
    with localcontext() as context:
        context.prec = PRECISION
        quotient = Decimal(numerator) / Decimal(denominator)
        return quotient.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)


def ceil_div(numerator: Fraction, denominator: Fraction) -> int:
    return -((-numerator) // denominator)


def utc_midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
