-- Every stalled-offer timer the rules worker has decided (services/rules/worker.py, ``_fire``),
-- whether it made a follow-up or not. `touchline rules reset` keeps it: a rerun from the start of
-- the log meets each offer again, and its timer, already due, would otherwise be decided with the
-- whole log applied, not at the point where the live run decided it (a follow-up open then and
-- dismissed since made a stalled-offer follow-up the live run had decided against). A follow-up the
-- live run made is in the log (followup.requested) and the rerun applies it; one it did not make
-- stays unmade. Timers decided before this table have no row: a rerun decides them again.
CREATE TABLE rules_timers (
    workspace   text NOT NULL,
    timer_id    text NOT NULL,
    decided_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace, timer_id)
);
