"""Every read model the projector maintains, in the order they are applied within a batch."""

from __future__ import annotations

from projections.batching import Projection


def all_projections() -> list[Projection]:
    from projections.audit import ContactEventsProjection
    from projections.contacts import ContactsProjection
    from projections.deals import DealsProjection
    from projections.followups import FollowupsProjection
    from projections.goals import GoalsProjection
    from projections.touches import TouchesProjection

    return [ContactsProjection(), ContactEventsProjection(), DealsProjection(), GoalsProjection(), TouchesProjection(),
            FollowupsProjection()]
