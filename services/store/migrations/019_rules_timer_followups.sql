-- Where in the log each stalled-offer timer was decided, and the follow-up it made (if any).
-- Live, that follow-up counts as open from the moment the timer is decided; the log has it only
-- from its followup.requested, which the dispatcher writes a little later. A rerun of the rules
-- (`touchline rules reset`) opens it where the live run decided it, after the event at
-- `decided_at_seq`, so a trigger logged in between is blocked on the rerun as it was live.
-- Timers decided before this migration have no position: a rerun opens theirs at the log's record.
ALTER TABLE rules_timers
    ADD COLUMN decided_at_seq bigint,
    ADD COLUMN contact        text,
    ADD COLUMN followup_id    text,
    ADD COLUMN trigger_time   timestamptz;

CREATE INDEX rules_timers_followups_by_seq ON rules_timers (decided_at_seq) WHERE followup_id IS NOT NULL;
