"""Schema evolution: the catalog's version and the upcasters that read old shapes as today's.

Events are kept for ever and the log is never rewritten, so an event is always read in the
shape of the catalog that accepted it, then *upcast* step by step into today's shape before
typed decoding (``events.log.decode_logged`` does this for every reader: the live projector,
replay and audit alike).

The version scheme
------------------
* ``CATALOG_VERSION`` is the version of ``events/catalog.py``. It changes only when an
  existing type's shape changes incompatibly (a field renamed, re-typed or re-scaled).
  Adding an optional field with a default is not a new version: old events decode as they are.
* Ingest stamps every logged event with the header ``Touchline-Catalog-Version`` (see
  ``events.log.arrival_headers``): the version that judged it. A logged event without the header
  was written before the header existed, by version 1.
* Raising the version means: bump ``CATALOG_VERSION``, register for every changed type an
  upcaster ``(type, old_version) -> function`` that turns a document of the old version into
  one of the next, add golden fixtures under ``tests/golden/v<old>/``, and keep the old ones.
  Upcasters chain: a v0 event goes 0 -> 1 -> ... -> today.

Version 0 is the pre-release catalog (kept as the worked example and test of the scheme):
``engaged`` named its channel ``medium``, and money (``offer.made``, ``deal.won``,
``deal.refunded``) travelled as integer ``amount_cents``.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any, Callable

import msgspec

CATALOG_VERSION = 1
# The version of a logged event that carries no version header.
UNSTAMPED_VERSION = 1

Document = dict[str, Any]
Upcaster = Callable[[Document], Document]



def exact_number(text: str) -> Decimal | msgspec.Raw:
    """A JSON number as the Decimal it is; one whose exponent no Decimal holds (past about ±10^18,
    as ``1e-99999999999999999999``) as the text it is, which ``encode_exact`` writes back unchanged.
    Decimal refuses such a number with an InvalidOperation that no reader expected: one event
    holding one stopped the NATS inbox of every workspace for good, and was a 500 over HTTP (an
    outside audit)."""
    try:
        return Decimal(text)
    except InvalidOperation:
        return msgspec.Raw(text.encode())


# Exact decimals both ways: JSON numbers are read as Decimal and written back unchanged, and a
# number no double can hold (1e400) is still a number, never an error. Every reader of an event's
# JSON as plain Python values uses these (an amount may be written as a JSON number).
decode_exact = msgspec.json.Decoder(float_hook=exact_number).decode
encode_exact = msgspec.json.Encoder(decimal_format="number").encode

UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register ``function`` as the step from ``from_version`` to ``from_version + 1`` of a type."""

    def register(function: Upcaster) -> Upcaster:
        key = (event_type, from_version)
        if key in UPCASTERS:
            raise ValueError(f"two upcasters for {event_type} v{from_version}")
        UPCASTERS[key] = function
        return function

    return register


def upcast(document: Document, version: int) -> Document:
    """Today's shape of a document written by catalog ``version`` (unchanged if already current)."""
    if version > CATALOG_VERSION:
        raise ValueError(f"event written by catalog v{version}, newer than this build's v{CATALOG_VERSION}")
    event_type = document.get("type")
    for step in range(version, CATALOG_VERSION):
        function = UPCASTERS.get((event_type, step))  # type: ignore[arg-type]
        if function is not None:
            document = function(document)
    return document


def needs_upcast(event_type: str | None, version: int) -> bool:
    return any((event_type, step) in UPCASTERS for step in range(version, CATALOG_VERSION))


def upcast_json(body: bytes, version: int) -> bytes:
    """The JSON of ``body`` in today's shape; the same bytes when no upcaster applies."""
    if version == CATALOG_VERSION:
        return body
    if version > CATALOG_VERSION:
        raise ValueError(f"event written by catalog v{version}, newer than this build's v{CATALOG_VERSION}")
    document = decode_exact(body)
    if not isinstance(document, dict) or not needs_upcast(document.get("type"), version):
        return body
    return encode_exact(upcast(document, version))


# --- version 0 -> 1 --------------------------------------------------------------------


def _data(document: Document) -> Document:
    data = document.get("data")
    return dict(data) if isinstance(data, dict) else {}


@upcaster("touchline.marketing.engaged", 0)
def _engaged_medium_to_channel(document: Document) -> Document:
    data = _data(document)
    if "channel" not in data and "medium" in data:
        data["channel"] = data.pop("medium")
    return {**document, "data": data}


def _cents_to_amount(document: Document) -> Document:
    data = _data(document)
    if "amount" not in data and "amount_cents" in data:
        cents = Decimal(str(data.pop("amount_cents")))
        data["amount"] = str((cents / 100).quantize(Decimal("0.01")))
    return {**document, "data": data}


for _money_type in ("touchline.sales.offer.made", "touchline.sales.deal.won", "touchline.sales.deal.refunded"):
    upcaster(_money_type, 0)(_cents_to_amount)
