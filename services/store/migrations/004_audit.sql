-- Audit: the per-contact audit trail, point-in-time snapshots, and projector rates.

-- Every accepted (first-copy) event about a contact, in today's catalog shape.
CREATE TABLE contact_events (
    workspace   text NOT NULL,
    contact     text NOT NULL,
    seq         bigint NOT NULL,
    received_at timestamptz NOT NULL,
    envelope    jsonb NOT NULL,
    PRIMARY KEY (workspace, contact, seq)
);

-- Point-in-time read models built by `touchline replay --until`: one schema each.
CREATE TABLE snapshots (
    workspace   text NOT NULL,
    name        text NOT NULL,
    schema_name text NOT NULL UNIQUE,
    until_seq   bigint,
    until_time  timestamptz,
    last_seq    bigint NOT NULL,
    events      bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace, name)
);

-- A recent rate per projector, sampled whenever a batch moves its position (at most every
-- 5 s), so /v1/status can say how fast each projector is applying the log right now.
ALTER TABLE projector_positions
    ADD COLUMN rate_applied bigint NOT NULL DEFAULT 0,
    ADD COLUMN rate_at      timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN rate_eps     double precision NOT NULL DEFAULT 0;

CREATE FUNCTION projector_rate_sample() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    elapsed double precision := extract(epoch FROM NEW.updated_at - OLD.rate_at);
BEGIN
    IF NEW.applied < OLD.rate_applied THEN
        NEW.rate_applied := NEW.applied;
        NEW.rate_at := NEW.updated_at;
    ELSIF elapsed >= 5 THEN
        NEW.rate_eps := (NEW.applied - OLD.rate_applied) / elapsed;
        NEW.rate_applied := NEW.applied;
        NEW.rate_at := NEW.updated_at;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER projector_rate_sample BEFORE UPDATE OF applied ON projector_positions
    FOR EACH ROW EXECUTE FUNCTION projector_rate_sample();
