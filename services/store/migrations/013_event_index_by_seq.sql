-- The projector's first-copy check reads which of a batch's sequences event_index already names
-- (one range scan of this index, ~0.3 µs an event) before it looks keys up one by one (an index
-- probe of three text columns each, ~5-10 µs an event): the ingest API and the inbox reader index
-- nearly every event before the projector meets it. Sequences only grow, so ingest adds to the
-- index's right edge.
CREATE INDEX IF NOT EXISTS event_index_by_seq ON event_index (seq);
