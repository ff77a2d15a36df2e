-- The projector writes every touch into touch_events; each index costs it a random B-tree insert.
-- touch_events_by_contact (workspace, contact, at) is a prefix of touch_events_attribution
-- (migration 007: workspace, contact, at, source, id, with the same INCLUDE columns), which
-- answers every query the narrower one did.
DROP INDEX IF EXISTS touch_events_by_contact;
