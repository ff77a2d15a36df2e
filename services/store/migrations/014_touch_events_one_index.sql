-- The projector writes every touch into touch_events, and each of its B-trees costs a random
-- insert (two: ~22 µs a row, one: ~14, in COPYs of 180,000 touches; docs/performance.md, item
-- 29). The primary key (workspace, source, id) served only the replay's swap, which joins live and
-- rebuilt rows by it; the attribution index (workspace, contact, at, source, id) names a touch as
-- surely, since a touch's contact and time are its event's. So that index becomes the primary key,
-- and the old one goes.
ALTER TABLE touch_events DROP CONSTRAINT touch_events_pkey;
ALTER TABLE touch_events ADD CONSTRAINT touch_events_pkey
    PRIMARY KEY (workspace, contact, at, source, id) INCLUDE (kind, channel, campaign_id);
DROP INDEX IF EXISTS touch_events_attribution;
