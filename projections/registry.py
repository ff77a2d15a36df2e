"""Every read model the projector maintains, in the order they are applied within a batch."""

from __future__ import annotations


def all_projections() -> list:
    from projections.audit import ContactEventsProjection
    from projections.contacts import ContactsProjection

    return [ContactsProjection(), ContactEventsProjection()]
