-- Poison events: a logged event a projector could not decode or apply is parked here with
-- its error and position; the projector goes on, and `touchline parked redrive` retries it.
CREATE TABLE parked_events (
    projector   text NOT NULL,
    seq         bigint NOT NULL,
    workspace   text NOT NULL,
    error       text NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    attempts    int NOT NULL DEFAULT 1,
    redriven_at timestamptz,
    PRIMARY KEY (projector, seq)
);
CREATE INDEX parked_waiting ON parked_events (projector, seq) WHERE redriven_at IS NULL;
