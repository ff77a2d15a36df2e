-- contact_events only ever receives inserts (the audit trail), and is read by its primary key with
-- heap fetches: a vacuum triggered by inserts finds nothing to clean and only sets visibility bits
-- that no query uses, yet after a large load it read the whole table for 10+ seconds, competing
-- with queries on a small machine (watched with pg_stat_activity during a 1M-event bench). Without
-- it the table is vacuumed when updates or deletes call for it (a replay's swap) and, as every
-- table, before transaction-id wraparound.
ALTER TABLE contact_events SET (autovacuum_vacuum_insert_threshold = -1);
