-- Attribution computed on read (projections/attribution.py): for each conversion, the touches
-- in its window in the contract's order (at, source, id), from the index alone; and the
-- conversions themselves (lead conversions, deals by contact) without reading the tables.
CREATE INDEX touch_events_attribution ON touch_events (workspace, contact, at, source, id)
    INCLUDE (kind, channel, campaign_id);
CREATE INDEX contacts_lead_by_contact ON contacts (workspace, contact) INCLUDE (reached_lead)
    WHERE reached_lead IS NOT NULL;
